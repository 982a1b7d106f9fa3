"""Several base URLs: load goes to the least busy server, and a dead one does not stop the run."""

from __future__ import annotations

import asyncio
import socket

from data_gen.llm import TeacherConfig, make_teacher
from data_gen.llm.client import _Fleet
from fake_provider import FakeTeacherServer, reply_for


def _dead_url() -> str:
    """A URL on which nothing listens (a port that was free a moment ago)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def test_one_server_down_the_others_do_the_work():
    prompts = [f"fleet document {i}" for i in range(30)]
    dead = _dead_url()

    async def run():
        async with FakeTeacherServer() as a, FakeTeacherServer() as b:
            cfg = TeacherConfig(
                kind="openai-completions",
                model="m",
                base_urls=(a.url, dead, b.url),
                concurrency=6,
                backoff=0.01,
            )
            async with make_teacher(cfg) as teacher:
                results = await asyncio.gather(*(teacher.complete(p) for p in prompts))
            return a, b, teacher, results

    a, b, teacher, results = asyncio.run(run())
    assert [c.text for c in results] == [reply_for(p) for p in prompts]
    assert a.requests > 0 and b.requests > 0 and a.requests + b.requests == len(prompts)
    # The dead server was tried, then left alone: far fewer attempts than a fair third.
    assert 1 <= teacher.fleet.sent[1] < len(prompts) // 3


def test_least_in_flight_favours_the_faster_server():
    prompts = [f"p{i}" for i in range(40)]

    async def run():
        async with FakeTeacherServer(latency=0.2) as slow, FakeTeacherServer() as fast:
            cfg = TeacherConfig(kind="openai", model="m", base_urls=(slow.url, fast.url))
            async with make_teacher(TeacherConfig(**{**cfg.__dict__, "concurrency": 8})) as t:
                await asyncio.gather(*(t.complete(p) for p in prompts))
            return slow, fast

    slow, fast = asyncio.run(run())
    assert slow.requests + fast.requests == len(prompts)
    assert fast.requests >= 3 * slow.requests  # round-robin would give 20 / 20


def test_fleet_picks_in_turn_avoids_the_last_server_and_cools_down_refusals():
    now = [0.0]
    fleet = _Fleet(("http://a/v1", "http://b/v1/", "http://c/v1"), clock=lambda: now[0])
    assert fleet.urls[1] == "http://b/v1"
    assert sorted(fleet.pick() for _ in range(3)) == [0, 1, 2]  # idle fleet: in turn
    assert all(fleet.pick(avoid=1) != 1 for _ in range(10))
    fleet.refused(2)
    assert all(fleet.pick() != 2 for _ in range(10))
    now[0] = 5.0  # cool-down over: tried again
    assert 2 in {fleet.pick() for _ in range(3)}
    fleet.refused(0), fleet.refused(1), fleet.refused(2)
    assert fleet.pick() in (0, 1, 2)  # all down: still try one rather than stall
