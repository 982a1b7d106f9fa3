"""Teacher clients: who continues the first half, and how to survive doing it 80,000 times.

One interface, `await teacher.complete(prompt, reference=...) -> Completion`, over:

    original            no teacher: the true continuation (the paper's OpenWebText baseline)
    openai              /v1/chat/completions (OpenAI, or any compatible server via --base-url);
                        the first half is the user message, with no instruction
    openai-completions  /v1/completions, raw text in and out (base-model servers such as vLLM)
    anthropic           /v1/messages, with the paper's system prompt by default
    hf                  a local transformers model, batched greedy generation (`hf.py`)

This module holds the base class and the HTTP engine every API teacher shares; the request
bodies are in `wire.py`, the config in `config.py`, the factory in `factory.py`.

The HTTP teachers own the robustness (DESIGN.md, "Teacher APIs"); the policy is in `retry.py`
and the RPM/TPM limiter in `ratelimit.py`. In short: bounded retries with exponential backoff and
full jitter on 408/409/429/5xx/529, dropped connections, timeouts and malformed bodies; the
server's `retry-after-ms` / `retry-after` wins; rate-limit headers and 429/529 pause every worker;
a spend-limit or rejected-key answer raises `RunStopped` at once (every other request would fail
the same way); any other 4xx fails just that document (`RequestFailed`). A `length` continuation
is a valid answer, returned with its finish reason, never retried.

Several `--base-url`s form a fleet: each request goes to the server with the fewest requests in
flight (ties in turn), a retry prefers another server, and a server that refuses connections is
left alone for a while, so one dead vLLM box costs a few retries, not the run.

A refused connection is transient only for a server that has answered before (a restart): when
every server of the teacher has refused and none has answered yet in this session (nothing
listening, a wrong port, a name that does not resolve), the client raises `ServerUnreachable`
at once, naming the URL, instead of retrying with backoff for minutes.

A slow server adapts the concurrency (AIMD, `_Gate`): a request that runs past `--timeout`
halves the requests allowed in flight (once per window: the requests sent before the cut do not
cut again), logged once per cut with the flags to change; each window of answers in a row adds
one back, up to `--concurrency`. A server that answers one request at a time queues the rest,
so with too many in flight the last ones time out although the server is working.

What a server may send back is bounded (`limits.py`): redirects are never followed (a 3xx
fails the request, naming where it pointed, so no key reaches another host), a body is read up
to max(4 MiB, 256 bytes x max_tokens), a completion longer than 16 characters a token is a
failure, and `timeout` covers the body too.

API keys are read once, when the teacher is made, from the environment variable named by
`--api-key-env`; the value is never logged, never put in an error message (APIs echo key prefixes
back: those are masked too) and never in `public_dict()` or a repr; nor are credentials
written into a base URL (`http://user:pass@host`, `?key=...`: `retry.redact_url`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any

from data_gen.llm.config import TeacherConfig, check_batch_urls
from data_gen.llm.errors import AuthFailed, RequestFailed, ServerUnreachable, SpendLimitReached
from data_gen.llm.limits import BYTES_PER_TOKEN, body_cap, read_capped, redirect_refused, too_long
from data_gen.llm.ratelimit import RateLimiter
from data_gen.llm.retry import (
    AUTH_STATUS,
    backoff_delay,
    error_message,
    is_retryable,
    is_spend_limit,
    redact,
    redact_url,
    retry_after_seconds,
)

log = logging.getLogger(__name__)

# A server that refused a connection is skipped this long (doubling per refusal, capped).
_DOWN_S, _MAX_DOWN_S = 1.0, 30.0


def join_url(root: str, path: str) -> str:
    """`path` below the API root `root`, before any query the root carries (`?key=...`)."""
    base, mark, query = root.partition("?")
    return base.rstrip("/") + path + mark + query


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str  # stop | length | content_filter | original | ... as the teacher says
    prompt_tokens: int
    completion_tokens: int


class Teacher:
    """Base class: an async context manager with `name` and `complete()`."""

    name: str

    def __init__(self, cfg: TeacherConfig) -> None:
        self.cfg = cfg

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"

    async def __aenter__(self) -> Teacher:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        return None

    async def complete(self, prompt: str, *, reference: str | None = None) -> Completion:
        raise NotImplementedError(f"{type(self).__name__} must implement complete()")


class OriginalTeacher(Teacher):
    """No teacher: the document's true continuation (no API, so no token counts)."""

    name = "original"

    async def complete(self, prompt: str, *, reference: str | None = None) -> Completion:
        if reference is None:
            raise RequestFailed("the `original` teacher needs the reference continuation")
        return Completion(reference, "original", 0, 0)


class _Fleet:
    """The base URLs of one teacher: least-in-flight choice, and a cool-down for dead servers."""

    def __init__(self, urls: tuple[str, ...], clock=time.monotonic) -> None:
        self.urls = [u.rstrip("/") for u in urls]
        self.in_flight = [0] * len(urls)
        self.sent = [0] * len(urls)
        self._down_until = [0.0] * len(urls)
        self._refusals = [0] * len(urls)
        self._ever_answered = [False] * len(urls)
        self._turn = 0
        self._clock = clock

    def pick(self, avoid: int | None = None) -> int:
        n = len(self.urls)
        if n == 1:
            return 0
        now = self._clock()
        up = [i for i in range(n) if self._down_until[i] <= now] or list(range(n))
        if avoid is not None and len(up) > 1:
            up = [i for i in up if i != avoid]  # a retry tries another server
        self._turn += 1
        turn = self._turn
        return min(up, key=lambda i: (self.in_flight[i], (i - turn) % n))

    @contextmanager
    def sending(self, i: int) -> Iterator[None]:
        """Count one request to server `i`: in flight while the block runs, and sent."""
        self.in_flight[i] += 1
        self.sent[i] += 1
        try:
            yield
        finally:
            self.in_flight[i] -= 1

    def refused(self, i: int) -> None:
        self._refusals[i] += 1
        cool = min(_MAX_DOWN_S, _DOWN_S * 2.0 ** (self._refusals[i] - 1))
        self._down_until[i] = self._clock() + cool

    def answered(self, i: int) -> None:
        self._refusals[i] = 0
        self._down_until[i] = 0.0
        self._ever_answered[i] = True

    def unreachable(self) -> bool:
        """Every server has refused a connection and none has ever answered: nothing to wait
        for (a server that answered once and then refuses is restarting, and waited for)."""
        return not any(self._ever_answered) and all(self._refusals)


class _Gate:
    """At most `limit` requests in flight, adapted to the server (additive increase,
    multiplicative decrease): `timed_out` halves the limit, once per window (a timeout of a
    request let in before the last cut does not cut again); `answered` adds one after `limit`
    answers in a row, up to `ceiling` (the configured concurrency). Waiters are let in first come,
    first served; a slot is handed to a waiter when it frees (as `asyncio.Semaphore` does)."""

    def __init__(self, ceiling: int) -> None:
        self.ceiling = self.limit = self.lowest = ceiling
        self.in_flight = 0
        self.window = 0  # bumped by each cut
        self._streak = 0
        self._waiters: deque[asyncio.Future] = deque()

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[int]:
        """Wait for a free slot; yields the window the request was let in under."""
        if self.in_flight < self.limit and not self._waiters:
            self.in_flight += 1
        else:
            granted = asyncio.get_running_loop().create_future()
            self._waiters.append(granted)
            try:
                await granted
            except asyncio.CancelledError:
                if granted.done() and not granted.cancelled():
                    self._release()  # handed a slot, then cancelled: pass it on
                else:
                    with contextlib.suppress(ValueError):
                        self._waiters.remove(granted)
                raise
        try:
            yield self.window
        finally:
            self._release()

    def _release(self) -> None:
        self.in_flight -= 1
        self._grant()

    def _grant(self) -> None:
        while self._waiters and self.in_flight < self.limit:
            granted = self._waiters.popleft()
            if not granted.done():  # a cancelled waiter is skipped
                self.in_flight += 1
                granted.set_result(None)

    def timed_out(self, window: int) -> int | None:
        """A request let in under `window` timed out: the limit before the cut, or None when
        this timeout does not cut (an older window, or already at 1)."""
        if window != self.window or self.limit == 1:
            return None
        before = self.limit
        self.limit = max(1, self.limit // 2)
        self.lowest = min(self.lowest, self.limit)
        self.window += 1
        self._streak = 0
        return before

    def answered(self) -> None:
        self._streak += 1
        if self.limit < self.ceiling and self._streak >= self.limit:
            self.limit += 1
            self._streak = 0
            self._grant()


class _HttpTeacher(Teacher):
    """Shared retry / limit / fleet logic; subclasses build the payload and parse the answer."""

    path = ""

    def __init__(self, cfg: TeacherConfig) -> None:
        super().__init__(cfg)
        self.name = f"{cfg.kind}:{cfg.model}"
        self._key = cfg.api_key()  # read once, at the start of the session
        self.limiter = RateLimiter(cfg.rpm, cfg.tpm)
        self.fleet = _Fleet(cfg.urls)
        self.stats: Counter = Counter()  # attempts, retries, and what caused them
        self._session = None
        # At most `concurrency` requests in flight, however many callers wait (fewer while the
        # server times out: `_Gate`): a server is picked only when a slot is free, so the
        # choice sees the fleet as it is now.
        self.gate = _Gate(cfg.concurrency)
        self._request_headers = self._headers()
        self.body_cap = body_cap(cfg.max_tokens)  # the most bytes one answer may hold
        self._cap_why = (
            f"the cap for max_tokens {cfg.max_tokens}: max(4 MiB, {BYTES_PER_TOKEN} bytes a token)"
        )

    async def __aenter__(self) -> _HttpTeacher:
        import aiohttp

        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.cfg.concurrency + 4),
            timeout=aiohttp.ClientTimeout(total=self.cfg.timeout),
        )
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._key}"} if self._key else {}

    def payload(self, prompt: str) -> dict[str, Any]:
        """The request body that asks for a continuation of `prompt` (the wire format)."""
        raise NotImplementedError

    def parse(self, body: dict[str, Any]) -> Completion:
        """The completion in a successful answer's body."""
        raise NotImplementedError

    # Batch mode (`batch.BatchClient`): the same wire format, key, retries and backoff as the
    # live requests, on the one API root a batch goes to.

    @property
    def batch_url(self) -> str:
        """The API root batches are sent to and read from: the one `--base-url`, or the
        provider's. A fleet is refused (`check_batch_urls`), never cut to its first server."""
        check_batch_urls(self.cfg, batch=True)
        return self.fleet.urls[0]

    @property
    def batch_endpoint(self) -> str:
        """The live endpoint each batched request stands for, below the API root."""
        return self.path

    def batch_request(self, prompt: str) -> dict[str, Any]:
        """The body of one batched request: the live request's, unchanged."""
        return self.payload(prompt)

    def parse_batch_result(self, body: dict[str, Any]) -> Completion:
        """The completion in one batched answer's body (the live answer's format); raises
        RequestFailed for one far past max_tokens."""
        return self._checked(self.parse(body))

    def _checked(self, done: Completion) -> Completion:
        """`done`, unless the server ignored max_tokens (RequestFailed: not stored)."""
        why = too_long(done.text, self.cfg.max_tokens)
        if why is not None:
            raise RequestFailed(why)
        return done

    async def call(self, method: str, url: str, **kwargs: Any) -> bytes:
        """One API call besides completions (the batch endpoints), with the same key, retries
        and backoff: the body of a 2xx answer, or RequestFailed / AuthFailed. A body is read
        up to `cap` bytes (`cap=(bytes, why)`; default one answer's cap); a 3xx is refused."""
        import aiohttp

        cfg = self.cfg
        headers = {**self._request_headers, **kwargs.pop("headers", {})}
        data = kwargs.pop("data", None)  # a callable makes a fresh body per attempt
        cap, why = kwargs.pop("cap", (self.body_cap, self._cap_why))
        reason = "no attempt made"
        for attempt in range(cfg.max_retries + 1):
            wait = None
            sent = data() if callable(data) else data
            try:
                async with self._session.request(
                    method, url, headers=headers, data=sent, allow_redirects=False, **kwargs
                ) as r:
                    if 300 <= r.status < 400:
                        raise redirect_refused(r.status, url, r.headers.get("Location"))
                    answer = await read_capped(r, cap, why)
                    if r.status < 300:
                        return answer
                    reason = self._fail_or_reason(r.status, answer.decode("utf-8", "replace"))
                    wait = retry_after_seconds(r.headers)
            except (aiohttp.ClientError, asyncio.TimeoutError) as err:
                reason = type(err).__name__
            if attempt < cfg.max_retries:
                await asyncio.sleep(backoff_delay(attempt, cfg.backoff) if wait is None else wait)
        shown = redact_url(url)
        raise RequestFailed(
            f"{method} {shown}: gave up after {cfg.max_retries + 1} tries: {reason}"
        )

    async def complete(self, prompt: str, *, reference: str | None = None) -> Completion:
        if self._session is None:
            raise RuntimeError(f"use the {self.cfg.kind} teacher inside `async with`")
        cfg = self.cfg
        payload = self.payload(prompt)
        estimate = len(prompt) // 4 + cfg.max_tokens  # what TPM limits charge up front
        reason, server, status, timeouts = "no attempt made", None, None, 0
        for attempt in range(cfg.max_retries + 1):
            async with self.gate.slot() as window:
                server = self.fleet.pick(avoid=server)
                done, reason, wait, limited, status = await self._attempt(server, payload, estimate)
            if done is not None:
                self.gate.answered()
                return done
            if status == "timeout":
                timeouts += 1
                self._slow_down(window)
            self.stats[reason.split(":")[0]] += 1
            delay = backoff_delay(attempt, cfg.backoff) if wait is None else wait
            if limited:  # 429 / 529: the whole account is limited, so every worker waits
                self.limiter.pause(delay)
            if attempt < cfg.max_retries:
                self.stats["retries"] += 1
                log.info(
                    "%s: retry %d/%d in %.2fs after %s",
                    self.name,
                    attempt + 1,
                    cfg.max_retries,
                    delay,
                    reason,
                )
                await asyncio.sleep(delay)
        raise RequestFailed(
            f"gave up after {cfg.max_retries + 1} attempts; last: {reason}",
            status=status if isinstance(status, int) else None,
            timeouts=timeouts,
        )

    def _slow_down(self, window: int) -> None:
        """A request ran past `--timeout`: halve the requests in flight (once per window)."""
        self.stats["timeouts"] += 1
        before = self.gate.timed_out(window)
        if before is not None:
            log.warning(
                "%s: a request ran past --timeout %gs; requests in flight %d -> %d (a server "
                "that answers one at a time queues the rest). If this repeats, re-run with a "
                "lower --concurrency or a higher --timeout",
                self.name,
                self.cfg.timeout,
                before,
                self.gate.limit,
            )

    async def _attempt(
        self, server: int, payload: dict[str, Any], estimate: int
    ) -> tuple[Completion | None, str, float | None, bool, int | str | None]:
        """One request: (answer, "", None, False, 200), or (None, why it failed, the server's
        retry-after or None, whether the account is rate limited, the HTTP status or "timeout"
        or None). Raises for answers that retrying cannot fix, and `ServerUnreachable` when no
        server of the teacher has ever answered and each has refused a connection."""
        import aiohttp

        charged = await self.limiter.acquire(estimate) if self.limiter.active else 0
        url = join_url(self.fleet.urls[server], self.path)
        self.stats["attempts"] += 1
        try:
            with self.fleet.sending(server):
                async with self._session.post(
                    url, json=payload, headers=self._request_headers, allow_redirects=False
                ) as r:
                    body = await read_capped(r, self.body_cap, self._cap_why)
                    text = body.decode("utf-8", errors="replace")  # JSON is UTF-8
                    self.limiter.observe(r.headers)
                    status, headers = r.status, r.headers
        except aiohttp.ClientConnectorError as err:
            self.fleet.refused(server)
            where = redact_url(self.fleet.urls[server])
            reason = f"cannot connect to {where} ({_connect_error(err)})"
            if self.fleet.unreachable():
                servers = ", ".join(redact_url(u) for u in self.fleet.urls)
                raise ServerUnreachable(
                    f"cannot connect to {servers} ({_connect_error(err)}), and it has not "
                    "answered once: start the server, or fix --base-url"
                ) from None
            return None, reason, None, False, None
        except asyncio.TimeoutError:  # aiohttp's timeouts are TimeoutErrors too
            reason = f"TimeoutError: no complete answer within --timeout {self.cfg.timeout:g}s"
            return None, reason, None, False, "timeout"
        except aiohttp.ClientError as err:
            reason = type(err).__name__ + (f": {err}" if str(err) else "")
            return None, redact(reason, self._key), None, False, None
        self.fleet.answered(server)
        if status == 200:
            try:
                done = self.parse(json.loads(text))
            except (ValueError, KeyError, TypeError, IndexError, AttributeError):
                return None, "malformed response body", None, False, status
            self.limiter.settle(charged, done.prompt_tokens + done.completion_tokens)
            return self._checked(done), "", None, False, status
        if 300 <= status < 400:  # never followed: it could carry the key to another host
            raise redirect_refused(status, url, headers.get("Location"))
        reason = self._fail_or_reason(status, text)
        return None, reason, retry_after_seconds(headers), status in (429, 529), status

    def _fail_or_reason(self, status: int, body: str) -> str:
        """Raise for answers retrying cannot fix; else the reason to log and maybe report."""
        reason = f"HTTP {status}: {error_message(body, secret=self._key)}"
        if is_spend_limit(status, body):
            raise SpendLimitReached(reason)
        if status in AUTH_STATUS:
            hint = (
                f"check the key in ${self.cfg.key_env}"
                if self._key
                else f"no key was sent: set ${self.cfg.key_env} or name one with --api-key-env"
            )
            raise AuthFailed(f"{reason} ({hint})")
        if not is_retryable(status):
            raise RequestFailed(reason, status=status)
        return reason


def _connect_error(err: Exception) -> str:
    """What went wrong connecting, in words (`err` is aiohttp's ClientConnectorError)."""
    cause = getattr(err, "os_error", None)
    if isinstance(cause, ConnectionRefusedError):
        return "connection refused: nothing listening there"
    if type(err).__name__ == "ClientConnectorDNSError":
        return "the host name does not resolve"
    return getattr(cause, "strerror", None) or type(err).__name__
