"""`fan_out`: many prompts through one client, `concurrency` at a time, until done or stopped.

`nif gen` (the teacher), `nif filter` and `nif eval` (the judge) all send a list of prompts the
same way, so the pool lives here once. Each worker takes the next item, asks the client, and
hands the answer to `on_result`. A `RequestFailed` concerns that item alone: it goes to
`on_error` and the worker moves on (the item stays undone; the next run asks again). A
`RunStopped` means every further request would fail the same way (spend limit, rejected key):
no worker takes another item, the requests already in flight finish, and the first such error is
returned so the caller can keep its finished work and say why it stopped. `on_error` may raise
`RunStopped` itself to stop the pool for a reason only the caller can see (gen's "the first N
documents all failed").

The pool holds at most `concurrency` workers, and no more than there are items; the client
still caps what is in flight on its own (its slots), so the workers only keep it fed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import TypeVar

from data_gen.llm.client import Completion, Teacher
from data_gen.llm.errors import RequestFailed, RunStopped

T = TypeVar("T")


async def fan_out(
    client: Teacher,
    items: Sequence[T],
    prompt: Callable[[T], str],
    on_result: Callable[[T, Completion], None],
    on_error: Callable[[T, RequestFailed], None] = lambda item, err: None,
    *,
    concurrency: int,
    reference: Callable[[T], str | None] = lambda item: None,
) -> RunStopped | None:
    """Ask `client` for `prompt(item)` (with `reference(item)`, for the `original` teacher) for
    every item; returns None when every item was asked, else the `RunStopped` that ended it."""
    pending = iter(items)  # shared by the workers: each takes the next item
    stopped: list[RunStopped] = []

    async def worker() -> None:
        for item in pending:
            try:
                answer = await client.complete(prompt(item), reference=reference(item))
            except RequestFailed as err:
                try:
                    on_error(item, err)
                except RunStopped as stop:
                    stopped.append(stop)
            except RunStopped as stop:
                stopped.append(stop)
            else:
                on_result(item, answer)
            if stopped:
                return

    await asyncio.gather(*(worker() for _ in range(min(concurrency, max(1, len(items))))))
    return stopped[0] if stopped else None
