"""Client-side RPM/TPM limiting, shared by every worker of one teacher.

Two token buckets (requests, tokens) refilled continuously at `rpm / 60` and `tpm / 60` per
second. A bucket holds one second of budget, not a minute's: providers enforce their per-minute
limits over shorter windows, so a 60 s burst at start-up would just buy a wall of 429s.

Tokens are only known after the answer, so a request is charged an *estimate* before it is sent
(prompt characters / 4 + max_tokens) and the difference is settled when the usage comes back
(`settle`). The token bucket may go negative: a request larger than a second's budget still goes
once the bucket is full, and the debt makes the next ones wait, so the long-run rate holds.

On top of the buckets, a shared pause: when the server says a window is exhausted
(`x-ratelimit-remaining-*: 0` with `x-ratelimit-reset-*`, or `anthropic-ratelimit-*-remaining: 0`
with `anthropic-ratelimit-*-reset`) or answers 429/529, every worker waits until the stated
time instead of each spending a request to learn the same thing.

`clock` and `sleep` are injectable so tests can check the rates without waiting.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping

from data_gen.llm.retry import parse_reset

# (remaining header, reset header) pairs that announce an exhausted window.
_WINDOW_HEADERS = tuple(
    pair
    for kind in ("requests", "tokens")
    for pair in (
        (f"x-ratelimit-remaining-{kind}", f"x-ratelimit-reset-{kind}"),
        (f"anthropic-ratelimit-{kind}-remaining", f"anthropic-ratelimit-{kind}-reset"),
    )
) + tuple(
    (f"anthropic-ratelimit-{kind}-remaining", f"anthropic-ratelimit-{kind}-reset")
    for kind in ("input-tokens", "output-tokens")
)
# Never trust a header to stop us for longer than this (a clock skew or a daily window).
_MAX_HEADER_PAUSE_S = 300.0


class RateLimiter:
    """Token buckets for requests and tokens per minute, plus a pause every worker honours."""

    def __init__(
        self,
        rpm: float | None,
        tpm: float | None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.rpm, self.tpm = rpm, tpm
        self._clock, self._sleep = clock, sleep
        self._request_cap = max(1.0, rpm / 60.0) if rpm else 0.0
        self._token_cap = max(1.0, tpm / 60.0) if tpm else 0.0
        self._requests = self._request_cap
        self._tokens = self._token_cap
        self._updated = clock()
        self._paused_until = 0.0
        self._lock = asyncio.Lock()
        self.pauses = 0  # how often the server told us to stop (for stats and tests)

    @property
    def limited(self) -> bool:
        return bool(self.rpm or self.tpm)

    @property
    def active(self) -> bool:
        """Whether `acquire` may have to wait (a budget is set, or a pause is running)."""
        return self.limited or self._clock() < self._paused_until

    def pause(self, seconds: float) -> None:
        """Hold every worker for `seconds` from now (a later deadline wins)."""
        if seconds > 0:
            self.pauses += 1
            self._paused_until = max(self._paused_until, self._clock() + seconds)

    def observe(self, headers: Mapping[str, str]) -> None:
        """Follow the server's rate-limit headers: pause when it says a window is used up."""
        for remaining, reset in _WINDOW_HEADERS:
            left = headers.get(remaining)
            if left is None or headers.get(reset) is None:
                continue
            try:
                exhausted = float(left) <= 0
            except ValueError:
                continue
            if exhausted:
                seconds = parse_reset(headers[reset])
                if seconds:
                    self.pause(min(seconds, _MAX_HEADER_PAUSE_S))

    async def acquire(self, tokens: int) -> int:
        """Wait for budget for one request of about `tokens` tokens; returns the charge."""
        if not self.limited and self._clock() >= self._paused_until:
            return 0  # the common unlimited case costs no lock
        async with self._lock:  # one waiter at a time: first come, first served
            while True:
                now = self._clock()
                if now < self._paused_until:
                    await self._sleep(self._paused_until - now)
                    continue
                self._refill(now)
                wait = 0.0
                if self.rpm and self._requests < 1.0:
                    wait = (1.0 - self._requests) * 60.0 / self.rpm
                # A request bigger than the bucket goes once the bucket is full (then owes).
                need = min(float(tokens), self._token_cap)
                if self.tpm and self._tokens < need:
                    wait = max(wait, (need - self._tokens) * 60.0 / self.tpm)
                if wait <= 0:
                    if self.rpm:
                        self._requests -= 1.0
                    if self.tpm:
                        self._tokens -= tokens
                        return tokens
                    return 0
                await self._sleep(wait)

    def settle(self, charged: int, actual: int) -> None:
        """Replace a request's estimated charge with the tokens the server reported."""
        if self.tpm and charged and actual > 0:
            self._tokens += charged - actual

    def _refill(self, now: float) -> None:
        elapsed, self._updated = max(0.0, now - self._updated), now
        if self.rpm:
            self._requests = min(self._request_cap, self._requests + elapsed * self.rpm / 60.0)
        if self.tpm:
            self._tokens = min(self._token_cap, self._tokens + elapsed * self.tpm / 60.0)
