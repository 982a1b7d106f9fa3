"""Teacher clients: who continues the first half, and how to survive doing it 80,000 times.

One interface, `await teacher.complete(prompt, reference=...) -> Completion`, over:

    original            no teacher: the true continuation (the paper's OpenWebText baseline)
    openai              /v1/chat/completions (OpenAI, or any compatible server via --base-url);
                        the first half is the user message, with no instruction
    openai-completions  /v1/completions, raw text in and out (base-model servers such as vLLM)
    anthropic           /v1/messages, with the paper's system prompt by default
    hf                  a local transformers model, batched greedy generation (`hf_teacher.py`)

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

API keys are read once, when the teacher is made, from the environment variable named by
`--api-key-env`; the value is never logged, never put in an error message (APIs echo key prefixes
back: those are masked too) and never in `public_dict()` or a repr.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from data_gen.ratelimit import RateLimiter
from data_gen.retry import (
    AUTH_STATUS,
    backoff_delay,
    error_message,
    is_retryable,
    is_spend_limit,
    redact,
    retry_after_seconds,
)

log = logging.getLogger(__name__)

KINDS = ("original", "openai", "openai-completions", "anthropic", "hf")
BATCH_KINDS = ("openai", "openai-completions", "anthropic")  # have a provider batch API

# The system prompt the paper gave Claude teachers (OpenAI teachers got none).
PAPER_SYSTEM_PROMPT = (
    "Please continue directly from the end of the given sentence without repeating it"
)
ANTHROPIC_VERSION = "2023-06-01"

_DEFAULT_URL = {
    "openai": "https://api.openai.com/v1",
    "openai-completions": "http://localhost:8000/v1",
    "anthropic": "https://api.anthropic.com/v1",
}
_DEFAULT_KEY_ENV = {
    "openai": "OPENAI_API_KEY",
    "openai-completions": "OPENAI_API_KEY",
    "anthropic": "ANTHROPIC_API_KEY",
}
# A server that refused a connection is skipped this long (doubling per refusal, capped).
_DOWN_S, _MAX_DOWN_S = 1.0, 30.0


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str  # stop | length | content_filter | original | ... as the teacher says
    prompt_tokens: int
    completion_tokens: int


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


@dataclass
class TeacherConfig:
    """How to reach the teacher. Errors name the `nif gen` flag."""

    kind: str = "original"
    """original | openai | openai-completions | anthropic | hf (`--teacher`)."""
    model: str | None = None
    """API model name, or a HF hub id / local folder for `hf` (`--model`)."""
    base_urls: tuple[str, ...] = ()
    """API roots, e.g. http://host:8000/v1; several spread the load (`--base-url`, repeatable)."""
    api_key_env: str | None = None
    """NAME of the environment variable holding the key (`--api-key-env`)."""
    temperature: float = 0.0
    """Sampling temperature; the paper: 0 (`--temperature`)."""
    max_tokens: int = 1024
    """Continuation length cap (`--max-tokens`)."""
    system_prompt: str | None = None
    """System prompt; `anthropic` defaults to the paper's, "" for none (`--system-prompt`)."""
    concurrency: int = 16
    """Requests in flight; the batch size for `hf` (`--concurrency`)."""
    rpm: float | None = None
    """Requests-per-minute budget (`--rpm`)."""
    tpm: float | None = None
    """Tokens-per-minute budget; prompt chars / 4 + max_tokens charged up front (`--tpm`)."""
    max_retries: int = 6
    """Retries per document before it goes to failures.jsonl (`--max-retries`)."""
    timeout: float = 120.0
    """Seconds per request (`--timeout`)."""
    backoff: float = 1.0
    """First retry delay in seconds, doubled per attempt, with full jitter (`--backoff`)."""
    batch: bool = False
    """Send through the provider's batch API: half the price, answers within 24 h (`--batch`)."""
    batch_size: int = 10_000
    """Requests per provider batch (`--batch-size`; OpenAI takes 50k, Anthropic 100k)."""
    poll_seconds: float = 60.0
    """Seconds between status checks of a pending batch (`--poll-seconds`)."""
    batch_wait: bool = True
    """Wait for the batches to end; off: send, collect what has ended, exit (`--no-wait`)."""

    def __post_init__(self) -> None:
        self.base_urls = tuple(self.base_urls)
        if self.kind not in KINDS:
            raise ValueError(f"`--teacher` must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.kind != "original" and not self.model:
            raise ValueError(f"`--teacher {self.kind}` needs `--model`")
        if self.kind in ("original", "hf") and self.base_urls:
            raise ValueError(f"`--base-url` does not apply to `--teacher {self.kind}`")
        if self.kind in ("openai-completions", "hf") and self.system_prompt:
            raise ValueError(
                f"`--system-prompt` does not apply to `--teacher {self.kind}` (raw text in and out)"
            )
        for url in self.base_urls:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"`--base-url` must start with http:// or https://, got {url!r}")
        if len(set(self.base_urls)) != len(self.base_urls):
            raise ValueError("`--base-url` lists the same server twice")
        checks = [
            (self.temperature >= 0, "`--temperature` must be >= 0"),
            (self.max_tokens >= 1, "`--max-tokens` must be >= 1"),
            (self.concurrency >= 1, "`--concurrency` must be >= 1"),
            (self.rpm is None or self.rpm > 0, "`--rpm` must be > 0"),
            (self.tpm is None or self.tpm > 0, "`--tpm` must be > 0"),
            (self.max_retries >= 0, "`--max-retries` must be >= 0"),
            (self.timeout > 0, "`--timeout` must be > 0"),
            (self.backoff >= 0, "`--backoff` must be >= 0"),
            (self.batch_size >= 1, "`--batch-size` must be >= 1"),
            (self.poll_seconds > 0, "`--poll-seconds` must be > 0"),
            (
                not self.batch or self.kind in BATCH_KINDS,
                f"`--batch` needs a teacher with a batch API ({', '.join(BATCH_KINDS)})",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        if self.api_key_env is not None and self.api_key_env not in os.environ:
            raise ValueError(
                f"`--api-key-env {self.api_key_env}`: that environment variable is not set"
            )

    @property
    def urls(self) -> tuple[str, ...]:
        return self.base_urls or ((_DEFAULT_URL[self.kind],) if self.kind in _DEFAULT_URL else ())

    @property
    def key_env(self) -> str | None:
        """The NAME of the variable the key is read from (never its value)."""
        return self.api_key_env or _DEFAULT_KEY_ENV.get(self.kind)

    @property
    def effective_system_prompt(self) -> str | None:
        if self.system_prompt is not None:
            return self.system_prompt or None  # "" switches the default off
        return PAPER_SYSTEM_PROMPT if self.kind == "anthropic" else None

    def api_key(self) -> str | None:
        """The key's value, read now from the environment (never stored in the config)."""
        name = self.key_env
        key = os.environ.get(name) if name else None
        if not key and self.kind in _DEFAULT_URL and not self.base_urls:
            # The public APIs need a key; local servers (vLLM, Ollama) usually do not.
            raise ValueError(
                f"`--teacher {self.kind}` on its public API needs a key in ${name} "
                "(or name another variable with `--api-key-env`)"
            )
        return key or None

    def public_dict(self) -> dict[str, Any]:
        """For manifest.json: every setting, the key variable's *name* only, never a value."""
        out = dataclasses.asdict(self)
        out["base_urls"] = list(self.base_urls)
        return out


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

    def refused(self, i: int) -> None:
        self._refusals[i] += 1
        cool = min(_MAX_DOWN_S, _DOWN_S * 2.0 ** (self._refusals[i] - 1))
        self._down_until[i] = self._clock() + cool

    def answered(self, i: int) -> None:
        self._refusals[i] = 0
        self._down_until[i] = 0.0


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
        # At most `concurrency` requests in flight, however many callers wait: a server is
        # picked only when a slot is free, so the choice sees the fleet as it is now.
        self._slots = asyncio.Semaphore(cfg.concurrency)
        self._request_headers = self._headers()

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

    async def call(self, method: str, url: str, **kwargs: Any) -> bytes:
        """One API call besides completions (the batch endpoints), with the same key, retries
        and backoff: the body of a 2xx answer, or RequestFailed / AuthFailed."""
        import aiohttp

        cfg = self.cfg
        headers = {**self._request_headers, **kwargs.pop("headers", {})}
        data = kwargs.pop("data", None)  # a callable makes a fresh body per attempt
        reason = "no attempt made"
        for attempt in range(cfg.max_retries + 1):
            wait = None
            sent = data() if callable(data) else data
            try:
                async with self._session.request(
                    method, url, headers=headers, data=sent, **kwargs
                ) as r:
                    answer = await r.read()
                    if r.status < 300:
                        return answer
                    reason = self._fail_or_reason(r.status, answer.decode("utf-8", "replace"))
                    wait = retry_after_seconds(r.headers)
            except (aiohttp.ClientError, asyncio.TimeoutError) as err:
                reason = type(err).__name__
            if attempt < cfg.max_retries:
                await asyncio.sleep(backoff_delay(attempt, cfg.backoff) if wait is None else wait)
        raise RequestFailed(f"{method} {url}: gave up after {cfg.max_retries + 1} tries: {reason}")

    async def complete(self, prompt: str, *, reference: str | None = None) -> Completion:
        if self._session is None:
            raise RuntimeError(f"use the {self.cfg.kind} teacher inside `async with`")
        cfg = self.cfg
        payload = self.payload(prompt)
        estimate = len(prompt) // 4 + cfg.max_tokens  # what TPM limits charge up front
        reason, server = "no attempt made", None
        for attempt in range(cfg.max_retries + 1):
            async with self._slots:
                server = self.fleet.pick(avoid=server)
                done, reason, wait, limited = await self._attempt(server, payload, estimate)
            if done is not None:
                return done
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
        raise RequestFailed(f"gave up after {cfg.max_retries + 1} attempts; last: {reason}")

    async def _attempt(
        self, server: int, payload: dict[str, Any], estimate: int
    ) -> tuple[Completion | None, str, float | None, bool]:
        """One request: (answer, "", None, False), or (None, why it failed, the server's
        retry-after or None, whether the account is rate limited). Raises for answers that
        retrying cannot fix."""
        import aiohttp

        charged = await self.limiter.acquire(estimate) if self.limiter.active else 0
        url = self.fleet.urls[server] + self.path
        self.stats["attempts"] += 1
        self.fleet.in_flight[server] += 1
        self.fleet.sent[server] += 1
        try:
            async with self._session.post(url, json=payload, headers=self._request_headers) as r:
                text = (await r.read()).decode("utf-8", errors="replace")  # JSON is UTF-8
                self.limiter.observe(r.headers)
                status, headers = r.status, r.headers
        except aiohttp.ClientConnectorError as err:
            self.fleet.refused(server)
            reason = f"cannot connect to {self.fleet.urls[server]} ({type(err).__name__})"
            return None, reason, None, False
        except (aiohttp.ClientError, asyncio.TimeoutError) as err:
            reason = type(err).__name__ + (f": {err}" if str(err) else "")
            return None, redact(reason, self._key), None, False
        finally:
            self.fleet.in_flight[server] -= 1
        self.fleet.answered(server)
        if status == 200:
            try:
                done = self.parse(json.loads(text))
            except (ValueError, KeyError, TypeError, IndexError, AttributeError):
                return None, "malformed response body", None, False
            self.limiter.settle(charged, done.prompt_tokens + done.completion_tokens)
            return done, "", None, False
        reason = self._fail_or_reason(status, text)
        return None, reason, retry_after_seconds(headers), status in (429, 529)

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
            raise RequestFailed(reason)
        return reason


def _openai_completion(body: dict[str, Any], text_of) -> Completion:
    """The first choice of an OpenAI-format body; `text_of(choice)` differs by endpoint."""
    choice = body["choices"][0]
    usage = body.get("usage") or {}
    return Completion(
        str(text_of(choice)),
        str(choice.get("finish_reason") or "unknown"),
        int(usage.get("prompt_tokens") or 0),
        int(usage.get("completion_tokens") or 0),
    )


class OpenAIChatTeacher(_HttpTeacher):
    """/v1/chat/completions: the first half is the user message, with no instruction."""

    path = "/chat/completions"

    def payload(self, prompt: str) -> dict[str, Any]:
        messages = [{"role": "user", "content": prompt}]
        system = self.cfg.effective_system_prompt
        if system:
            messages.insert(0, {"role": "system", "content": system})
        return {
            "model": self.cfg.model,
            "messages": messages,
            "temperature": self.cfg.temperature,
            "max_tokens": self.cfg.max_tokens,
        }

    def parse(self, body: dict[str, Any]) -> Completion:
        return _openai_completion(body, lambda choice: choice["message"].get("content") or "")


class OpenAICompletionsTeacher(_HttpTeacher):
    """/v1/completions: raw text in, raw text out (what a base model wants)."""

    path = "/completions"

    def payload(self, prompt: str) -> dict[str, Any]:
        return {
            "model": self.cfg.model,
            "prompt": prompt,
            "temperature": self.cfg.temperature,
            "max_tokens": self.cfg.max_tokens,
        }

    def parse(self, body: dict[str, Any]) -> Completion:
        return _openai_completion(body, lambda choice: choice["text"])


class AnthropicTeacher(_HttpTeacher):
    """/v1/messages with `x-api-key` and `anthropic-version`; stop reasons mapped to OpenAI's."""

    path = "/messages"
    _STOP = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length"}

    def _headers(self) -> dict[str, str]:
        headers = {"anthropic-version": ANTHROPIC_VERSION}
        if self._key:
            headers["x-api-key"] = self._key
        return headers

    def payload(self, prompt: str) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "model": self.cfg.model,
            "max_tokens": self.cfg.max_tokens,
            "temperature": self.cfg.temperature,
            "messages": [{"role": "user", "content": prompt}],
        }
        system = self.cfg.effective_system_prompt
        if system:
            payload["system"] = system
        return payload

    def parse(self, body: dict[str, Any]) -> Completion:
        if body.get("type") == "error":
            raise ValueError("error body with status 200")
        text = "".join(b["text"] for b in body["content"] if b.get("type") == "text")
        usage = body.get("usage") or {}
        stop = str(body.get("stop_reason") or "unknown")
        return Completion(
            text,
            self._STOP.get(stop, stop),
            int(usage.get("input_tokens") or 0),
            int(usage.get("output_tokens") or 0),
        )


def make_teacher(cfg: TeacherConfig) -> Teacher:
    """The teacher `cfg` describes; use it as `async with make_teacher(cfg) as teacher:`."""
    if cfg.kind == "hf":
        from data_gen.hf_teacher import HFTeacher  # imports torch only when asked for

        return HFTeacher(cfg)
    teachers = {
        "original": OriginalTeacher,
        "openai": OpenAIChatTeacher,
        "openai-completions": OpenAICompletionsTeacher,
        "anthropic": AnthropicTeacher,
    }
    return teachers[cfg.kind](cfg)
