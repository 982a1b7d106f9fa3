"""`nif gen --batch` against the local fake provider: OpenAI Batch (chat and completions) and
Anthropic Message Batches; errored and expired requests; a kill while batches are pending, then
the same command collects them without sending (or paying for) anything twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

from data_gen.generate import GenConfig, generate
from data_gen.llm import TeacherConfig
from data_gen.shards import read_rows
from fake_provider import FakeTeacherServer, reply_for


def _cfg(out, url, kind="openai", n=14, model="teacher-x", **teacher) -> GenConfig:
    teacher = {"batch": True, "batch_size": 5, "poll_seconds": 0.01, "backoff": 0.01, **teacher}
    return GenConfig(
        corpus="builtin",
        out=str(out),
        num_docs=n,
        shard_rows=4,
        teacher=TeacherConfig(kind=kind, model=model, base_urls=(url,), **teacher),
    )


def _assert_exactly_once(out, n):
    rows = read_rows(out)
    assert len(rows) == n and set(Counter(r["id"] for r in rows).values()) == {1}
    for r in rows:  # each completion answers that row's own prompt
        assert r["completion"] == reply_for(r["prompt"])


@pytest.mark.parametrize("kind", ["openai", "openai-completions", "anthropic"])
def test_batches_write_every_document_once(tmp_path, kind):
    with FakeTeacherServer(batch_polls=2) as server:
        stats = generate(_cfg(tmp_path / "o", server.url, kind), progress=False)
        assert server.requests == 0 and server.batches_created == 3  # 5 + 5 + 4, no live calls
    assert stats.complete and stats.new == 14
    _assert_exactly_once(tmp_path / "o", 14)
    ledger = json.loads((tmp_path / "o" / "batches.json").read_text())
    assert [len(b["ids"]) for b in ledger["batches"]] == [5, 5, 4]
    assert all(b["collected"] for b in ledger["batches"])
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["config"]["teacher"]["batch"] is True


def test_a_failed_upload_is_retried_with_a_fresh_form(tmp_path):
    with FakeTeacherServer(batch_upload_faults=2) as server:
        stats = generate(_cfg(tmp_path / "o", server.url), progress=False)
        assert server.batches_created == 3
    assert stats.complete
    _assert_exactly_once(tmp_path / "o", 14)


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_errored_and_expired_requests_are_retried_by_the_next_run(tmp_path, kind):
    out = tmp_path / "o"
    with FakeTeacherServer(batch_error_every=4, batch_expire_every=5) as server:
        stats = generate(_cfg(out, server.url, kind), progress=False)
    # Per batch of 5: the 4th errors, the 5th expires; the last batch (4) only errors.
    assert stats.failed == 5 and stats.new == 9
    reasons = [json.loads(x)["reason"] for x in (out / "failures.jsonl").read_text().splitlines()]
    assert sum("context too long" in r for r in reasons) == 3
    assert sum("without answering it" in r for r in reasons) == 2
    with FakeTeacherServer() as server:
        stats = generate(_cfg(out, server.url, kind), progress=False)
        assert server.batches_created == 1  # only the 5 failed documents are sent again
    assert stats.complete and stats.new == 5
    _assert_exactly_once(out, 14)


def test_killed_while_batches_pend_then_the_same_command_collects_them(tmp_path):
    out = tmp_path / "o"
    with FakeTeacherServer(batch_polls=10**9) as server:  # batches that never end, for now
        argv = [sys.executable, "-m", "nif_lightning.cli", "gen", "--corpus", "builtin"]
        argv += ["--num-docs", "14", "--out", str(out), "--teacher", "openai", "--model", "m"]
        argv += ["--base-url", server.url, "--batch", "--batch-size", "5"]
        argv += ["--poll-seconds", "0.05", "--quiet"]
        gen = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while _recorded(out) < 3:  # every batch sent and recorded: now it only polls
            assert time.monotonic() < deadline and gen.poll() is None, "no batches sent"
            time.sleep(0.02)
        os.kill(gen.pid, signal.SIGKILL)
        gen.wait()
        assert read_rows(out) == []
        # A live run would send the pending documents again: refused.
        with pytest.raises(ValueError, match="3 provider batch\\(es\\) still pending"):
            generate(_live(out, server))
        server.batch_polls = 0  # the provider finishes
        stats = generate(_cfg(out, server.url, model="m"), progress=False)
        assert server.batches_created == 3  # collected, not sent again
    assert stats.complete and stats.new == 14
    _assert_exactly_once(out, 14)
    assert set(server.successes.values()) == {1}  # each document answered (paid) once


def _recorded(out) -> int:
    try:
        return len(json.loads((out / "batches.json").read_text())["batches"])
    except FileNotFoundError:
        return 0


def _live(out, server) -> GenConfig:
    teacher = TeacherConfig(kind="openai", model="m", base_urls=(server.url,))
    return GenConfig(corpus="builtin", out=str(out), num_docs=14, teacher=teacher)


def test_batch_needs_a_teacher_with_a_batch_api():
    with pytest.raises(ValueError, match="`--batch` needs a teacher with a batch API"):
        TeacherConfig(kind="original", batch=True)
    with pytest.raises(ValueError, match="`--batch-size` must be >= 1"):
        TeacherConfig(kind="openai", model="m", batch=True, batch_size=0)


def test_no_wait_sends_then_later_runs_collect(tmp_path, capsys):
    import argparse

    from data_gen.cli import register

    parser = argparse.ArgumentParser(prog="nif")
    register(parser.add_subparsers(dest="command"))
    out = tmp_path / "o"
    with FakeTeacherServer(batch_polls=2) as server:  # each batch ends at its 3rd status check
        argv = ["gen", "--corpus", "builtin", "--num-docs", "14", "--out", str(out), "--quiet"]
        argv += ["--teacher", "anthropic", "--model", "m", "--base-url", server.url]
        argv += ["--batch", "--batch-size", "5", "--no-wait"]
        args = parser.parse_args(argv)
        assert args.func(args) == 3  # sent, not waited for: stopped early, nothing lost
        assert "3 batch(es) still running" in capsys.readouterr().err
        assert read_rows(out) == [] and server.batches_created == 3
        assert args.func(args) == 3  # checked again: still running
        assert args.func(args) == 0  # ended: collected
        assert server.batches_created == 3  # nothing sent twice
    _assert_exactly_once(out, 14)
