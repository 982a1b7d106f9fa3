"""The failures of an LLM client, by what the caller should do about them.

`RequestFailed`: this one item failed (recorded; the next run retries it). `RunStopped`: every
further request would fail the same way (spend limit, rejected key): stop at once and keep all
finished work.
"""

from __future__ import annotations


class TeacherError(Exception):
    """Base of every teacher failure."""


class RequestFailed(TeacherError):
    """This document failed (retries exhausted, or a 4xx retrying cannot fix); `str()` is a
    short reason for `failures.jsonl`. The next run retries it."""


class RunStopped(TeacherError):
    """Every further request would fail the same way: stop the run, keep all finished work."""


class SpendLimitReached(RunStopped):
    """The account's quota or spend limit is used up."""


class AuthFailed(RunStopped):
    """The API rejected the key (401/403); the message names the variable to fix."""
