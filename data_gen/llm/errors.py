"""The failures of an LLM client, by what the caller should do about them.

`RequestFailed`: this one item failed (recorded; the next run retries it). `RunStopped`: every
further request would fail the same way (spend limit, rejected key, nothing listening at the
URL): stop at once and keep all finished work.
"""

from __future__ import annotations


class TeacherError(Exception):
    """Base of every teacher failure."""


class RequestFailed(TeacherError):
    """This document failed (retries exhausted, or a 4xx retrying cannot fix); `str()` is a
    short reason for `failures.jsonl`. The next run retries it.

    `status` is the HTTP status of the last answer (None when there was none: a timeout, a
    dropped connection); `timeouts` counts the attempts that ran past `--timeout`. Callers use
    them for advice (a chat endpoint failing with 5xx, a server slower than the settings)."""

    def __init__(self, message: str, *, status: int | None = None, timeouts: int = 0) -> None:
        super().__init__(message)
        self.status = status
        self.timeouts = timeouts


class RunStopped(TeacherError):
    """Every further request would fail the same way: stop the run, keep all finished work."""


class SpendLimitReached(RunStopped):
    """The account's quota or spend limit is used up."""


class AuthFailed(RunStopped):
    """The API rejected the key (401/403); the message names the variable to fix."""


class ServerUnreachable(RunStopped):
    """No server of the teacher accepted a connection, and none has answered yet in this run
    (nothing listening at the URL, a name that does not resolve): not a transient fault, so the
    run stops at once, naming the URL. A server that answered earlier and then refuses is taken
    for a restart and retried with backoff instead."""
