"""The RPM/TPM limiter on an injected clock (no waiting), the retry policy's header parsing, and
end-to-end checks that the client really waits as long as the server says."""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from datetime import datetime, timedelta, timezone

import pytest

from data_gen.llm import TeacherConfig, make_teacher
from data_gen.llm.ratelimit import RateLimiter
from data_gen.llm.retry import (
    backoff_delay,
    error_message,
    is_retryable,
    is_spend_limit,
    parse_reset,
    redact,
    retry_after_seconds,
)
from fake_provider import FakeTeacherServer, reply_for


class FakeClock:
    """`time.monotonic` and `asyncio.sleep` stand-ins: sleeping moves the clock, instantly."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)


def _limiter(rpm=None, tpm=None) -> tuple[RateLimiter, FakeClock]:
    clock = FakeClock()
    return RateLimiter(rpm, tpm, clock=clock, sleep=clock.sleep), clock


def _acquire_all(limiter: RateLimiter, tokens: list[int]) -> list[int]:
    async def run():
        return [await limiter.acquire(t) for t in tokens]

    return asyncio.run(run())


def test_rpm_keeps_the_request_rate():
    limiter, clock = _limiter(rpm=120)  # 2 per second, a bucket of 2
    _acquire_all(limiter, [1] * 20)
    # 2 go at once from the full bucket, the other 18 at 2/s.
    assert clock.now - 1000.0 == pytest.approx(9.0)


def test_rpm_under_concurrent_workers():
    limiter, clock = _limiter(rpm=60)
    times = []

    async def worker():
        for _ in range(5):
            await limiter.acquire(1)
            times.append(clock.now)

    async def run():
        await asyncio.gather(*(worker() for _ in range(8)))

    asyncio.run(run())
    times.sort()
    # 40 requests at 1/s: never more than 1 + (t - t0) requests by time t.
    for i, t in enumerate(times):
        assert i + 1 <= 1 + (t - 1000.0) + 1e-9


def test_tpm_keeps_the_token_rate_and_settles_with_usage():
    limiter, clock = _limiter(tpm=6000)  # 100 tokens/s, a bucket of 100
    _acquire_all(limiter, [50] * 10)
    assert clock.now - 1000.0 == pytest.approx(4.0)  # 500 tokens, 100 free, 400 at 100/s
    # The server says the last request used only 10 tokens: 40 come back at once.
    limiter.settle(50, 10)
    before = clock.now
    _acquire_all(limiter, [40])
    assert clock.now == pytest.approx(before)


def test_request_bigger_than_the_bucket_goes_then_owes():
    limiter, clock = _limiter(tpm=600)  # 10 tokens/s
    assert _acquire_all(limiter, [100]) == [100]  # does not wait forever for 100 > bucket
    assert clock.now == pytest.approx(1000.0)
    _acquire_all(limiter, [1])
    assert clock.now - 1000.0 == pytest.approx((90 + 1) / 10)  # the debt is paid first


def test_pause_holds_every_worker_even_without_limits():
    limiter, clock = _limiter()
    limiter.pause(5.0)
    _acquire_all(limiter, [1])
    assert clock.now == pytest.approx(1005.0)


def test_rate_limit_headers_pause_when_a_window_is_used_up():
    limiter, clock = _limiter()
    limiter.observe({"x-ratelimit-remaining-requests": "3", "x-ratelimit-reset-requests": "6s"})
    assert limiter.pauses == 0
    limiter.observe({"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "1m30s"})
    _acquire_all(limiter, [1])
    assert clock.now == pytest.approx(1090.0)
    limiter2, clock2 = _limiter()
    reset = (datetime.now(timezone.utc) + timedelta(seconds=20)).isoformat()
    limiter2.observe(
        {"anthropic-ratelimit-requests-remaining": "0", "anthropic-ratelimit-requests-reset": reset}
    )
    _acquire_all(limiter2, [1])
    assert clock2.now - 1000.0 == pytest.approx(20.0, abs=1.0)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("6m0s", 360.0), ("20ms", 0.02), ("1.5s", 1.5), ("1h2m3s", 3723.0), ("2", 2.0)],
)
def test_parse_reset_durations(value, seconds):
    assert parse_reset(value) == pytest.approx(seconds)


def test_parse_reset_rejects_garbage():
    assert parse_reset("soon") is None
    assert parse_reset("2026-01-01T00:00:00") is None  # no zone: ambiguous


def test_retry_after_ms_then_seconds_then_http_date():
    assert retry_after_seconds({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert retry_after_seconds({"retry-after": "3"}) == 3.0
    now = time.time()
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert retry_after_seconds({"retry-after": date}, now=lambda: now) == pytest.approx(30, abs=1)
    assert retry_after_seconds({"retry-after": "later"}) is None
    assert retry_after_seconds({}) is None


def test_backoff_is_full_jitter_and_capped():
    rng = random.Random(0)
    delays = [backoff_delay(3, 0.5, rng=rng) for _ in range(500)]
    assert min(delays) >= 0 and max(delays) <= 4.0
    assert min(delays) < 0.5 and max(delays) > 3.5  # spread over the whole range
    assert all(backoff_delay(40, 1.0, cap=7.0, rng=rng) <= 7.0 for _ in range(50))


def test_status_and_body_classification():
    assert all(is_retryable(s) for s in (408, 409, 429, 500, 502, 503, 529))
    assert not any(is_retryable(s) for s in (400, 401, 403, 404, 422))
    assert is_spend_limit(429, '{"error": {"code": "insufficient_quota"}}')
    assert is_spend_limit(400, "Your credit balance is too low to access the API")
    assert not is_spend_limit(429, '{"error": {"type": "rate_limit_error"}}')
    assert error_message('{"error": {"message": "bad"}}') == "bad"
    assert error_message("<html><b>oops</b>") == "oops"  # an HTML error page: its text


def test_echoed_keys_are_masked():
    secret = "sk-proj-ABCDEF123456"
    text = f"Incorrect API key provided: {secret}. Also sk-ant-api03-xyzxyz."
    masked = redact(text, secret)
    assert secret not in masked and "xyzxyz" not in masked and "Incorrect API key" in masked


# --- end to end against the server: these wait for real, a fraction of a second each ---------


def _cfg(server, **kw) -> TeacherConfig:
    return TeacherConfig(**{"kind": "openai", "model": "m", "base_urls": (server.url,), **kw})


def test_retry_after_ms_is_honoured():
    async def run():
        async with FakeTeacherServer(schedule=["429"], retry_after_ms=300) as server:
            async with make_teacher(_cfg(server, backoff=0.0)) as teacher:
                c = await teacher.complete("wait for it")
            return server, c

    server, c = asyncio.run(run())
    assert c.text == reply_for("wait for it")
    gap = server.arrivals[1] - server.arrivals[0]
    assert 0.28 <= gap < 2.0


def test_retry_after_seconds_is_honoured_and_pauses_other_workers():
    async def run():
        server = FakeTeacherServer(schedule=["429s"], retry_after_s=1)
        async with server, make_teacher(_cfg(server, backoff=0.0, concurrency=2)) as teacher:
            first = asyncio.create_task(teacher.complete("a"))
            await asyncio.sleep(0.2)  # the 429 has arrived: everyone is paused now
            second = await teacher.complete("b")
            return server, await first, second

    server, a, b = asyncio.run(run())
    assert (a.text, b.text) == (reply_for("a"), reply_for("b"))
    assert len(server.arrivals) == 3
    assert min(server.arrivals[1:]) - server.arrivals[0] >= 0.95


def test_exhausted_window_header_pauses_the_next_request():
    headers = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "300ms"}

    async def run():
        async with FakeTeacherServer(reply_headers=lambda i: headers if i == 0 else {}) as server:
            async with make_teacher(_cfg(server)) as teacher:
                await teacher.complete("a")
                await teacher.complete("b")
            return server

    server = asyncio.run(run())
    assert server.arrivals[1] - server.arrivals[0] >= 0.28


def test_rpm_limit_through_the_real_client():
    granted: list[float] = []

    async def run():
        async with FakeTeacherServer() as server:
            async with make_teacher(_cfg(server, rpm=600, concurrency=20)) as teacher:
                acquire = teacher.limiter.acquire

                async def timed(tokens):
                    charge = await acquire(tokens)
                    granted.append(time.monotonic())  # when the client may send
                    return charge

                teacher.limiter.acquire = timed
                await asyncio.gather(*(teacher.complete(f"p{i}") for i in range(20)))
            return server

    server = asyncio.run(run())
    assert server.requests == 20 and len(granted) == 20
    # 10/s with a bucket of 10: the last 10 sends are spread over about a second. (Measured where
    # the client sends, not where the server receives: a busy machine can bunch up arrivals.)
    assert granted[-1] - granted[0] >= 0.85
