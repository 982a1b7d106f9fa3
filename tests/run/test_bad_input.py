"""No traceback reaches a user for bad input: every subcommand, over a table of bad inputs, exits 2
with at most three lines on stderr that name the input, and no "Traceback"."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest

from nif_lightning.cli import main


def _setup(tmp: Path) -> dict[str, str]:
    """Files the cases point at: a plain file, an empty shard, a truncated shard, bad YAML, a
    manifest that is a list, a run config with wrong types."""
    (tmp / "afile").write_text("x")
    empty = tmp / "empty-data" / "shards"
    empty.mkdir(parents=True)
    (empty / "part-00000.arrow").write_bytes(b"")
    cut = tmp / "cut-data" / "shards"
    cut.mkdir(parents=True)
    (cut / "part-00000.arrow").write_bytes(b"ARROW1\x00\x00\xff\xff\xff\xff\x10\x00")
    damaged = tmp / "damaged-out" / "shards"
    damaged.mkdir(parents=True)
    (damaged / "part-00000.arrow").write_bytes(b"")
    _incomplete_dataset(tmp / "incomplete-data")
    (tmp / "list-out").mkdir()
    (tmp / "list-out" / "manifest.json").write_text("[]")
    (tmp / "broken-out").mkdir()
    (tmp / "broken-out" / "manifest.json").write_text("{not json")
    (tmp / "bad.yaml").write_text("trainer:\n  max_steps: abc\noptim:\n  lr: fast\n")
    (tmp / "syntax.yaml").write_text("model: [unclosed\n")
    (tmp / "list.yaml").write_text("- a\n- b\n")
    (tmp / "run.yaml").write_text(
        f"out: {tmp / 'run'}\ngen: {{corpus: builtin, num_docs: many}}\n"
        "model: {path: x, tiny: true}\n"
    )
    (tmp / "run-damaged.yaml").write_text(
        f"out: {tmp / 'rd'}\ngen: {{corpus: builtin, num_docs: 3}}\n"
        f"model: {{path: {tmp / 'rd' / 'base'}, tiny: true}}\n"
    )
    (tmp / "rd" / "data" / "shards").mkdir(parents=True)
    (tmp / "rd" / "data" / "shards" / "part-00000.arrow").write_bytes(b"")
    return {"t": str(tmp)}


def _incomplete_dataset(folder: Path) -> None:
    """A readable shard whose manifest says the run that wrote it did not finish."""
    import pyarrow as pa

    (folder / "shards").mkdir(parents=True)
    table = pa.table({"id": ["a"], "prompt": ["p"], "completion": ["c"], "reference": ["r"]})
    with pa.ipc.new_stream(str(folder / "shards" / "part-00000.arrow"), table.schema) as w:
        w.write_table(table)
    (folder / "manifest.json").write_text('{"status": "stopped", "counts": {}}')


CASES = [
    # (id, argv with {t} = the tmp folder, text stderr must contain)
    ("gen-out-is-a-file", "gen --corpus builtin --out {t}/afile", "afile"),
    ("gen-num-docs-abc", "gen --corpus builtin --out {t}/o --num-docs abc", "--num-docs"),
    ("gen-timeout-inf", "gen --corpus builtin --out {t}/o --timeout inf", "--timeout"),
    ("gen-timeout-nan", "gen --corpus builtin --out {t}/o --timeout nan", "--timeout"),
    ("gen-bad-choice", "gen --corpus builtin --out {t}/o --teacher nobody", "--teacher"),
    ("gen-unknown-flag", "gen --corpus builtin --out {t}/o --num-dcos 3", "--num-dcos"),
    ("gen-missing-corpus", "gen --corpus {t}/nope.jsonl --out {t}/o", "nope.jsonl"),
    ("gen-split", "gen --corpus builtin --out {t}/o --split-min 0.9 --split-max 0.1", "--split"),
    ("gen-manifest-list", "gen --corpus builtin --out {t}/list-out --num-docs 2", "manifest"),
    ("gen-manifest-broken", "gen --corpus builtin --out {t}/broken-out --num-docs 2", "manifest"),
    ("gen-no-model", "gen --corpus builtin --out {t}/o --teacher openai", "--model"),
    ("gen-damaged-shard", "gen --corpus builtin --out {t}/damaged-out --num-docs 2", "--repair"),
    ("filter-no-shards", "filter {t} --out {t}/f", "shards"),
    ("filter-empty-shard", "filter {t}/empty-data --out {t}/f", "part-00000.arrow"),
    ("filter-cut-shard", "filter {t}/cut-data --out {t}/f", "part-00000.arrow"),
    ("filter-out-is-src", "filter {t}/empty-data --out {t}/empty-data", "--out"),
    ("export-no-shards", "export llamafactory {t} {t}/e", "shards"),
    ("export-empty-shard", "export llamafactory {t}/empty-data {t}/e", "part-00000.arrow"),
    ("train-yaml-types", "train --config {t}/bad.yaml", "max_steps"),
    ("train-yaml-syntax", "train --config {t}/syntax.yaml", "syntax.yaml"),
    ("train-yaml-list", "train --config {t}/list.yaml", "list.yaml"),
    ("train-config-missing", "train --config {t}/nope.yaml", "nope.yaml"),
    ("train-devices-abc", "train --devices abc", "devices"),
    ("train-max-steps-abc", "train --max-steps abc", "max_steps"),
    ("train-no-model", "train --data {t}/empty-data", "model"),
    ("train-model-missing", "train --model {t}/nope --data {t}/empty-data", "nope"),
    ("train-empty-shard", "train --model {t}/nope --data {t}/empty-data", "part-00000.arrow"),
    ("train-incomplete-data", "train --model {t}/nope --data {t}/incomplete-data", "complete"),
    ("train-lr-string", "train --optim.lr fast --model x --data {t}", "optim.lr"),
    ("run-types", "run {t}/run.yaml", "gen.num_docs"),
    ("run-missing", "run {t}/nope.yaml", "nope.yaml"),
    ("run-damaged-shard", "run {t}/run-damaged.yaml", "part-00000.arrow"),
    ("filter-incomplete", "filter {t}/incomplete-data --out {t}/f", "complete"),
    ("run-list", "run {t}/list.yaml", "list.yaml"),
    ("plan-missing", "plan --config {t}/nope.yaml", "nope.yaml"),
    ("plan-gpu", "plan --config {t}/bad.yaml --gpu tpu-v9", "tpu-v9"),
    ("eval-model-missing", "eval {t}/nope --suite ifeval", "nope"),
    ("eval-suite", "eval {t} --suite everything", "--suite"),
    ("eval-limit", "eval {t} --limit 0", "--limit"),
    ("eval-judge-hf", "eval {t} --suite judge --judge-teacher hf --judge-model m", "hf"),
    ("merge-missing", "merge --base {t}/nope --adapter {t}/nope2 --out {t}/m", "nope"),
    ("tiny-out-is-a-file", "tiny-model --out {t}/afile", "afile"),
    ("no-command", "bogus", "bogus"),
]


@pytest.mark.parametrize("case, argv, named", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_message(tmp_path, case, argv, named, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    subs = _setup(tmp_path)
    args = argv.format(**subs).split()
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(args)
        except SystemExit as exit_:  # argparse
            code = exit_.code
    text = err.getvalue()
    lines = [line for line in text.splitlines() if line.strip()]
    assert code == 2, (code, text)
    assert "Traceback" not in text
    assert 1 <= len(lines) <= 3, text
    assert named in text, text


def test_train_refuses_a_folder_with_checkpoints_and_too_many_devices(
    tmp_path, tiny, write_builtin_shard, capsys
):
    """Two refusals that need a real model and data to get that far: an OUT holding an earlier
    run's checkpoints (without `--resume`), and more devices than the machine has."""
    data = write_builtin_shard(tmp_path / "data", 8, 80, 40)
    out = tmp_path / "out"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "last.ckpt").write_bytes(b"x")
    base = ["train", "--model", str(tiny), "--data", str(data), "--max-steps", "1"]
    for argv, named in (
        ([*base, "--out", str(out)], "--resume"),
        ([*base, "--out", str(tmp_path / "new"), "--devices", "4096"], "trainer.devices"),
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert named in err and "Traceback" not in err and len(err.strip().splitlines()) <= 3
