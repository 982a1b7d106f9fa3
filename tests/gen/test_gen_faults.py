"""`nif gen` against the local fake teacher with faults: exactly once under every fault kind and
wire format, spend-limit stop and resume, failures retried by the next run, SIGKILL and resume,
and the API key never leaving its environment variable."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

import fake_provider
from data_gen.generate import GenConfig, generate
from data_gen.llm import TeacherConfig
from data_gen.shards import read_rows
from fake_provider import FAULTS, FakeTeacherServer, reply_for


def _cfg(out, url, kind="openai", n=14, **teacher) -> GenConfig:
    teacher = {"max_retries": 8, "backoff": 0.01, "timeout": 0.5, "concurrency": 6, **teacher}
    return GenConfig(
        corpus="builtin",
        out=str(out),
        num_docs=n,
        shard_rows=4,
        teacher=TeacherConfig(kind=kind, model="teacher-x", base_urls=(url,), **teacher),
    )


def _assert_exactly_once(out, n):
    rows = read_rows(out)
    ids = Counter(r["id"] for r in rows)
    assert len(rows) == n and set(ids.values()) == {1}, ids.most_common(3)
    for r in rows:  # each completion is the teacher's answer to that row's own prompt
        assert r["completion"] == reply_for(r["prompt"])
    return rows


@pytest.mark.parametrize("kind", ["openai", "openai-completions", "anthropic"])
def test_exactly_once_under_every_fault(tmp_path, kind):
    server = FakeTeacherServer(fail_first=2, faults=FAULTS, slow_seconds=1.5, length_every=3)
    with server:
        stats = generate(_cfg(tmp_path / "o", server.url, kind), progress=False)
    assert stats.complete and stats.failed == 0
    assert set(server.injected) == set(FAULTS)  # every kind was actually exercised
    rows = _assert_exactly_once(tmp_path / "o", 14)
    reasons = Counter(r["finish_reason"] for r in rows)
    assert reasons["length"] >= 1 and reasons["stop"] >= 1  # `length` kept, with its reason
    assert all(r["teacher"] == f"{kind}:teacher-x" for r in rows)
    assert all(r["prompt_tokens"] > 0 and r["completion_tokens"] > 0 for r in rows)
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["counts"]["finish_reasons"] == dict(reasons)
    assert manifest["counts"]["prompt_tokens"] == sum(r["prompt_tokens"] for r in rows)


def test_fleet_spreads_requests_over_servers(tmp_path):
    with FakeTeacherServer() as a, FakeTeacherServer() as b:
        cfg = _cfg(tmp_path / "o", a.url)
        cfg.teacher = TeacherConfig(kind="openai", model="m", base_urls=(a.url, b.url))
        assert generate(cfg, progress=False).complete
    assert a.requests >= 5 and b.requests >= 5 and a.requests + b.requests == 14


def test_spend_limit_stops_cleanly_and_the_rerun_finishes(tmp_path):
    out = tmp_path / "o"
    with FakeTeacherServer(spend_limit_after=5) as server:
        stats = generate(_cfg(out, server.url, concurrency=1), progress=False)
    assert stats.stopped and "SpendLimitReached" in stats.stopped
    assert stats.done == 5 and len(read_rows(out)) == 5  # finished work kept
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "stopped" and "quota" in manifest["stopped"]
    with FakeTeacherServer() as server:
        stats = generate(_cfg(out, server.url), progress=False)
        assert server.requests == 9  # only the missing documents were asked for
    assert stats.complete
    _assert_exactly_once(out, 14)


def test_failed_documents_are_recorded_and_retried_by_the_next_run(tmp_path):
    out = tmp_path / "o"
    with FakeTeacherServer(fail_first=50, faults=("500",)) as server:
        stats = generate(_cfg(out, server.url, max_retries=1), progress=False)
    assert stats.failed == 14 and stats.done == 0
    failures = [json.loads(x) for x in (out / "failures.jsonl").read_text().splitlines()]
    assert len(failures) == 14 and "HTTP 500" in failures[0]["reason"]
    assert "gave up after 2 attempts" in failures[0]["reason"]
    with FakeTeacherServer() as server:
        assert generate(_cfg(out, server.url), progress=False).complete
    _assert_exactly_once(out, 14)
    assert (out / "failures.jsonl").read_text() == ""  # this run's failures: none


def test_bad_request_fails_that_document_without_retrying(tmp_path):
    out = tmp_path / "o"
    # A 400 (e.g. context too long) cannot succeed on retry: one request per document.
    with FakeTeacherServer(fail_first=1, faults=("400",)) as server:
        stats = generate(_cfg(out, server.url, n=4), progress=False)
        assert server.requests == 4
    assert stats.failed == 4 and stats.done == 0
    reasons = [json.loads(x)["reason"] for x in (out / "failures.jsonl").read_text().splitlines()]
    assert reasons == ["HTTP 400: context too long"] * 4


def test_rejected_key_stops_the_run(tmp_path):
    with FakeTeacherServer(fail_first=100, faults=("401",)) as server:
        stats = generate(_cfg(tmp_path / "o", server.url), progress=False)
        assert server.requests <= 6  # stopped at once, not 14 documents x retries
    assert stats.stopped and "AuthFailed" in stats.stopped and stats.failed == 0


def test_api_key_is_sent_but_never_written_or_printed(tmp_path, monkeypatch, capfd):
    secret = "sk-test-SECRET-0123456789"
    monkeypatch.setenv("NIF_TEST_KEY", secret)
    out = tmp_path / "o"
    with FakeTeacherServer(fail_first=1, faults=("500",)) as server:
        stats = generate(_cfg(out, server.url, api_key_env="NIF_TEST_KEY", n=3))
    assert stats.complete and server.auth_seen == {f"Bearer {secret}"}
    with FakeTeacherServer(fail_first=1, faults=("401",)) as server:
        stopped = generate(_cfg(tmp_path / "o2", server.url, api_key_env="NIF_TEST_KEY", n=3))
    assert stopped.stopped
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
    printed = capfd.readouterr()
    assert secret not in printed.out and secret not in printed.err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["teacher"]["api_key_env"] == "NIF_TEST_KEY"


def test_sigkill_mid_run_then_resume_loses_and_duplicates_nothing(tmp_path):
    with fake_provider.spawn("--latency", "0.05") as url:
        out = tmp_path / "o"
        argv = [
            sys.executable,
            "-m",
            "nif_lightning.cli",
            "gen",
            "--corpus",
            "builtin",
            "--num-docs",
            "80",
            "--out",
            str(out),
            "--teacher",
            "openai",
            "--model",
            "m",
            "--base-url",
            url,
            "--concurrency",
            "4",
            "--shard-rows",
            "3",
            "--flush-seconds",
            "0.2",
            "--quiet",
        ]
        gen = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while len(list((out / "shards").glob("part-*.arrow"))) < 3:
            assert time.monotonic() < deadline and gen.poll() is None, "no shards written"
            time.sleep(0.02)
        os.kill(gen.pid, signal.SIGKILL)
        gen.wait()
        partial = len(read_rows(out))
        assert 0 < partial < 80
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert f"({80 - partial} new this run)" in done.stdout
    _assert_exactly_once(out, 80)
    assert not list((out / "shards").glob(".*.tmp"))


def test_a_teacher_that_fails_everything_stops_the_run_early(tmp_path):
    from data_gen.generate import FAIL_FAST

    out = tmp_path / "o"
    # A wrong model name: every request is refused and retrying cannot help.
    with FakeTeacherServer(fail_first=1, faults=("400",)) as server:
        stats = generate(_cfg(out, server.url, n=200, concurrency=2), progress=False)
        assert server.requests < FAIL_FAST + 2  # not 200 documents, one failure at a time
    assert stats.stopped and f"failed the first {FAIL_FAST} documents" in stats.stopped
    assert "HTTP 400" in stats.stopped  # the cause, for the user to fix
    assert stats.failed == len((out / "failures.jsonl").read_text().splitlines()) < 200
    with FakeTeacherServer() as server:  # fixed: the next run does everything
        assert generate(_cfg(out, server.url, n=200), progress=False).complete
    _assert_exactly_once(out, 200)


def test_prices_turn_the_reported_tokens_into_a_cost(tmp_path, capsys):
    import argparse

    from data_gen.cli import register

    parser = argparse.ArgumentParser(prog="nif")
    register(parser.add_subparsers(dest="command"))
    out = tmp_path / "o"
    with FakeTeacherServer() as server:
        argv = ["gen", "--corpus", "builtin", "--num-docs", "6", "--out", str(out), "--quiet"]
        argv += ["--teacher", "openai", "--model", "m", "--base-url", server.url]
        # Absurd prices, so the few tokens of the fake teacher make a figure worth comparing.
        argv += ["--price-in", "100000", "--price-out", "300000"]
        args = parser.parse_args(argv)
        assert args.func(args) == 0
    counts = json.loads((out / "manifest.json").read_text())["counts"]
    cost = (counts["prompt_tokens"] * 1e5 + counts["completion_tokens"] * 3e5) / 1e6
    assert cost > 1.0
    assert f"about ${cost:,.2f} at the given prices" in capsys.readouterr().out
