"""Each HTTP teacher against the fake server: the right endpoint, headers and payload go out, and
the answer comes back as a Completion that belongs to its own prompt."""

from __future__ import annotations

import asyncio

import pytest

import fake_provider
from data_gen.llm import (
    PAPER_SYSTEM_PROMPT,
    Completion,
    RequestFailed,
    TeacherConfig,
    make_teacher,
)
from fake_provider import FakeTeacherServer, reply_for

ROUTE = {"openai": "chat", "openai-completions": "completions", "anthropic": "anthropic"}
PROMPTS = [f"Document {i}: the river ran past the mill and" for i in range(12)]


async def _complete_all(server: FakeTeacherServer, prompts: list[str], **cfg) -> list:
    cfg.setdefault("model", "m")
    cfg.setdefault("base_urls", (server.url,))
    async with make_teacher(TeacherConfig(**cfg)) as teacher:
        return await asyncio.gather(*(teacher.complete(p) for p in prompts))


@pytest.mark.parametrize("kind", list(ROUTE))
def test_each_kind_speaks_its_wire_format(kind):
    async def run():
        async with FakeTeacherServer() as server:
            results = await _complete_all(server, PROMPTS, kind=kind, concurrency=4)
            return server, results

    server, results = asyncio.run(run())
    for prompt, c in zip(PROMPTS, results, strict=True):
        assert isinstance(c, Completion)
        assert c.text == reply_for(prompt)  # row i's answer is document i's
        assert c.finish_reason == "stop"
        assert c.prompt_tokens == len(prompt.split())
        assert c.completion_tokens == len(c.text.split())
    assert server.by_route == {ROUTE[kind]: len(PROMPTS)}
    assert server.requests == len(PROMPTS)  # nothing retried


def test_payloads_follow_the_paper():
    """Chat: the first half is the only message, no instruction; Anthropic: the paper's system
    prompt and the version header; completions: the raw text."""

    async def run(kind, **cfg):
        async with FakeTeacherServer() as server:
            await _complete_all(server, ["Once upon"], kind=kind, max_tokens=77, **cfg)
            return server.bodies[-1], server.headers_seen[-1]

    body, _ = asyncio.run(run("openai"))
    assert body["messages"] == [{"role": "user", "content": "Once upon"}]
    assert body["max_tokens"] == 77 and body["temperature"] == 0.0 and body["model"] == "m"
    body, headers = asyncio.run(run("anthropic"))
    assert body["system"] == PAPER_SYSTEM_PROMPT
    assert body["messages"] == [{"role": "user", "content": "Once upon"}]
    assert headers["anthropic-version"] == "2023-06-01"
    body, _ = asyncio.run(run("anthropic", system_prompt=""))
    assert "system" not in body  # "" switches the default off
    body, _ = asyncio.run(run("openai-completions"))
    assert body["prompt"] == "Once upon" and "messages" not in body
    body, _ = asyncio.run(run("openai", system_prompt="Continue."))
    assert body["messages"][0] == {"role": "system", "content": "Continue."}


@pytest.mark.parametrize("kind", list(ROUTE))
def test_length_finish_is_a_valid_answer_never_retried(kind):
    async def run():
        async with FakeTeacherServer(schedule=["length"]) as server:
            (c,) = await _complete_all(server, ["cut short"], kind=kind)
            return server, c

    server, c = asyncio.run(run())
    assert c.finish_reason == "length" and c.text == reply_for("cut short")
    assert server.requests == 1


def test_original_teacher_returns_the_reference():
    async def run():
        async with make_teacher(TeacherConfig()) as teacher:
            assert teacher.name == "original"
            ok = await teacher.complete("first half", reference="second half")
            with pytest.raises(RequestFailed, match="reference"):
                await teacher.complete("first half")
            return ok

    assert asyncio.run(run()) == Completion("second half", "original", 0, 0)


def test_teacher_name_and_use_outside_context():
    teacher = make_teacher(TeacherConfig(kind="openai", model="gpt-x", base_urls=("http://h/v1",)))
    assert teacher.name == "openai:gpt-x"
    with pytest.raises(RuntimeError, match="async with"):
        asyncio.run(teacher.complete("x"))


def test_fake_provider_script_prints_its_url_and_serves(tmp_path):
    # The script by its path, run from an unrelated folder.
    with fake_provider.spawn("--length-every", "1", cwd=tmp_path) as url:
        assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
        cfg = TeacherConfig(kind="openai", model="m", base_urls=(url,))

        async def run():
            async with make_teacher(cfg) as teacher:
                return await teacher.complete("hello there")

        c = asyncio.run(run())
        assert c.text == reply_for("hello there") and c.finish_reason == "length"


def test_fake_provider_rejects_unknown_fault_kinds():
    with pytest.raises(ValueError, match="unknown fault"):
        FakeTeacherServer(schedule=["teapot"])
    with pytest.raises(ValueError, match="fault-rate"):
        FakeTeacherServer(fault_rate=2.0)
