"""Batch mode reaches the HTTP clients through the typed `BatchClient` interface, and refuses
several `--base-url`s (a provider batch lives at one API root) instead of using the first."""

from __future__ import annotations

import asyncio

import pytest

from data_gen.llm import TeacherConfig, make_teacher
from data_gen.llm.batch import BatchClient, BatchLedger, batch_api, run_batches
from data_gen.llm.client import _Fleet
from data_gen.llm.config import check_batch_urls

FLEET = ("http://127.0.0.1:9/v1", "http://127.0.0.1:10/v1")


@pytest.mark.parametrize("kind", ["openai", "openai-completions", "anthropic"])
def test_http_clients_are_batch_clients_with_the_live_wire_format(kind):
    client = make_teacher(TeacherConfig(kind=kind, model="m", base_urls=FLEET[:1], batch=True))
    assert isinstance(client, BatchClient)
    assert client.batch_url == FLEET[0]
    assert client.batch_endpoint == client.path
    assert client.batch_request("Once upon") == client.payload("Once upon")


def test_a_client_without_a_batch_api_is_refused():
    with pytest.raises(TypeError, match="no batch API"):
        batch_api(make_teacher(TeacherConfig()))


def test_check_batch_urls_refuses_a_fleet_in_batch_mode_only():
    live = TeacherConfig(kind="openai", model="m", base_urls=FLEET)
    check_batch_urls(live)  # a live fleet is fine
    check_batch_urls(TeacherConfig(kind="openai", model="m", base_urls=FLEET[:1], batch=True))
    with pytest.raises(
        ValueError, match="one provider endpoint: give at most one `--base-url` \\(got 2\\)"
    ):
        check_batch_urls(live, batch=True)


def test_batch_mode_with_several_base_urls_fails_before_sending(tmp_path):
    async def run():
        cfg = TeacherConfig(kind="openai", model="m", base_urls=FLEET, batch=True)
        async with make_teacher(cfg) as client:
            await run_batches(
                client,
                BatchLedger.load(tmp_path),
                {"d1": "prompt"},
                on_answer=lambda key, c: None,
                on_error=lambda key, reason: None,
            )

    # Refused when the config is checked, or at the latest when the batches start.
    with pytest.raises(ValueError) as refused:
        asyncio.run(run())
    assert "--base-url" in str(refused.value) and "one provider endpoint" in str(refused.value)
    assert not (tmp_path / "batches.json").exists()


def test_fleet_counts_a_request_while_it_is_in_flight():
    fleet = _Fleet(FLEET)
    with fleet.sending(1):
        assert fleet.in_flight == [0, 1] and fleet.sent == [0, 1]
    with pytest.raises(OSError), fleet.sending(1):
        raise OSError("connection dropped")
    assert fleet.in_flight == [0, 0] and fleet.sent == [0, 2]
