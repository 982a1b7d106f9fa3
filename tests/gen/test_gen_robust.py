"""`nif gen` and its readers against races, damaged files, signals, bad records and a full disk:
one configuration per folder, damaged shards named and repaired, SIGTERM handled as Ctrl-C,
unencodable text counted, ENOSPC a one-line error, and a manifest that never claims more than the
shards hold."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

import fake_provider
from data_gen import store
from data_gen.generate import GenConfig, generate
from data_gen.shards import DirLock, read_rows
from nif_lightning.cli import main


def _gen_argv(out, *extra: str) -> list[str]:
    return ["gen", "--corpus", "builtin", "--out", str(out), "--num-docs", "12", "--quiet", *extra]


def _ids(out) -> Counter:
    return Counter(r["id"] for r in read_rows(out))


# --------------------------------------------------------------------------- one configuration


def test_a_run_that_finished_between_the_check_and_the_lock_is_not_mixed_into(
    tmp_path, monkeypatch
):
    """The race of two `nif gen` started 0.5 s apart: B checks the folder (empty), A runs to the
    end, B writes. Checking under the lock, B's check and write are one step."""
    import data_gen.generate as gen

    out = tmp_path / "o"
    real = gen.prepare_examples
    outcome = {}

    def prepare_then_let_a_run(cfg, **kw):  # B is sampling; A starts and finishes meanwhile
        if cfg.seed == 2 and not outcome:
            try:
                outcome["a"] = generate(
                    GenConfig(corpus="builtin", out=str(out), num_docs=6, seed=1)
                )
            except ValueError as err:
                outcome["a"] = err
        return real(cfg, **kw)

    monkeypatch.setattr(gen, "prepare_examples", prepare_then_let_a_run)
    try:
        b = generate(GenConfig(corpus="builtin", out=str(out), num_docs=6, seed=2), progress=False)
    except ValueError as err:
        b = err
    finished = [r for r in (outcome["a"], b) if not isinstance(r, Exception)]
    assert len(finished) == 1, (outcome["a"], b)  # one ran, the other was refused
    assert len(read_rows(out)) == 6


def test_a_second_gen_while_the_first_holds_the_lock_exits_2(tmp_path):
    # 12 documents, 2 at a time, 1 s each: the first run holds the lock ~6 s, longer than the
    # second process takes to start and import (at 0.05 s it could finish first: a flaky test).
    with fake_provider.spawn("--latency", "1.0") as url:
        out = tmp_path / "o"
        teacher = ["--teacher", "openai", "--model", "m", "--base-url", url, "--concurrency", "2"]

        def argv(seed):
            return [sys.executable, "-m", "nif_lightning.cli", *_gen_argv(out, "--seed", seed)]

        first = subprocess.Popen(argv("1") + teacher, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while not (out / "manifest.json").is_file():  # written under the lock
            assert time.monotonic() < deadline and first.poll() is None
            time.sleep(0.02)
        # The window of the race: the first run's manifest is not there yet when the second
        # one looks (deleted here to hold the window open).
        (out / "manifest.json").unlink()
        second = subprocess.run(argv("2") + teacher, capture_output=True, text=True, timeout=60)
        assert first.wait(timeout=60) == 0, first.stderr.read()
    assert second.returncode == 2, second.stderr
    assert "another process" in second.stderr and "Traceback" not in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1
    assert sum(_ids(out).values()) == 12


def test_a_missing_manifest_does_not_let_other_settings_in(tmp_path, capsys):
    out = tmp_path / "o"
    assert main(_gen_argv(out, "--seed", "1")) == 0
    (out / "manifest.json").unlink()
    assert main(_gen_argv(out, "--seed", "2")) == 2
    err = capsys.readouterr().err
    assert "part-00000.arrow" in err and "seed: 1 -> 2" in err
    assert len(_ids(out)) == 12  # nothing added
    # An edited manifest does not either: the shards carry the settings they were made with.
    assert main(_gen_argv(out, "--seed", "1")) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["config"]["seed"] = 2
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert main(_gen_argv(out, "--seed", "2")) == 2
    assert "seed: 1 -> 2" in capsys.readouterr().err
    # Without the edited manifest, the shards' own settings let the same ones in (operational
    # settings still may change).
    (out / "manifest.json").unlink()
    assert main(_gen_argv(out, "--seed", "1", "--shard-rows", "5")) == 0
    assert json.loads((out / "manifest.json").read_text())["status"] == "complete"


def test_shards_without_a_fingerprint_are_trusted_only_with_a_matching_manifest(tmp_path, capsys):
    out = tmp_path / "o"
    assert main(_gen_argv(out)) == 0
    for path in store.shard_paths(out):  # shards as written before fingerprints existed
        table = store.read_shard(path)
        store.write_table_atomic(path, table.replace_schema_metadata(None))
    assert main(_gen_argv(out)) == 0  # the manifest vouches for them
    (out / "manifest.json").unlink()
    assert main(_gen_argv(out)) == 2
    assert "no record of the settings" in capsys.readouterr().err


def test_a_manifest_that_is_not_an_object_is_named(tmp_path, capsys):
    out = tmp_path / "o"
    assert main(_gen_argv(out)) == 0
    (out / "manifest.json").write_text("[1, 2]")
    assert main(_gen_argv(out)) == 2
    err = capsys.readouterr().err
    assert "manifest.json" in err and "Traceback" not in err


# --------------------------------------------------------------------------- damaged shards


def test_a_truncated_shard_is_named_and_repaired(tmp_path, capsys):
    out, whole = tmp_path / "o", tmp_path / "whole"
    assert main(_gen_argv(whole, "--shard-rows", "4")) == 0
    assert main(_gen_argv(out, "--shard-rows", "4")) == 0
    shards = store.shard_paths(out)
    assert len(shards) == 3
    damaged = shards[1]
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])
    others = {p.name: p.read_bytes() for p in shards if p != damaged}

    assert main(_gen_argv(out, "--shard-rows", "4")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(damaged) in err[0] and "--repair" in err[0]

    assert main(_gen_argv(out, "--shard-rows", "4", "--repair")) == 0
    assert (out / "damaged" / damaged.name).is_file()
    assert _ids(out) == _ids(whole)  # the same documents, each once
    for name, data in others.items():
        assert (out / "shards" / name).read_bytes() == data  # untouched


@pytest.mark.parametrize("cut", ["empty", "half"])
def test_readers_name_a_damaged_shard(tmp_path, capsys, cut):
    out = tmp_path / "o"
    assert main(_gen_argv(out, "--shard-rows", "4")) == 0
    bad = store.shard_paths(out)[-1]
    bad.write_bytes(b"" if cut == "empty" else bad.read_bytes()[:100])
    for argv in (
        ["filter", str(out), "--out", str(tmp_path / "f")],
        ["export", "llamafactory", str(out), str(tmp_path / "lf")],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and str(bad) in err[0], err
    with pytest.raises(ValueError, match=str(bad)):  # training reads through these two
        store.check_dataset_dir(out)
    with pytest.raises(ValueError, match=str(bad)):
        store.read_dataset(out)


# --------------------------------------------------------------------------- signals


def test_sigterm_keeps_finished_rows_and_the_rerun_completes_exactly_once(tmp_path):
    with fake_provider.spawn("--latency", "0.05") as url:
        out = tmp_path / "o"
        argv = [sys.executable, "-m", "nif_lightning.cli", "gen", "--corpus", "builtin"]
        argv += ["--num-docs", "80", "--out", str(out), "--teacher", "openai", "--model", "m"]
        argv += ["--base-url", url, "--concurrency", "4", "--shard-rows", "3"]
        argv += ["--flush-seconds", "0.2", "--quiet"]
        gen = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while len(list((out / "shards").glob("part-*.arrow"))) < 3:
            assert time.monotonic() < deadline and gen.poll() is None, "no shards written"
            time.sleep(0.02)
        gen.send_signal(signal.SIGTERM)
        assert gen.wait(timeout=30) == 130, gen.stderr.read()
        assert "interrupted" in gen.stderr.read()
        partial = len(read_rows(out))
        manifest = json.loads((out / "manifest.json").read_text())
        assert 9 <= partial < 80
        assert manifest["counts"]["done"] == partial and manifest["status"] == "stopped"
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
    ids = _ids(out)
    assert len(ids) == 80 and set(ids.values()) == {1}


def test_the_sigterm_handler_is_restored(tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    assert main(_gen_argv(tmp_path / "o")) == 0
    assert signal.getsignal(signal.SIGTERM) is before


# --------------------------------------------------------------------------- bad records


def test_unencodable_text_is_skipped_and_counted(tmp_path):
    words = " ".join(f"w{i}" for i in range(30))
    corpus = tmp_path / "c"
    corpus.mkdir()
    good = [json.dumps({"text": f"{words} good{i}"}) for i in range(3)]
    lone = '{"text": "' + words + ' \\ud800 bad"}'
    (corpus / "a.jsonl").write_text("\n".join([*good, lone]) + "\n")
    (corpus / "b.json").write_text(f"[{lone}]")
    id_lone = '{"text": "' + words + ' ok", "id": "x\\udc80"}'
    (corpus / "c.jsonl").write_text(id_lone + "\n")
    cfg = GenConfig(corpus=str(corpus), out=str(tmp_path / "o"), id_field=None)
    stats = generate(cfg, progress=False)
    assert stats.done == 4 and stats.skipped == {"invalid_unicode": 2}
    good = [json.dumps({"text": f"{words} good{i}", "id": f"g{i}"}) for i in range(3)]
    (corpus / "a.jsonl").write_text("\n".join([*good, lone]) + "\n")
    cfg = GenConfig(corpus=str(corpus), out=str(tmp_path / "o2"), id_field="id")
    stats = generate(cfg, progress=False)
    assert stats.skipped["invalid_unicode"] == 3  # the bad texts and the bad id
    manifest = json.loads((tmp_path / "o2" / "manifest.json").read_text())
    assert manifest["counts"]["skipped"] == stats.skipped


# --------------------------------------------------------------------------- disk full


def _fail_writes(monkeypatch, fail):
    """ENOSPC from the store's atomic writer on the writes `fail(n)` picks (n counts from 1)."""
    real = store._write_atomic
    count = [0]

    def no_space(f):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def write(path, content):
        count[0] += 1
        return real(path, no_space if fail(count[0]) else content)

    monkeypatch.setattr(store, "_write_atomic", write)


@pytest.mark.parametrize("nth", ["one", "all-after"])
def test_disk_full_is_one_line_and_the_manifest_matches_the_shards(
    tmp_path, monkeypatch, capsys, nth
):
    out = tmp_path / "o"
    argv = _gen_argv(out, "--shard-rows", "4")
    # Writes: sample.arrow, the "running" manifest, then shards: the second shard fails.
    _fail_writes(monkeypatch, (lambda n: n == 4) if nth == "one" else (lambda n: n >= 4))
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no space left" in err[0].lower() and "re-run" in err[0], err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] != "complete"
    if nth == "one":  # the manifest could be written: it counts what is on disk
        assert manifest["counts"]["done"] == len(read_rows(out))
    monkeypatch.undo()
    assert main(argv) == 0
    ids = _ids(out)
    assert len(ids) == 12 and set(ids.values()) == {1}


# --------------------------------------------------------------------------- manifest status


def test_a_crash_never_leaves_a_complete_manifest(tmp_path, monkeypatch):
    import data_gen.generate as gen

    def broken_teacher(cfg):
        raise RuntimeError("a bug")

    monkeypatch.setattr(gen, "make_teacher", broken_teacher)
    with pytest.raises(RuntimeError):
        generate(GenConfig(corpus="builtin", out=str(tmp_path / "o"), num_docs=2), progress=False)
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["counts"]["done"] == 0
    assert manifest["status"] != "complete" and "a bug" in manifest["stopped"]


def test_an_incomplete_dataset_is_refused_by_its_readers(tmp_path):
    out = tmp_path / "o"
    assert main(_gen_argv(out)) == 0
    store.check_dataset_dir(out)  # complete: fine
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["status"] = "incomplete"
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="not complete") as err:
        store.check_dataset_dir(out, what="`--data`")
    assert str(out) in str(err.value) and "re-run" in str(err.value)
    (out / "manifest.json").unlink()  # foreign data, no manifest: used as it is
    store.check_dataset_dir(out)


def test_the_lock_is_taken_before_anything_is_read(tmp_path):
    out = tmp_path / "o"
    assert main(_gen_argv(out)) == 0
    with DirLock(out), pytest.raises(ValueError, match="another process"):
        generate(GenConfig(corpus="builtin", out=str(out), num_docs=12, seed=5), progress=False)


def test_nif_train_refuses_an_incomplete_dataset_naming_it(tmp_path, tiny, capsys):
    out = tmp_path / "o"
    assert main(_gen_argv(out)) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["status"] = "incomplete"  # a filter with verdicts missing, a gen with failures
    (out / "manifest.json").write_text(json.dumps(manifest))
    capsys.readouterr()
    argv = ["train", "--model", str(tiny), "--data", str(out), "--out", str(tmp_path / "t")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert str(out) in err and "not complete" in err and "re-run" in err
