"""Every fault the fake server can inject, through every HTTP teacher: transient ones are retried
until the right answer arrives; fatal ones fail at once with a clear reason."""

from __future__ import annotations

import asyncio

import pytest

from data_gen.llm import (
    AuthFailed,
    RequestFailed,
    RunStopped,
    SpendLimitReached,
    TeacherConfig,
    make_teacher,
)
from fake_provider import FAULTS, FakeTeacherServer, reply_for

KINDS = ("openai", "openai-completions", "anthropic")
# The `slow` fault answers after 0.6 s; the client gives up after 0.2 s and retries.
FAST = {"model": "m", "backoff": 0.01, "timeout": 0.2, "max_retries": 4}


async def _one(server: FakeTeacherServer, prompt: str, **cfg):
    cfg = {**FAST, "base_urls": (server.url,), **cfg}
    async with make_teacher(TeacherConfig(**cfg)) as teacher:
        return await teacher.complete(prompt), teacher.stats


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("kind", KINDS)
def test_transient_fault_is_retried_to_the_right_answer(kind, fault):
    async def run():
        async with FakeTeacherServer(schedule=[fault], slow_seconds=0.6) as server:
            c, stats = await _one(server, f"doc under {fault}", kind=kind)
            return server, c, stats

    server, c, stats = asyncio.run(run())
    assert c.text == reply_for(f"doc under {fault}") and c.finish_reason == "stop"
    assert server.injected == {fault: 1}
    assert server.requests == 2 and stats["retries"] == 1


@pytest.mark.parametrize("kind", ("openai", "anthropic"))
def test_spend_limit_stops_at_once_without_retrying(kind):
    async def run():
        async with FakeTeacherServer(schedule=["spend"]) as server:
            with pytest.raises(SpendLimitReached) as info:
                await _one(server, "x", kind=kind)
            return server, info.value

    server, err = asyncio.run(run())
    assert server.requests == 1
    assert isinstance(err, RunStopped) and "429" in str(err)


def test_spend_limit_after_some_replies():
    async def run():
        async with FakeTeacherServer(spend_limit_after=2) as server:
            cfg = TeacherConfig(**FAST, kind="openai", base_urls=(server.url,))
            async with make_teacher(cfg) as teacher:
                for i in range(2):
                    await teacher.complete(f"p{i}")
                with pytest.raises(SpendLimitReached, match="quota"):
                    await teacher.complete("p2")
            return server

    assert asyncio.run(run()).requests == 3


@pytest.mark.parametrize("kind", KINDS)
def test_context_too_long_fails_this_document_only(kind):
    async def run():
        async with FakeTeacherServer(schedule=["400"]) as server:
            cfg = TeacherConfig(**FAST, kind=kind, base_urls=(server.url,))
            async with make_teacher(cfg) as teacher:
                with pytest.raises(RequestFailed, match="HTTP 400: context too long") as info:
                    await teacher.complete("too long")
                later = await teacher.complete("fine")  # the teacher keeps working
            return server, info.value, later

    server, err, later = asyncio.run(run())
    assert not isinstance(err, RunStopped) and server.requests == 2
    assert later.text == reply_for("fine")


@pytest.mark.parametrize("kind", ("openai", "anthropic"))
def test_rejected_key_names_the_variable_not_the_key(kind, monkeypatch):
    secret = "sk-test-abcdefghijklmnop0123456789"
    monkeypatch.setenv("NIF_TEACHER_KEY", secret)

    async def run():
        async with FakeTeacherServer(schedule=["401"]) as server:
            with pytest.raises(AuthFailed) as info:
                await _one(server, "x", kind=kind, api_key_env="NIF_TEACHER_KEY")
            return server, info.value

    server, err = asyncio.run(run())
    assert server.requests == 1
    assert "HTTP 401" in str(err) and "$NIF_TEACHER_KEY" in str(err)
    assert secret not in str(err) and secret not in repr(err)


def test_retries_are_bounded_and_the_reason_kept():
    async def run():
        async with FakeTeacherServer(fail_first=10, faults=("503",)) as server:
            with pytest.raises(RequestFailed) as info:
                await _one(server, "x", kind="openai", max_retries=2)
            return server, info.value

    server, err = asyncio.run(run())
    assert server.requests == 3
    assert str(err) == "gave up after 3 attempts; last: HTTP 503: try again"


def test_random_faults_under_concurrency_every_answer_is_its_own():
    prompts = [f"document number {i} begins" for i in range(40)]

    async def run():
        server = FakeTeacherServer(fault_rate=0.3, faults=FAULTS, slow_seconds=0.6, seed=3)
        async with server:
            cfg = TeacherConfig(
                **{**FAST, "max_retries": 12}, kind="anthropic", base_urls=(server.url,)
            )
            async with make_teacher(cfg) as teacher:
                results = await asyncio.gather(*(teacher.complete(p) for p in prompts))
            return server, results

    server, results = asyncio.run(run())
    assert [c.text for c in results] == [reply_for(p) for p in prompts]
    assert sum(server.injected.values()) >= 5  # faults really happened
    assert server.requests == len(prompts) + sum(server.injected.values())


def test_anthropic_without_version_header_is_refused_by_the_fake(monkeypatch):
    """The fake checks what the real API checks, so the header test above means something."""
    import aiohttp

    async def run():
        async with FakeTeacherServer() as server, aiohttp.ClientSession() as session:
            body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
            async with session.post(server.url + "/messages", json=body) as r:
                return r.status, await r.json()

    status, body = asyncio.run(run())
    assert status == 400 and body["type"] == "error"
