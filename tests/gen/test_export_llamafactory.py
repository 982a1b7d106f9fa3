"""`nif export llamafactory` trains what `nif train` trains (issue 13, item 5): each output ends
with the EOS text, so LLaMA-Factory's `empty` template (0.9.5: raw text, no EOS of its own) gives
the token sequences of our `tokenize_vanilla`, EOS included.

Two checks. Without LLaMA-Factory: the exported rows tokenized the way its `empty` template does
(instruction and output each `encode(..., add_special_tokens=False)`, nothing between, nothing
added) equal `tokenize_vanilla` on every row. With LLaMA-Factory installed, its own loader and
preprocessing (`get_train_args`, `load_tokenizer`, `get_template_and_fix_tokenizer`,
`get_dataset`, stage `sft`) are compared token by token, input ids and labels. That test is
skipped unless `llamafactory` imports; to run it:

    pip install llamafactory==0.9.5   # a separate venv is safest: it pins transformers <= 5.6
    DISABLE_VERSION_CHECK=1 python -m pytest tests/gen/test_export_llamafactory.py -q

(with our newer transformers/peft installed, `DISABLE_VERSION_CHECK=1` skips LLaMA-Factory's own
version gate; its data path works with them). Rows longer than `cutoff_len` are cut by
LLaMA-Factory 0.9.5's rule (`infer_seqlen`), not the paper's 0.5.2 rule that we keep, so without
`--cutoff-len` only the rows within the cutoff must be identical; with `--cutoff-len N` (the
export cuts them our way) every row exactly cut must be. The test prints the counts.
"""

from __future__ import annotations

import json

import pytest

from data_gen.export import export_llamafactory
from data_gen.generate import GenConfig, generate
from data_gen.shards import read_rows
from nif_lightning.cli import main as nif
from nif_lightning.packing import tokenize_vanilla

ROWS = 64


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("gen") / "data"
    generate(GenConfig(corpus="builtin", out=str(out), num_docs=ROWS), progress=False)
    return out


@pytest.fixture(scope="module")
def tok(tiny):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny))


def _ours(tok, prompt: str, completion: str, cutoff: int):
    ids = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    return tokenize_vanilla(ids(prompt), ids(completion), tok.eos_token_id, cutoff)


def test_exported_rows_tokenized_as_the_empty_template_equal_ours(data, tiny, tok, tmp_path):
    out = tmp_path / "lf"
    assert nif(["export", "llamafactory", str(data), str(out), "--tokenizer", str(tiny)]) == 0
    records = json.loads((out / "nif.json").read_text())
    rows = read_rows(data)
    assert len(records) == len(rows) == ROWS
    for record, row in zip(records, rows, strict=True):
        # LLaMA-Factory's alpaca converter: the user turn is the instruction (input is empty);
        # the `empty` template: user "{{content}}", assistant "{{content}}", no prefix, no EOS.
        assert record["input"] == ""
        source = tok.encode(record["instruction"], add_special_tokens=False)
        target = tok.encode(record["output"], add_special_tokens=False)
        ours = _ours(tok, row["prompt"], row["completion"], cutoff=10**6)
        assert source + target == ours.input_ids.tolist()
        assert len(source) == ours.prompt_len  # the loss mask too
        assert target[-1] == tok.eos_token_id
    entry = json.loads((out / "dataset_info.json").read_text())["nif"]
    assert entry["nif"]["template"] == "empty" and entry["nif"]["eos_in_output"] == tok.eos_token
    assert entry["nif"]["tokenizer"] == str(tiny.resolve())


@pytest.mark.parametrize("cutoff", [64, 128, 300])
def test_a_cut_export_tokenizes_as_our_cut_examples(data, tiny, tok, tmp_path, cutoff):
    out = tmp_path / "lf"
    got = export_llamafactory(data, out, tokenizer=str(tiny), cutoff_len=cutoff)
    records = json.loads((out / "nif.json").read_text())
    made = json.loads((out / "dataset_info.json").read_text())["nif"]["nif"]
    assert made["rows_cut"] > 0 and made["cut_to"] == cutoff
    assert (got.rows_cut, got.rows_cut_inexactly) == (made["rows_cut"], made["rows_cut_inexactly"])
    exact = 0
    for record, row in zip(records, read_rows(data), strict=True):
        source = tok.encode(record["instruction"], add_special_tokens=False)
        target = tok.encode(record["output"], add_special_tokens=False)
        ours = _ours(tok, row["prompt"], row["completion"], cutoff)
        if source + target == ours.input_ids.tolist() and len(source) == ours.prompt_len:
            exact += 1
            assert len(source) + len(target) <= cutoff  # LLaMA-Factory cuts nothing more
    print(f"cutoff {cutoff}: {exact}/{ROWS} identical, {made['rows_cut_inexactly']} left whole")
    assert exact == ROWS - made["rows_cut_inexactly"] and exact >= ROWS - 4


def test_nif_export_prints_the_cut_counts_it_recorded(data, tiny, tmp_path, capsys):
    out = tmp_path / "lf"
    argv = ["export", "llamafactory", str(data), str(out), "--tokenizer", str(tiny)]
    assert nif([*argv, "--cutoff-len", "64"]) == 0
    made = json.loads((out / "dataset_info.json").read_text())["nif"]["nif"]
    assert made["rows_cut"] > 0
    printed = capsys.readouterr().out.splitlines()[-1]
    assert printed.startswith(f"nif export: {made['rows_cut']} row(s) cut to 64 tokens "), printed
    assert f"; {made['rows_cut_inexactly']} could not be cut exactly" in printed


def test_without_the_eos_the_empty_template_would_not_match(data, tok, tmp_path):
    # The check above can fail: a raw export (what 0.9.5's `empty` saw before) lacks the EOS.
    export_llamafactory(data, tmp_path / "raw", eos_token="")
    record = json.loads((tmp_path / "raw" / "nif.json").read_text())[0]
    row = read_rows(data)[0]
    assert record["output"] == row["completion"]
    ids = tok.encode(record["instruction"], add_special_tokens=False)
    ids += tok.encode(record["output"], add_special_tokens=False)
    assert (
        ids + [tok.eos_token_id]
        == _ours(tok, row["prompt"], row["completion"], 10**6).input_ids.tolist()
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "--tokenizer"),
        (["--eos-token", "</s>", "--cutoff-len", "64"], "`--cutoff-len` needs `--tokenizer`"),
        (["--tokenizer", "/nonexistent/tok"], "`--tokenizer` /nonexistent/tok: cannot load it"),
        (["--tokenizer", "t", "--eos-token", "</s>"], "not allowed with argument"),
    ],
)
def test_the_export_refuses_to_guess_the_eos(data, tmp_path, capsys, extra, message):
    out = tmp_path / "lf"
    try:
        code = nif(["export", "llamafactory", str(data), str(out), *extra])
    except SystemExit as exit:  # argparse's own refusals
        code = exit.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "Traceback" not in err[0], err
    assert not (out / "nif.json").exists()


def test_an_explicit_eos_text_is_appended_and_recorded(data, tmp_path):
    made = export_llamafactory(data, tmp_path / "lf", name="owt", eos_token="</s>")
    assert (made.rows_cut, made.rows_cut_inexactly) == (0, 0)
    records = json.loads(made.data_file.read_text())
    assert [r["output"] for r in records] == [r["completion"] + "</s>" for r in read_rows(data)]
    info = json.loads((tmp_path / "lf" / "dataset_info.json").read_text())
    assert info["owt"]["formatting"] == "alpaca" and info["owt"]["nif"]["eos_in_output"] == "</s>"


@pytest.mark.parametrize("content", ["[1, 2]", "{not json"])
def test_a_broken_dataset_info_is_refused_naming_it_before_anything_is_written(
    data, tmp_path, capsys, content
):
    out = tmp_path / "lf"
    out.mkdir()
    (out / "dataset_info.json").write_text(content)
    assert nif(["export", "llamafactory", str(data), str(out), "--eos-token", "</s>"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(out / "dataset_info.json") in err[0], err
    assert sorted(p.name for p in out.iterdir()) == ["dataset_info.json"]  # nothing written


def _llamafactory_samples(dataset_dir, tiny, cutoff: int, tmp_path):
    """LLaMA-Factory's own SFT preprocessing of the exported dataset (what `llamafactory-cli
    train` runs before training)."""
    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_tokenizer

    args = {
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "lora",
        "model_name_or_path": str(tiny),
        "dataset": "nif",
        "dataset_dir": str(dataset_dir),
        "template": "empty",
        "cutoff_len": cutoff,
        "overwrite_cache": True,
        "output_dir": str(tmp_path / f"lf-out-{cutoff}"),
        "report_to": "none",
    }
    model_args, data_args, training_args, _, _ = get_train_args(args)
    tokenizer_module = load_tokenizer(model_args)
    template = get_template_and_fix_tokenizer(tokenizer_module["tokenizer"], data_args)
    module = get_dataset(template, model_args, data_args, training_args, "sft", **tokenizer_module)
    return list(module["train_dataset"])


@pytest.mark.parametrize("cut_here", [False, True], ids=["lf-cuts", "export-cuts"])
@pytest.mark.parametrize("cutoff", [1024, 128])
def test_llamafactorys_own_preprocessing_equals_ours(data, tiny, tok, tmp_path, cutoff, cut_here):
    pytest.importorskip("llamafactory")
    out = tmp_path / "lf"
    made = export_llamafactory(
        data, out, tokenizer=str(tiny), cutoff_len=cutoff if cut_here else None
    )
    inexact = made.rows_cut_inexactly
    samples = _llamafactory_samples(out, tiny, cutoff, tmp_path)
    rows = read_rows(data)
    assert len(samples) == len(rows) == ROWS
    identical, within = 0, 0
    for sample, row in zip(samples, rows, strict=True):
        ours = _ours(tok, row["prompt"], row["completion"], cutoff)
        same = (
            sample["input_ids"] == ours.input_ids.tolist()
            and sample["labels"] == ours.labels.tolist()
        )
        identical += same
        full = _ours(tok, row["prompt"], row["completion"], 10**6)
        if len(full) <= cutoff:  # not truncated: must be identical, EOS included
            within += 1
            assert same, row["id"]
    print(
        f"cutoff {cutoff}, {'export' if cut_here else 'LLaMA-Factory'} cuts: {identical}/{ROWS} "
        f"rows identical; all {within} within the cutoff; {inexact} left whole by the export"
    )
    if cut_here:  # every row the export could cut exactly is ours, token for token
        assert identical >= ROWS - inexact
    if cutoff == 1024:  # most builtin rows fit: the check is not vacuous
        assert within >= ROWS // 2
