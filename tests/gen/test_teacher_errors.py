"""A teacher failure says why (issue 13, item 2), against the local fake teacher: the server's own
error text in the messages (bounded, never the key); a chat endpoint failing the first documents
with 5xx suggests `--teacher openai-completions`, once; nothing listening at `--base-url` stops the
run within seconds naming the URL, while a server that answered and then refuses is waited for
(a restart); a slow one-at-a-time server makes the client halve its requests in flight (AIMD),
and the documents that still time out end in advice naming the flags. Small timeouts: fast."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections import deque

import pytest

from data_gen.cli import report_gen
from data_gen.generate import GenConfig, generate
from data_gen.llm import RequestFailed, TeacherConfig, make_teacher
from data_gen.llm.client import _Fleet, _Gate
from data_gen.llm.errors import ServerUnreachable
from data_gen.llm.retry import ERROR_TEXT_CHARS, error_message
from data_gen.shards import read_rows
from fake_provider import FakeTeacherServer, reply_for

KEY = "sk-test-abcdefghijklmnop0123456789"


def _cfg(out, url, kind="openai", n=8, **teacher) -> GenConfig:
    teacher = {"max_retries": 1, "backoff": 0.01, "timeout": 2.0, "concurrency": 4, **teacher}
    return GenConfig(
        corpus="builtin",
        out=str(out),
        num_docs=n,
        shard_rows=4,
        teacher=TeacherConfig(kind=kind, model="base-7b", base_urls=(url,), **teacher),
    )


def _dead_url() -> str:
    """A URL on which nothing listens (a port that was free a moment ago)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


# ---- the server's own words ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "shown"),
    [
        ('{"error": {"message": "model not found", "type": "x"}}', "model not found"),
        ('{"object": "error", "message": "max_tokens too large", "code": 400}', "max_tokens too"),
        ('{"detail": "Not Found"}', "Not Found"),
        ('{"detail": [{"loc": ["body", "model"], "msg": "field required"}]}', "field required"),
        ('{"error": "chat template missing"}', "chat template missing"),
        ("Internal Server Error", "Internal Server Error"),
        (
            "<html><head><style>p{}</style></head><body><h1>502 Bad Gateway</h1></body></html>",
            "502 Bad Gateway",
        ),
        ("", "(empty body)"),
    ],
)
def test_the_servers_error_text_is_read_from_the_shapes_servers_send(body, shown):
    text = error_message(body)
    assert shown in text and "\n" not in text and "<" not in text


def test_the_error_text_is_bounded_and_never_holds_the_key():
    body = json.dumps({"error": {"message": f"bad key {KEY} " + "x" * 10_000}})
    text = error_message(body, secret=KEY)
    assert len(text) <= ERROR_TEXT_CHARS and text.endswith("...")
    assert KEY not in text and "sk-test" not in text and "bad key" in text
    # A key-like token the server echoes back is masked even when it is not ours.
    assert "sk-other1234" not in error_message("Incorrect API key provided: sk-other1234567")


def test_a_5xx_answer_carries_the_servers_text_and_status():
    async def run():
        async with FakeTeacherServer(chat_error=(500, "Internal Server Error")) as server:
            cfg = TeacherConfig(
                kind="openai", model="m", base_urls=(server.url,), max_retries=1, backoff=0.01
            )
            async with make_teacher(cfg) as teacher:
                with pytest.raises(RequestFailed) as caught:
                    await teacher.complete("hello")
        return caught.value

    err = asyncio.run(run())
    assert "HTTP 500: Internal Server Error" in str(err) and err.status == 500


# ---- a chat endpoint that cannot chat -----------------------------------------------------------


def test_a_chat_endpoint_failing_with_5xx_suggests_the_completions_teacher_once(tmp_path, capsys):
    out = tmp_path / "o"
    with FakeTeacherServer(chat_error=(500, "Internal Server Error")) as server:
        stats = generate(_cfg(out, server.url, n=8), progress=False)
        assert server.by_route["chat"] == 16  # 8 documents, 2 attempts each
    assert report_gen(_cfg(out, "http://x/v1"), stats) == 1
    err = capsys.readouterr().err
    assert err.count("--teacher openai-completions") == 1, err
    assert "base-7b is a base model" in err
    assert "last: gave up after 2 attempts; last: HTTP 500: Internal Server Error" in err
    reasons = [json.loads(line)["reason"] for line in (out / "failures.jsonl").open()]
    assert len(reasons) == 8 and all("HTTP 500: Internal Server Error" in r for r in reasons)
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["advice"]) == 1
    # The advice works: the same server's completions route serves the base model.
    with FakeTeacherServer(chat_error=(500, "Internal Server Error")) as server:
        cfg = _cfg(tmp_path / "c", server.url, kind="openai-completions")
        stats = generate(cfg, progress=False)
    assert stats.complete and not stats.advice
    assert all(r["completion"] == reply_for(r["prompt"]) for r in read_rows(tmp_path / "c"))


def test_no_completions_hint_for_a_teacher_that_answered_or_for_a_4xx(tmp_path):
    # 5xx after answers: an outage, not a missing chat template.
    with FakeTeacherServer(schedule=[None] * 4 + ["500"] * 40) as server:
        stats = generate(_cfg(tmp_path / "a", server.url, concurrency=1), progress=False)
    assert stats.failed and stats.new == 4 and not stats.advice
    with FakeTeacherServer(fail_first=1, faults=("400",)) as server:  # the same document fails
        stats = generate(_cfg(tmp_path / "b", server.url), progress=False)
    assert stats.failed == 8 and "HTTP 400: context too long" in stats.last_failure
    assert not stats.advice


# ---- nothing listening --------------------------------------------------------------------------


def test_nothing_listening_stops_the_run_within_seconds_naming_the_url(tmp_path, capsys):
    url = _dead_url()
    # The default retries and backoff (6 retries from 1 s, doubling) would take a minute or more.
    cfg = _cfg(tmp_path / "o", url, n=20, max_retries=6, backoff=1.0, concurrency=16)
    t0 = time.monotonic()
    stats = generate(cfg, progress=False)
    assert time.monotonic() - t0 < 20  # a loaded machine's margin; retrying takes >= 63 s
    assert stats.stopped.startswith("ServerUnreachable: cannot connect to " + url)
    assert "nothing listening" in stats.stopped and "--base-url" in stats.stopped
    assert report_gen(cfg, stats) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and url in err[0]
    # Nothing was lost or half-written: the next run, with a server, does every document.
    with FakeTeacherServer() as server:
        assert generate(_cfg(tmp_path / "o", server.url, n=20), progress=False).complete


def test_a_fleet_stops_only_when_every_server_refused_and_none_answered():
    fleet = _Fleet(("http://a/v1", "http://b/v1"))
    fleet.refused(0)
    assert not fleet.unreachable()  # b may still answer
    fleet.refused(1)
    assert fleet.unreachable()
    fleet.answered(1)
    fleet.refused(1)
    assert not fleet.unreachable()  # b answered once: a refusal now is a restart


def test_a_server_that_answered_and_then_refuses_is_waited_for_as_a_restart():
    async def run():
        first = FakeTeacherServer()
        await first.start()
        port = first.port
        cfg = TeacherConfig(
            kind="openai", model="m", base_urls=(first.url,), backoff=0.2, max_retries=8
        )
        second = FakeTeacherServer(port=port)
        async with make_teacher(cfg) as teacher:
            assert (await teacher.complete("before")).text == reply_for("before")
            await first.stop()

            async def restart():
                await asyncio.sleep(0.5)
                await second.start()

            task = asyncio.create_task(restart())
            done = await teacher.complete("after")
            await task
        await second.stop()
        return done, teacher

    done, teacher = asyncio.run(run())
    assert done.text == reply_for("after")
    assert teacher.stats["retries"] >= 1  # it did see refused connections, and waited


def test_a_teacher_with_nothing_listening_raises_server_unreachable_at_once():
    url = _dead_url()

    async def run():
        cfg = TeacherConfig(kind="openai-completions", model="m", base_urls=(url,), backoff=30)
        async with make_teacher(cfg) as teacher:
            await teacher.complete("x")

    t0 = time.monotonic()
    with pytest.raises(ServerUnreachable, match="nothing listening"):
        asyncio.run(run())
    assert time.monotonic() - t0 < 15  # one retry would wait 30 s first


# ---- a slow server ------------------------------------------------------------------------------


def test_the_gate_halves_once_per_window_and_grows_back_by_one():
    gate = _Gate(16)
    assert gate.timed_out(0) == 16 and gate.limit == 8
    assert gate.timed_out(0) is None and gate.limit == 8  # let in before the cut: no second cut
    assert gate.timed_out(1) == 8 and gate.limit == 4 and gate.lowest == 4
    for _ in range(3):
        gate.answered()
    assert gate.limit == 4
    gate.answered()  # a window of 4 answers in a row: one more
    assert gate.limit == 5
    for _ in range(200):
        gate.answered()
    assert gate.limit == 16 and gate.lowest == 4  # never above --concurrency
    one = _Gate(1)
    assert one.timed_out(0) is None and one.limit == 1


def test_the_gate_never_lets_more_in_than_its_limit_and_survives_cancelled_waiters():
    async def run():
        gate, peak, order = _Gate(4), [0], []

        async def request(i: int, hold: float):
            async with gate.slot():
                peak[0] = max(peak[0], gate.in_flight)
                if i >= 4:  # let in after the cut to 2
                    assert gate.in_flight <= 2
                order.append(i)
                await asyncio.sleep(hold)

        first = [asyncio.create_task(request(i, 0.05)) for i in range(4)]
        await asyncio.sleep(0)
        assert gate.in_flight == 4
        gate.timed_out(gate.window)  # 4 -> 2 while 4 are in flight: none let in until 2 free
        waiting = [asyncio.create_task(request(i, 0.01)) for i in range(4, 10)]
        await asyncio.sleep(0)
        waiting[0].cancel()  # a cancelled waiter gives up its place, not a slot
        await asyncio.gather(*first, *waiting[1:])
        peak_after_cut = peak[0]
        return gate, order, peak_after_cut

    gate, order, peak = asyncio.run(run())
    assert peak == 4 and gate.in_flight == 0 and gate._waiters == deque()
    assert order == [0, 1, 2, 3, 5, 6, 7, 8, 9]  # first come, first served; 4 was cancelled


def test_a_slow_one_at_a_time_server_lowers_the_concurrency_and_finishes(tmp_path, caplog):
    out = tmp_path / "o"
    # 50 ms a request, one at a time: within the 0.35 s timeout about 7 fit, not 16.
    with FakeTeacherServer(single_stream=True, latency=0.05) as server:
        cfg = _cfg(out, server.url, n=24, concurrency=16, timeout=0.35, max_retries=12)
        with caplog.at_level(logging.WARNING, logger="data_gen.llm.client"):
            stats = generate(cfg, progress=False)
    assert stats.complete, stats
    logged = [r.getMessage() for r in caplog.records]
    cuts = [m for m in logged if "requests in flight 16 -> 8" in m]
    assert len(cuts) == 1 and "--concurrency" in cuts[0] and "--timeout 0.35s" in cuts[0]
    assert len(read_rows(out)) == 24


def test_documents_that_time_out_end_in_advice_naming_the_flags(tmp_path, capsys):
    out = tmp_path / "o"
    with FakeTeacherServer(single_stream=True, latency=0.1) as server:
        cfg = _cfg(out, server.url, n=8, concurrency=8, timeout=0.25, max_retries=0)
        stats = generate(cfg, progress=False)
    assert 0 < stats.timed_out == stats.failed < 8
    assert report_gen(cfg, stats) == 1
    err = capsys.readouterr().err
    assert "TimeoutError: no complete answer within --timeout 0.25s" in err
    assert err.count("hint:") == 1 and "lower --concurrency" in err and "higher --timeout" in err
    assert "came down to" in err
    # Finished work is kept: the next run sends only the failed documents.
    with FakeTeacherServer() as server:
        again = generate(_cfg(out, server.url, n=8, concurrency=8), progress=False)
        assert server.requests == stats.failed and again.complete
