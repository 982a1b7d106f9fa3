"""`fan_out`, the worker pool of gen, filter and the eval judge: every answer reaches
`on_result`, a failed item goes to `on_error` and the rest go on, and a `RunStopped` stops the
pool (no new item is taken) and is returned."""

from __future__ import annotations

import asyncio

from data_gen.llm import (
    Completion,
    RequestFailed,
    RunStopped,
    SpendLimitReached,
    Teacher,
    TeacherConfig,
    fan_out,
)


class ScriptedClient(Teacher):
    """Answers `echo:<prompt>`; a prompt listed in `fail` / `stop` raises instead."""

    name = "scripted"

    def __init__(self, fail=(), stop=(), delay: float = 0.0) -> None:
        super().__init__(TeacherConfig())
        self.fail, self.stop, self.delay = set(fail), set(stop), delay
        self.asked: list[str] = []
        self.in_flight = self.most_in_flight = 0

    async def complete(self, prompt: str, *, reference: str | None = None) -> Completion:
        self.asked.append(prompt)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay)
        finally:
            self.in_flight -= 1
        if prompt in self.stop:
            raise SpendLimitReached(f"quota used up at {prompt}")
        if prompt in self.fail:
            raise RequestFailed(f"HTTP 400 for {prompt}")
        return Completion(f"echo:{prompt}|{reference}", "stop", 1, 1)


def _run(client, items, **kwargs):
    results, errors = {}, {}

    async def go():
        return await fan_out(
            client,
            items,
            lambda item: item,
            lambda item, answer: results.__setitem__(item, answer.text),
            lambda item, err: errors.__setitem__(item, str(err)),
            **kwargs,
        )

    return asyncio.run(go()), results, errors


def test_every_item_is_answered_within_the_concurrency():
    items = [f"p{i}" for i in range(20)]
    client = ScriptedClient(delay=0.01)
    stopped, results, errors = _run(
        client, items, concurrency=4, reference=lambda item: item.upper()
    )
    assert stopped is None and errors == {}
    assert results == {item: f"echo:{item}|{item.upper()}" for item in items}
    assert sorted(client.asked) == sorted(items)  # each once
    assert client.most_in_flight == 4


def test_a_failed_item_goes_to_on_error_and_the_rest_go_on():
    items = ["a", "b", "c", "d"]
    stopped, results, errors = _run(ScriptedClient(fail={"b"}), items, concurrency=2)
    assert stopped is None
    assert errors == {"b": "HTTP 400 for b"}
    assert set(results) == {"a", "c", "d"}


def test_run_stopped_stops_every_worker_and_is_returned():
    items = [f"p{i}" for i in range(50)]
    client = ScriptedClient(stop={"p3"}, delay=0.01)
    stopped, results, errors = _run(client, items, concurrency=2)
    assert isinstance(stopped, SpendLimitReached) and "p3" in str(stopped)
    assert "p3" not in results and errors == {}
    # Only what was in flight when the stop came finishes; nothing further is asked.
    assert len(client.asked) <= 5 and set(results) <= set(client.asked)


def test_on_error_may_stop_the_pool_itself():
    items = [f"p{i}" for i in range(30)]
    client = ScriptedClient(fail=set(items))

    def give_up(item, err):
        raise RunStopped(f"every request fails (last: {err})")

    async def go():
        return await fan_out(client, items, str, lambda i, a: None, give_up, concurrency=1)

    stopped = asyncio.run(go())
    assert str(stopped) == "every request fails (last: HTTP 400 for p0)"
    assert client.asked == ["p0"]


def test_no_items_asks_nothing():
    client = ScriptedClient()
    stopped, results, errors = _run(client, [], concurrency=8)
    assert stopped is None and results == {} and client.asked == []
