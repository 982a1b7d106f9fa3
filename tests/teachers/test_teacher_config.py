"""TeacherConfig checks name the flag; the key never leaves the environment variable."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from data_gen.llm import AuthFailed, RequestFailed, TeacherConfig, make_teacher
from fake_provider import FakeTeacherServer

URL = ("http://127.0.0.1:9/v1",)


@pytest.mark.parametrize(
    ("kwargs", "flag"),
    [
        ({"kind": "gpt"}, "--teacher"),
        ({"kind": "openai"}, "--model"),
        ({"kind": "hf", "model": "m", "base_urls": URL}, "--base-url"),
        ({"kind": "openai", "model": "m", "base_urls": ("ftp://x",)}, "--base-url"),
        ({"kind": "openai", "model": "m", "base_urls": URL * 2}, "--base-url"),
        ({"kind": "openai-completions", "model": "m", "system_prompt": "Hi"}, "--system-prompt"),
        ({"temperature": -1}, "--temperature"),
        ({"max_tokens": 0}, "--max-tokens"),
        ({"concurrency": 0}, "--concurrency"),
        ({"rpm": 0}, "--rpm"),
        ({"tpm": -5}, "--tpm"),
        ({"max_retries": -1}, "--max-retries"),
        ({"timeout": 0}, "--timeout"),
        ({"backoff": -1}, "--backoff"),
    ],
)
def test_bad_settings_name_the_flag(kwargs, flag):
    with pytest.raises(ValueError, match=flag):
        TeacherConfig(**kwargs)


def test_building_is_pure_and_the_environment_is_checked_in_check_inputs(monkeypatch):
    monkeypatch.delenv("NIF_SURELY_UNSET_VAR", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    unset = TeacherConfig(kind="openai", model="m", api_key_env="NIF_SURELY_UNSET_VAR")
    assert "--api-key-env NIF_SURELY_UNSET_VAR" in unset.check_inputs()[0]
    no_key = TeacherConfig(kind="openai", model="m")  # the public API needs $OPENAI_API_KEY
    assert "$OPENAI_API_KEY" in no_key.check_inputs()[0]
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    assert no_key.check_inputs() == []
    assert TeacherConfig(kind="openai", model="m", base_urls=URL).check_inputs() == []


def test_batch_refuses_several_base_urls():
    two = ("http://127.0.0.1:9/v1", "http://127.0.0.1:10/v1")
    with pytest.raises(ValueError, match="--base-url"):
        TeacherConfig(kind="openai", model="m", base_urls=two, batch=True)


@pytest.mark.parametrize(
    ("kind", "var"), [("openai", "OPENAI_API_KEY"), ("anthropic", "ANTHROPIC_API_KEY")]
)
def test_public_api_without_a_key_fails_at_start(kind, var, monkeypatch):
    monkeypatch.delenv(var, raising=False)
    with pytest.raises(ValueError, match=rf"\${var}"):
        make_teacher(TeacherConfig(kind=kind, model="m"))


def test_local_server_needs_no_key(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert make_teacher(TeacherConfig(kind="openai", model="m", base_urls=URL)).name == "openai:m"


def test_key_never_in_reprs_logs_errors_or_public_dict(monkeypatch, caplog):
    secret = "sk-live-SECRETVALUE0123456789"
    monkeypatch.setenv("NIF_TEACHER_KEY", secret)
    caplog.set_level(logging.DEBUG)
    cfg_kw = {"kind": "openai", "model": "m", "api_key_env": "NIF_TEACHER_KEY", "backoff": 0.01}

    async def run():
        async with FakeTeacherServer(
            schedule=["500", "drop", "malformed", None, "400", "401"]
        ) as s:
            cfg = TeacherConfig(**cfg_kw, base_urls=(s.url,))
            errors = []
            async with make_teacher(cfg) as teacher:
                texts = [repr(teacher), repr(cfg), json.dumps(cfg.public_dict())]
                await teacher.complete("a")  # three retries logged, then an answer
                for exc in (RequestFailed, AuthFailed):
                    with pytest.raises(exc) as info:
                        await teacher.complete("b")
                    errors.append(info.value)
            return s, texts, errors

    server, texts, errors = asyncio.run(run())
    assert server.auth_seen == {f"Bearer {secret}"}  # the key was really used
    assert "retry 1/6" in caplog.text  # the retries were really logged
    everything = "\n".join([*texts, *(str(e) for e in errors), *(repr(e) for e in errors)])
    for text in (caplog.text, everything):
        assert secret not in text
    assert "NIF_TEACHER_KEY" in str(errors[1])
    assert TeacherConfig(**cfg_kw).public_dict()["api_key_env"] == "NIF_TEACHER_KEY"
