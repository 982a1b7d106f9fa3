"""`nif gen` on local sources with the `original` teacher: sampling, cuts, shards, determinism,
bad input counted by reason, changed configuration refused, exports and shards loadable."""

from __future__ import annotations

import json
import re

import pyarrow as pa
import pytest

from data_gen.corpus import Document
from data_gen.generate import GenConfig, generate
from data_gen.sampling import BottomK, cut_document
from data_gen.shards import read_rows
from nif_lightning.cli import main


def _nif(argv: list[str]) -> int:
    """`nif ...` as the entry point runs it (errors mapped to exit codes in one place)."""
    return main(argv)


def _text(i: int, words: int = 40) -> str:
    return "  ".join(f"Doc{i}\tword{j}\n" if j % 9 == 0 else f"d{i}w{j}" for j in range(words))


def _sample(docs: list[Document], n: int, seed: int) -> list[Document]:
    sample = BottomK(n, seed)
    for doc in docs:
        sample.offer(doc)
    return sample.documents()


def test_sampling_is_uniform_without_replacement_and_reproducible():
    docs = [Document(str(i), _text(i)) for i in range(200)]
    a = _sample(docs, 50, seed=3)
    assert a == _sample(docs, 50, seed=3)
    assert a != _sample(docs, 50, seed=4)
    assert len({d.id for d in a}) == 50
    # Uniform: over many seeds every document is drawn about 50/200 of the time.
    counts = {d.id: 0 for d in docs}
    for seed in range(400):
        for d in _sample(docs, 50, seed):
            counts[d.id] += 1
    assert min(counts.values()) > 60 and max(counts.values()) < 140  # mean 100


def test_cut_keeps_whitespace_verbatim_and_falls_in_the_window():
    doc = Document("x", _text(1, words=101))
    n_words = len(doc.text.split())
    for seed in range(50):
        ex = cut_document(doc, seed, 0.25, 0.75)
        assert ex.prompt + ex.reference == doc.text  # nothing lost or altered
        k = len(ex.prompt.split())
        assert 0.25 * n_words <= k <= 0.75 * n_words
        assert not ex.prompt[-1].isspace() and ex.reference[0].isspace()
    # The cut depends on (seed, id) only, not on the other documents.
    assert cut_document(doc, 7, 0.25, 0.75) == cut_document(doc, 7, 0.25, 0.75)


def test_builtin_gen_writes_loadable_shards_and_is_deterministic(tmp_path):
    out1, out2 = tmp_path / "a", tmp_path / "b"
    assert (
        _nif(
            [
                "gen",
                "--corpus",
                "builtin",
                "--out",
                str(out1),
                "--num-docs",
                "30",
                "--shard-rows",
                "7",
                "--quiet",
            ]
        )
        == 0
    )
    assert (
        _nif(["gen", "--corpus", "builtin", "--out", str(out2), "--num-docs", "30", "--quiet"]) == 0
    )
    rows1, rows2 = read_rows(out1), read_rows(out2)
    assert len(rows1) == 30 and len({r["id"] for r in rows1}) == 30
    assert sorted(rows1, key=lambda r: r["id"]) == sorted(rows2, key=lambda r: r["id"])
    assert {r["finish_reason"] for r in rows1} == {"original"}
    assert all(r["completion"] == r["reference"] for r in rows1)
    assert len(list((out1 / "shards").glob("part-*.arrow"))) == 5  # 7+7+7+7+2
    manifest = json.loads((out1 / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["counts"]["done"] == 30

    # Readable by pyarrow's stream reader and by `datasets`' arrow loader.
    from datasets import load_dataset

    ds = load_dataset("arrow", data_files=str(out1 / "shards" / "*.arrow"), split="train")
    assert ds.num_rows == 30
    assert set(ds.column_names) >= {
        "id",
        "prompt",
        "completion",
        "reference",
        "teacher",
        "finish_reason",
        "prompt_tokens",
        "completion_tokens",
    }
    assert isinstance(pa.ipc.open_stream(str(out1 / "shards" / "part-00000.arrow")), object)

    # Re-running the finished job does nothing and duplicates nothing.
    assert (
        _nif(["gen", "--corpus", "builtin", "--out", str(out1), "--num-docs", "30", "--quiet"]) == 0
    )
    assert len(read_rows(out1)) == 30


def test_changed_configuration_is_refused_naming_what_differs(tmp_path, capsys):
    out = tmp_path / "d"
    base = ["gen", "--corpus", "builtin", "--out", str(out), "--num-docs", "10", "--quiet"]
    assert _nif(base) == 0
    assert _nif([*base, "--seed", "1"]) == 2
    err = capsys.readouterr().err
    assert "seed: 0 -> 1" in err and str(out) in err
    assert _nif([*base, "--split-max", "0.5"]) == 2
    assert "split_max: 0.75 -> 0.5" in capsys.readouterr().err
    # Operational settings may change: they do not change the data.
    assert _nif([*base, "--concurrency", "3", "--shard-rows", "2"]) == 0


def _bad_corpus(folder):
    folder.mkdir()
    good = [{"text": _text(i), "id": f"g{i}"} for i in range(6)]
    lines = [json.dumps(r).encode() for r in good]
    lines += [
        b"{not json",
        json.dumps({"body": _text(99)}).encode(),  # missing field
        json.dumps({"text": "   "}).encode(),  # empty
        json.dumps({"text": "too short"}).encode(),  # too short
        b'{"text": "caf\xe9 ' + b"x " * 20 + b'"}',  # invalid UTF-8 (latin-1 byte)
        json.dumps(good[0]).encode(),  # the same document again
    ]
    (folder / "a.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    (folder / "b.json").write_text(json.dumps([{"text": _text(50), "id": "j1"}, "not-a-record"]))
    (folder / "c.parquet").write_bytes(b"this is not parquet")  # unreadable
    (folder / "d.txt").write_text(_text(70))
    (folder / "ignored.csv").write_text("a,b\n")


def test_bad_input_is_skipped_and_counted_by_reason(tmp_path):
    _bad_corpus(tmp_path / "corpus")
    cfg = GenConfig(corpus=str(tmp_path / "corpus"), out=str(tmp_path / "out"))
    stats = generate(cfg, progress=False)
    assert stats.done == 8  # 6 good jsonl + 1 json + 1 txt
    assert stats.skipped == {
        "invalid_json": 2,  # the broken line and the non-record list item
        "missing_field": 1,
        "empty": 1,
        "too_short": 1,
        "invalid_utf8": 1,
        "duplicate": 1,
        "unreadable_file": 1,
    }
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["counts"]["skipped"] == stats.skipped


def test_nothing_usable_is_a_clear_error_before_any_request(tmp_path, capsys):
    from fake_provider import FakeTeacherServer

    (tmp_path / "empty.jsonl").write_text('{"text": ""}\n{oops\n')
    with FakeTeacherServer() as server:
        code = _nif(
            [
                "gen",
                "--corpus",
                str(tmp_path / "empty.jsonl"),
                "--out",
                str(tmp_path / "o"),
                "--teacher",
                "openai",
                "--model",
                "m",
                "--base-url",
                server.url,
                "--quiet",
            ]
        )
        assert server.requests == 0
    assert code == 2
    err = capsys.readouterr().err
    assert "no usable documents" in err and "1 empty" in err and "1 invalid_json" in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--corpus", "/nope/x.jsonl"], "`--corpus` /nope/x.jsonl does not exist"),
        (["--corpus", "builtin", "--split-min", "0.8"], "--split-min"),
        (["--corpus", "builtin", "--num-docs", "0"], "--num-docs"),
        (["--corpus", "builtin", "--teacher", "openai"], "needs `--model`"),
        (["--corpus", "builtin", "--teacher", "openai", "--model", "m"], "OPENAI_API_KEY"),
        (
            ["--corpus", "builtin", "--teacher", "openai", "--model", "m", "--base-url", "x"],
            "--base-url",
        ),
        (
            [
                "--corpus",
                "builtin",
                "--teacher",
                "anthropic",
                "--model",
                "m",
                "--api-key-env",
                "NIF_TEST_UNSET_VAR",
            ],
            "NIF_TEST_UNSET_VAR",
        ),
        (["--corpus", "builtin", "--rpm", "-1"], "--rpm"),
    ],
)
def test_bad_flags_name_the_flag(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert _nif(["gen", *argv, "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o" / "shards").exists()


def test_export_llamafactory_loads_with_datasets(tmp_path):
    data, out = tmp_path / "data", tmp_path / "lf"
    assert (
        _nif(["gen", "--corpus", "builtin", "--out", str(data), "--num-docs", "12", "--quiet"]) == 0
    )
    argv = ["export", "llamafactory", str(data), str(out), "--name", "nif_owt"]
    assert _nif([*argv, "--eos-token", "</s>"]) == 0
    info = json.loads((out / "dataset_info.json").read_text())
    assert info["nif_owt"]["file_name"] == "nif_owt.json"
    assert info["nif_owt"]["columns"] == {
        "prompt": "instruction",
        "query": "input",
        "response": "output",
    }
    assert info["nif_owt"]["nif"]["template"] == "empty"
    from datasets import load_dataset

    ds = load_dataset("json", data_files=str(out / "nif_owt.json"), split="train")
    rows = {r["id"]: r for r in read_rows(data)}
    assert ds.num_rows == 12 and set(ds.column_names) == {"instruction", "input", "output"}
    prompts = {r["prompt"]: r["completion"] for r in rows.values()}
    assert all(prompts[r["instruction"]] + "</s>" == r["output"] and r["input"] == "" for r in ds)
    assert not [p for p in out.iterdir() if re.search(r"\.tmp$", p.name)]


def test_a_resumed_run_reuses_its_sample_instead_of_reading_the_corpus(tmp_path, monkeypatch):
    import data_gen.generate as gen

    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"text": _text(i)}) + "\n" for i in range(40)))
    cfg = GenConfig(corpus=str(corpus), out=str(tmp_path / "o"), num_docs=12, seed=1)
    first = gen.prepare_examples(cfg)
    generate(cfg, progress=False)
    assert gen.load_sample(tmp_path / "o", cfg) == first  # kept with the skip counts

    def no_reading(*args, **kwargs):
        raise AssertionError("the corpus was read again")

    monkeypatch.setattr(gen, "sample_corpus", no_reading)
    (tmp_path / "o" / "shards" / "part-00000.arrow").unlink()  # as if those rows were lost
    stats = generate(cfg, progress=False)
    assert stats.sampled == 12 and stats.new == 12 and len(read_rows(tmp_path / "o")) == 12
    # Other sampling settings do not match the kept sample: it is not used.
    other = GenConfig(corpus=str(corpus), out=str(tmp_path / "o"), num_docs=12, seed=2)
    assert gen.load_sample(tmp_path / "o", other) is None


def test_hf_corpus_spec_and_load_errors(tmp_path, monkeypatch, capsys):
    import datasets

    from data_gen.corpus import parse_hf_spec

    assert parse_hf_spec("Skylion007/openwebtext") == ("Skylion007/openwebtext", "train", None)
    assert parse_hf_spec("a/b:test@refs/convert/parquet") == ("a/b", "test", "refs/convert/parquet")
    calls = []

    def fake_load(name, split, revision, streaming):
        calls.append((name, split, revision, streaming))
        if revision is None:
            raise RuntimeError("Dataset scripts are no longer supported, but found b.py")
        return iter([{"text": _text(i)} for i in range(5)])

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    argv = ["gen", "--corpus", "hf:a/b", "--out", str(tmp_path / "o"), "--quiet"]
    assert _nif(argv) == 2
    assert "hf:a/b:train@refs/convert/parquet" in capsys.readouterr().err  # the way out
    argv[2] = "hf:a/b:train@refs/convert/parquet"
    assert _nif(argv) == 0 and len(read_rows(tmp_path / "o")) == 5
    assert calls[-1] == ("a/b", "train", "refs/convert/parquet", True)

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'a/c' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    argv = ["gen", "--corpus", "hf:a/c", "--out", str(tmp_path / "p"), "--quiet"]
    assert _nif(argv) == 2
    err = capsys.readouterr().err
    assert "hf:a/c" in err and "Couldn't reach" in err and "HF_DATASETS_OFFLINE" in err


def test_dry_run_counts_what_would_be_sent_and_sends_nothing(tmp_path, capsys):
    out = tmp_path / "o"
    argv = ["gen", "--corpus", "builtin", "--out", str(out), "--num-docs", "20", "--quiet"]
    argv += ["--teacher", "openai", "--model", "m", "--base-url", "http://127.0.0.1:9/v1"]
    argv += ["--max-tokens", "100", "--dry-run", "--price-in", "10", "--price-out", "30"]
    assert _nif(argv) == 0  # nothing listens on port 9: a request would have failed
    text = capsys.readouterr().out
    assert not out.exists()  # writes nothing
    from data_gen.generate import GenConfig, prepare_examples

    examples, _ = prepare_examples(GenConfig(corpus="builtin", out=str(out), num_docs=20))
    prompt_tokens = sum(len(ex.prompt) for ex in examples) // 4
    assert f"20 to send: ~{prompt_tokens:,} prompt tokens" in text
    assert "at most 2,000 completion tokens" in text
    cost = (prompt_tokens * 10 + 2000 * 30) / 1e6
    assert f"at most ${cost:,.2f} (about half with --batch)" in text
    assert _nif([*argv[:-5], "--dry-run", "--price-in", "10"]) == 2  # both prices or none
    assert "give both `--price-in` and `--price-out`" in capsys.readouterr().err
