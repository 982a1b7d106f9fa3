"""Hostile teacher servers (issue 11): a redirect never carries a request (or the key) to another
origin, live or batch, for every wire format; bodies are read up to a cap derived from
`max_tokens` and an endless one fails at the cap; a completion far past `max_tokens` is a
failure, not an answer; `timeout` bounds the body too; a key inside a base URL never shows."""

from __future__ import annotations

import asyncio
import re
import resource
import time

import pytest

from data_gen.llm import RequestFailed, TeacherConfig, make_teacher
from data_gen.llm.batch import BatchLedger, run_batches
from data_gen.llm.errors import ServerUnreachable
from data_gen.llm.limits import body_cap, completion_char_cap, results_cap
from data_gen.llm.retry import redact, redact_url
from fake_provider import FakeTeacherServer, reply_for

KINDS = ("openai", "openai-completions", "anthropic")
FAST = {"model": "m", "backoff": 0.01, "timeout": 5.0, "max_retries": 2}
SECRET = "sk-hostile-SECRET-0123456789"


def _origin(server: FakeTeacherServer) -> str:
    return f"http://{server.host}:{server.port}"


async def _complete(server: FakeTeacherServer, prompt: str = "Once upon", **cfg):
    cfg = {**FAST, "base_urls": (server.url,), **cfg}
    async with make_teacher(TeacherConfig(**cfg)) as teacher:
        return await teacher.complete(prompt)


# ---- redirects ---------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [302, 307])
@pytest.mark.parametrize("kind", KINDS)
def test_a_live_redirect_is_refused_and_nothing_reaches_the_other_origin(kind, status, monkeypatch):
    monkeypatch.setenv("NIF_HOSTILE_KEY", SECRET)

    async def run():
        async with FakeTeacherServer() as elsewhere:
            hostile = FakeTeacherServer(redirect_to=_origin(elsewhere), redirect_status=status)
            async with hostile:
                with pytest.raises(RequestFailed) as info:
                    await _complete(hostile, kind=kind, api_key_env="NIF_HOSTILE_KEY")
                return elsewhere, hostile, str(info.value)

    elsewhere, hostile, message = asyncio.run(run())
    assert elsewhere.log == [] and elsewhere.auth_seen == set()
    assert len(hostile.log) == 1  # refused at once, not retried
    assert f"127.0.0.1:{elsewhere.port}" in message and str(status) in message
    assert "redirect" in message and SECRET not in message


_BATCH_STAGES = {
    "openai": [r"^/v1/files$", r"^/v1/batches$", r"^/v1/batches/[^/]+$", r"/content$"],
    "anthropic": [r"^/v1/messages/batches$", r"^/v1/messages/batches/[^/]+$", r"/results$"],
}


def _batch_cases():
    for kind in KINDS:
        for stage in _BATCH_STAGES["anthropic" if kind == "anthropic" else "openai"]:
            yield kind, stage


async def _batch(server: FakeTeacherServer, tmp_path, items, **cfg):
    cfg = {"kind": "openai", **FAST, "base_urls": (server.url,), "batch": True, **cfg}
    cfg.setdefault("poll_seconds", 0.01)
    answers, errors = {}, {}
    async with make_teacher(TeacherConfig(**cfg)) as client:
        await run_batches(
            client,
            BatchLedger.load(tmp_path),
            items,
            on_answer=answers.__setitem__,
            on_error=errors.__setitem__,
        )
    return answers, errors


@pytest.mark.parametrize(("kind", "stage"), list(_batch_cases()))
def test_a_batch_redirect_is_refused_at_every_stage(kind, stage, tmp_path, monkeypatch):
    monkeypatch.setenv("NIF_HOSTILE_KEY", SECRET)

    async def run():
        async with FakeTeacherServer() as elsewhere:
            hostile = FakeTeacherServer(redirect_to=_origin(elsewhere), hostile_paths=stage)
            async with hostile:
                with pytest.raises(RequestFailed) as info:
                    await _batch(
                        hostile, tmp_path, {"d1": "a", "d2": "b"}, kind=kind,
                        api_key_env="NIF_HOSTILE_KEY",
                    )  # fmt: skip
                return elsewhere, hostile, str(info.value)

    elsewhere, hostile, message = asyncio.run(run())
    assert elsewhere.log == [] and elsewhere.auth_seen == set()
    assert hostile.injected["redirect"] == 1  # refused at once, not retried
    assert f"127.0.0.1:{elsewhere.port}" in message and "redirect" in message
    assert SECRET not in message


def test_an_anthropic_results_url_on_another_origin_is_refused(tmp_path):
    async def run():
        elsewhere = FakeTeacherServer()
        async with elsewhere, FakeTeacherServer(results_base=elsewhere.url) as server:
            with pytest.raises(RequestFailed) as info:
                await _batch(server, tmp_path, {"d1": "a"}, kind="anthropic")
            return elsewhere, str(info.value)

    elsewhere, message = asyncio.run(run())
    assert elsewhere.log == []
    assert f"127.0.0.1:{elsewhere.port}" in message and "another origin" in message


# ---- bounded bodies ----------------------------------------------------------------------------


def test_caps_are_derived_from_max_tokens():
    assert body_cap(16) == body_cap(1024) == 4 * 2**20  # the floor: a few MB
    assert body_cap(65_536) == 256 * 65_536
    assert completion_char_cap(16) == 1024 and completion_char_cap(1024) == 16 * 1024
    assert results_cap(16, batch_size=5) == 4 * 2**20
    assert results_cap(1024, batch_size=10_000) == 10_000 * 256 * 1024


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


@pytest.mark.parametrize("kind", KINDS)
def test_an_endless_body_fails_at_the_cap_with_flat_memory(kind):
    async def run():
        async with FakeTeacherServer(endless_body=True) as server:
            before, t0 = _maxrss_mb(), time.monotonic()
            with pytest.raises(RequestFailed) as info:
                await _complete(server, kind=kind, max_tokens=16, timeout=3.0)
            return server, str(info.value), _maxrss_mb() - before, time.monotonic() - t0

    server, message, grown_mb, took = asyncio.run(run())
    assert "larger than" in message and "4 MiB" in message and "max_tokens 16" in message
    assert server.injected["endless_body"] == 1  # not retried: it would do the same again
    assert grown_mb < 200 and took < 3.0


@pytest.mark.parametrize("kind", KINDS)
def test_a_5_mb_completion_with_max_tokens_16_is_a_failure(kind):
    async def run():
        async with FakeTeacherServer(huge_completion=5_000_000) as server:
            with pytest.raises(RequestFailed, match="larger than"):
                await _complete(server, kind=kind, max_tokens=16)
            return server

    assert asyncio.run(run()).requests == 1


@pytest.mark.parametrize("kind", KINDS)
def test_a_completion_far_past_max_tokens_is_a_failure(kind):
    async def run():
        async with FakeTeacherServer(huge_completion=50_000) as server:  # < the body cap
            with pytest.raises(RequestFailed, match="ignored max_tokens") as info:
                await _complete(server, kind=kind, max_tokens=16)
            fine = await _complete(server, kind=kind, max_tokens=4096)  # 50k <= 16 * 4096
            return server, str(info.value), fine

    server, message, fine = asyncio.run(run())
    assert "50000 characters" in message and "16 tokens" in message
    assert server.requests == 2 and len(fine.text) == 50_000


def test_a_batch_answer_far_past_max_tokens_is_that_documents_failure(tmp_path):
    async def run():
        async with FakeTeacherServer(huge_completion=50_000) as server:
            return await _batch(server, tmp_path, {"d1": "a", "d2": "b"}, max_tokens=16)

    answers, errors = asyncio.run(run())
    assert answers == {} and set(errors) == {"d1", "d2"}
    assert all("ignored max_tokens" in reason for reason in errors.values())


def test_an_endless_batch_results_file_fails_at_its_cap(tmp_path):
    async def run():
        async with FakeTeacherServer(endless_body=True, hostile_paths=r"/content$") as server:
            with pytest.raises(RequestFailed) as info:
                await _batch(server, tmp_path, {"d1": "a"}, max_tokens=16, batch_size=5)
            return str(info.value)

    message = asyncio.run(run())
    assert "larger than" in message and "batch results" in message and "batch_size 5" in message


@pytest.mark.parametrize("kind", KINDS)
def test_the_timeout_bounds_a_body_that_trickles(kind):
    async def run():
        async with FakeTeacherServer(slow_body=0.05) as server:
            t0 = time.monotonic()
            with pytest.raises(RequestFailed, match="TimeoutError"):
                await _complete(server, kind=kind, timeout=0.5, max_retries=0)
            return time.monotonic() - t0

    assert asyncio.run(run()) < 2.0


# ---- credentials inside a base URL ------------------------------------------------------------


def test_urls_are_redacted_in_any_text():
    assert (
        redact_url("http://user:pw@host:8000/v1?key=abc&v=2")
        == "http://***@host:8000/v1?key=***&v=***"
    )
    assert redact_url("https://api.example.com/v1") == "https://api.example.com/v1"
    text = "POST http://u:SECRETPW@h:1/v1/files?key=SECRETQ: failed; see https://ok/v1"
    masked = redact(text, None)
    assert "SECRETPW" not in masked and "SECRETQ" not in masked
    assert "http://***@h:1/v1/files?key=***" in masked and "https://ok/v1" in masked


def test_a_config_never_shows_credentials_in_its_url():
    url = "http://user:SECRETPW@127.0.0.1:9/v1?key=SECRETQ"
    cfg = TeacherConfig(kind="openai", model="m", base_urls=(url,))
    for text in (repr(cfg), str(cfg.public_dict()), repr(make_teacher(cfg))):
        assert "SECRETPW" not in text and "SECRETQ" not in text
    assert cfg.public_dict()["base_urls"] == ["http://***@127.0.0.1:9/v1?key=***"]
    with pytest.raises(ValueError) as info:
        TeacherConfig(kind="openai", model="m", base_urls=("ftp://u:SECRETPW@h/v1",))
    assert "SECRETPW" not in str(info.value)


def test_a_query_key_in_the_base_url_goes_with_every_request():
    async def run():
        async with FakeTeacherServer() as server:
            url = server.url + "?key=SECRETQ"
            done = await _complete(server, base_urls=(url,), kind="anthropic")
            return server, done

    server, done = asyncio.run(run())
    assert done.text == reply_for("Once upon")
    assert server.log == [("POST", "/v1/messages?key=SECRETQ")]  # below the root, query kept


def test_an_unreachable_server_with_credentials_is_named_without_them():
    async def run():
        url = "http://user:SECRETPW@127.0.0.1:9/v1?key=SECRETQ"
        with pytest.raises(ServerUnreachable) as info:  # nothing listening: the run stops
            async with make_teacher(
                TeacherConfig(kind="openai", model="m", base_urls=(url,), max_retries=0)
            ) as teacher:
                await teacher.complete("x")
        return str(info.value)

    message = asyncio.run(run())
    assert "SECRETPW" not in message and "SECRETQ" not in message
    assert re.search(r"127\.0\.0\.1:9", message)


def test_a_key_and_a_password_in_the_url_are_refused_before_sending(monkeypatch):
    monkeypatch.setenv("NIF_HOSTILE_KEY", SECRET)
    url = "http://user:SECRETPW@127.0.0.1:9/v1"
    cfg = TeacherConfig(kind="openai", model="m", base_urls=(url,), api_key_env="NIF_HOSTILE_KEY")
    [problem] = cfg.check_inputs()
    assert "Authorization" in problem and "SECRETPW" not in problem and SECRET not in problem
    anthropic = {"kind": "anthropic", "model": "m", "base_urls": (url,)}  # x-api-key: no clash
    assert TeacherConfig(**anthropic, api_key_env="NIF_HOSTILE_KEY").check_inputs() == []
