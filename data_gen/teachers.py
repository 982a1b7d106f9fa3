"""Teacher clients: who continues the first half, and how to survive doing it 80,000 times.

One interface, `await teacher.complete(prompt, reference=...) -> Completion`, over:

    original            no teacher: the true continuation (the paper's OpenWebText baseline)
    openai              /v1/chat/completions (OpenAI, or any compatible server via --base-url)
    openai-completions  /v1/completions, raw text in and out (base-model servers such as vLLM)
    anthropic           /v1/messages, with the paper's system prompt by default
    hf                  a local transformers model, batched greedy generation

The HTTP teachers own the robustness (DESIGN.md, "Teacher APIs"): bounded retries with
exponential backoff and full jitter; `retry-after-ms` / `retry-after` honoured; an RPM/TPM limiter
that also pauses when the rate-limit headers say the window is used up; 529 overloaded backs off;
malformed bodies, dropped connections and timeouts are retried; a spend-limit or bad-key answer
raises `RunStopped` (retrying cannot help, and every other request would fail the same way);
any other 4xx fails just that document (`RequestFailed`). A `length` continuation is a valid
answer and is returned with its finish reason, never retried. Several `--base-url`s spread the
requests round-robin over a fleet, and a retry goes to the next server.

API keys are read from the environment variable named by `--api-key-env`; the key's value is
never logged, written or put into an error message.
"""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import json
import os
import random
import re
import time
from dataclasses import dataclass
from typing import Any

KINDS = ("original", "openai", "openai-completions", "anthropic", "hf")

# The system prompt the paper gave Claude teachers (OpenAI teachers got none).
PAPER_SYSTEM_PROMPT = (
    "Please continue directly from the end of the given sentence without repeating it"
)

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
_RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504, 520, 522, 524, 529}
_SPEND_LIMIT = re.compile(
    r"insufficient_quota|exceeded your current quota|spend(ing)? limit|credit balance|billing",
    re.IGNORECASE,
)


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
    """The API rejected the key (401/403)."""


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
    """System prompt; `anthropic` defaults to the paper's (`--system-prompt`)."""
    concurrency: int = 16
    """Requests in flight; the batch size for `hf` (`--concurrency`)."""
    rpm: float | None = None
    """Requests-per-minute budget (`--rpm`)."""
    tpm: float | None = None
    """Tokens-per-minute budget, prompt + max_tokens estimated per request (`--tpm`)."""
    max_retries: int = 6
    """Retries per document before it goes to failures.jsonl (`--max-retries`)."""
    timeout: float = 120.0
    """Seconds per request (`--timeout`)."""
    backoff: float = 1.0
    """First retry delay in seconds, doubled per attempt, with full jitter (`--backoff`)."""

    def __post_init__(self) -> None:
        self.base_urls = tuple(self.base_urls)
        if self.kind not in KINDS:
            raise ValueError(f"`--teacher` must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.kind not in ("original",) and not self.model:
            raise ValueError(f"`--teacher {self.kind}` needs `--model`")
        if self.kind in ("original", "hf") and self.base_urls:
            raise ValueError(f"`--base-url` does not apply to `--teacher {self.kind}`")
        for url in self.base_urls:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"`--base-url` must start with http:// or https://, got {url!r}")
        checks = [
            (self.temperature >= 0, "`--temperature` must be >= 0"),
            (self.max_tokens >= 1, "`--max-tokens` must be >= 1"),
            (self.concurrency >= 1, "`--concurrency` must be >= 1"),
            (self.rpm is None or self.rpm > 0, "`--rpm` must be > 0"),
            (self.tpm is None or self.tpm > 0, "`--tpm` must be > 0"),
            (self.max_retries >= 0, "`--max-retries` must be >= 0"),
            (self.timeout > 0, "`--timeout` must be > 0"),
            (self.backoff >= 0, "`--backoff` must be >= 0"),
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
    def effective_system_prompt(self) -> str | None:
        if self.system_prompt is not None:
            return self.system_prompt or None  # "" switches the default off
        return PAPER_SYSTEM_PROMPT if self.kind == "anthropic" else None

    def api_key(self) -> str | None:
        """The key's value, read now from the environment (never stored in the config)."""
        name = self.api_key_env or _DEFAULT_KEY_ENV.get(self.kind)
        key = os.environ.get(name) if name else None
        if key is None and self.kind in _DEFAULT_URL and not self.base_urls:
            # The public APIs need a key; local servers (vLLM, Ollama) usually do not.
            raise ValueError(
                f"`--teacher {self.kind}` on its public API needs a key in ${name} "
                "(or name another variable with `--api-key-env`)"
            )
        return key

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

    async def __aenter__(self) -> Teacher:
        return self

    async def __aexit__(self, *exc) -> None:
        return None

    async def complete(self, prompt: str, *, reference: str | None = None) -> Completion:
        raise NotImplementedError


class OriginalTeacher(Teacher):
    """No teacher: the document's true continuation (no API, so no token counts)."""

    name = "original"

    async def complete(self, prompt: str, *, reference: str | None = None) -> Completion:
        if reference is None:
            raise RequestFailed("the `original` teacher needs the reference continuation")
        return Completion(reference, "original", 0, 0)


class RateLimiter:
    """Token buckets for requests and tokens per minute, plus a shared pause that the rate-limit
    headers and 429s set, so all workers back off together instead of hammering a closed window."""

    def __init__(self, rpm: float | None, tpm: float | None) -> None:
        self.rpm, self.tpm = rpm, tpm
        # Buckets hold one second of budget: a steady rate, not a minute's worth in one burst
        # (the APIs enforce their per-minute limits over shorter windows).
        self._request_cap = max(1.0, rpm / 60) if rpm else 0.0
        self._token_cap = tpm / 60 if tpm else 0.0
        self._requests = self._request_cap
        self._tokens = self._token_cap
        self._updated = time.monotonic()
        self._paused_until = 0.0
        self._lock = asyncio.Lock()

    def pause(self, seconds: float) -> None:
        self._paused_until = max(self._paused_until, time.monotonic() + seconds)

    async def acquire(self, tokens: int) -> None:
        async with self._lock:  # one waiter at a time keeps the order fair
            while True:
                now = time.monotonic()
                if now < self._paused_until:
                    await asyncio.sleep(self._paused_until - now)
                    continue
                elapsed, self._updated = now - self._updated, now
                if self.rpm:
                    self._requests = min(
                        self._request_cap, self._requests + elapsed * self.rpm / 60
                    )
                need_tokens = 0.0
                if self.tpm:
                    # A request bigger than a second's budget waits for a full bucket, then goes.
                    need_tokens = min(tokens, max(self._token_cap, 1.0))
                    cap = max(self._token_cap, need_tokens)
                    self._tokens = min(cap, self._tokens + elapsed * self.tpm / 60)
                wait = 0.0
                if self.rpm and self._requests < 1:
                    wait = (1 - self._requests) * 60 / self.rpm
                if self.tpm and self._tokens < need_tokens:
                    wait = max(wait, (need_tokens - self._tokens) * 60 / self.tpm)
                if wait <= 0:
                    self._requests -= 1 if self.rpm else 0
                    self._tokens -= need_tokens
                    return
                await asyncio.sleep(wait)


def retry_after_seconds(headers) -> float | None:
    """`retry-after-ms`, then `retry-after` (seconds or an HTTP date), as the APIs send them."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")


def parse_reset(value: str) -> float | None:
    """OpenAI's reset durations ("6m0s", "1.5s", "20ms") or Anthropic's RFC 3339 times."""
    parts = _DURATION.findall(value)
    if parts and "".join(n + u for n, u in parts) == value.strip():
        scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
        return sum(float(n) * scale[u] for n, u in parts)
    try:
        from datetime import datetime

        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
        return max(0.0, when.timestamp() - time.time())
    except ValueError:
        return None


class _HttpTeacher(Teacher):
    """Shared retry/limit/fleet logic; subclasses build the payload and parse the answer."""

    path = ""

    def __init__(self, cfg: TeacherConfig) -> None:
        super().__init__(cfg)
        self.name = f"{cfg.kind}:{cfg.model}"
        self._key = cfg.api_key()
        self._limiter = RateLimiter(cfg.rpm, cfg.tpm)
        self._next_url = 0
        self._session = None

    async def __aenter__(self) -> _HttpTeacher:
        import aiohttp

        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.cfg.concurrency + 4)
        )
        return self

    async def __aexit__(self, *exc) -> None:
        if self._session is not None:
            await self._session.close()

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._key}"} if self._key else {}

    def _payload(self, prompt: str) -> dict[str, Any]:
        raise NotImplementedError

    def _parse(self, body: dict[str, Any]) -> Completion:
        raise NotImplementedError

    def _follow_headers(self, headers) -> None:
        """Pause everyone when a rate-limit window is exhausted, until it resets."""
        for kind in ("requests", "tokens"):
            for remaining, reset in (
                (f"x-ratelimit-remaining-{kind}", f"x-ratelimit-reset-{kind}"),
                (f"anthropic-ratelimit-{kind}-remaining", f"anthropic-ratelimit-{kind}-reset"),
            ):
                left = headers.get(remaining)
                if left is not None and left.strip() in ("0", "0.0") and headers.get(reset):
                    seconds = parse_reset(headers[reset])
                    if seconds:
                        self._limiter.pause(seconds)

    def _backoff(self, attempt: int) -> float:
        return random.uniform(0, min(60.0, self.cfg.backoff * 2**attempt))

    async def complete(self, prompt: str, *, reference: str | None = None) -> Completion:
        import aiohttp

        cfg = self.cfg
        payload = self._payload(prompt)
        estimate = len(prompt) // 4 + cfg.max_tokens  # what TPM limits charge up front
        timeout = aiohttp.ClientTimeout(total=cfg.timeout)
        reason = "no attempt made"
        for attempt in range(cfg.max_retries + 1):
            url = cfg.urls[self._next_url % len(cfg.urls)].rstrip("/") + self.path
            self._next_url += 1
            await self._limiter.acquire(estimate)
            delay = self._backoff(attempt)
            try:
                async with self._session.post(
                    url, json=payload, headers=self._headers(), timeout=timeout
                ) as resp:
                    text = await resp.text()
                    self._follow_headers(resp.headers)
                    if resp.status == 200:
                        try:
                            return self._parse(json.loads(text))
                        except (ValueError, KeyError, TypeError, IndexError):
                            reason = "malformed response body"
                    else:
                        reason = f"HTTP {resp.status}: {_error_message(text)}"
                        if resp.status in (400, 402, 403, 429) and _SPEND_LIMIT.search(text):
                            raise SpendLimitReached(reason)
                        if resp.status in (401, 403):
                            raise AuthFailed(f"{reason} (check the key's environment variable)")
                        if resp.status not in _RETRY_STATUS:
                            raise RequestFailed(reason)
                        after = retry_after_seconds(resp.headers)
                        if after is not None:
                            delay = after
                        if resp.status in (429, 529):  # the whole account is limited
                            self._limiter.pause(delay)
            except (aiohttp.ClientError, asyncio.TimeoutError) as err:
                reason = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
            if attempt < cfg.max_retries:
                await asyncio.sleep(delay)
        raise RequestFailed(f"gave up after {cfg.max_retries + 1} attempts; last: {reason}")


def _error_message(text: str) -> str:
    """The API's own error message, short; the raw body when it is not the usual JSON."""
    try:
        err = json.loads(text).get("error")
        message = err.get("message") if isinstance(err, dict) else err
    except (ValueError, AttributeError):
        message = None
    return str(message or text or "(empty body)").strip()[:200]


class OpenAIChatTeacher(_HttpTeacher):
    path = "/chat/completions"

    def _payload(self, prompt: str) -> dict[str, Any]:
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

    def _parse(self, body: dict[str, Any]) -> Completion:
        choice = body["choices"][0]
        usage = body.get("usage") or {}
        return Completion(
            str(choice["message"]["content"] or ""),
            str(choice.get("finish_reason") or "unknown"),
            int(usage.get("prompt_tokens") or 0),
            int(usage.get("completion_tokens") or 0),
        )


class OpenAICompletionsTeacher(_HttpTeacher):
    path = "/completions"

    def _payload(self, prompt: str) -> dict[str, Any]:
        return {
            "model": self.cfg.model,
            "prompt": prompt,
            "temperature": self.cfg.temperature,
            "max_tokens": self.cfg.max_tokens,
        }

    def _parse(self, body: dict[str, Any]) -> Completion:
        choice = body["choices"][0]
        usage = body.get("usage") or {}
        return Completion(
            str(choice["text"]),
            str(choice.get("finish_reason") or "unknown"),
            int(usage.get("prompt_tokens") or 0),
            int(usage.get("completion_tokens") or 0),
        )


class AnthropicTeacher(_HttpTeacher):
    path = "/messages"
    _STOP = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length"}

    def _headers(self) -> dict[str, str]:
        headers = {"anthropic-version": "2023-06-01"}
        if self._key:
            headers["x-api-key"] = self._key
        return headers

    def _payload(self, prompt: str) -> dict[str, Any]:
        payload = {
            "model": self.cfg.model,
            "max_tokens": self.cfg.max_tokens,
            "temperature": self.cfg.temperature,
            "messages": [{"role": "user", "content": prompt}],
        }
        system = self.cfg.effective_system_prompt
        if system:
            payload["system"] = system
        return payload

    def _parse(self, body: dict[str, Any]) -> Completion:
        text = "".join(b["text"] for b in body["content"] if b.get("type") == "text")
        usage = body.get("usage") or {}
        stop = str(body.get("stop_reason") or "unknown")
        return Completion(
            text,
            self._STOP.get(stop, stop),
            int(usage.get("input_tokens") or 0),
            int(usage.get("output_tokens") or 0),
        )


class HFTeacher(Teacher):
    """A local transformers model. Concurrent `complete()` calls are gathered into batches of up
    to `--concurrency` prompts, left-padded, and generated in a worker thread (greedy at
    temperature 0), so the event loop keeps writing shards meanwhile."""

    def __init__(self, cfg: TeacherConfig) -> None:
        super().__init__(cfg)
        self.name = f"hf:{cfg.model}"
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None

    async def __aenter__(self) -> HFTeacher:
        self._model, self._tok = await asyncio.to_thread(self._load)
        self._queue = asyncio.Queue()
        self._worker = asyncio.create_task(self._run_batches())
        return self

    async def __aexit__(self, *exc) -> None:
        if self._worker is not None:
            self._worker.cancel()

    def _load(self):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(self.cfg.model)
        tok.padding_side = "left"  # generation appends on the right
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        dtype = torch.float16 if torch.cuda.is_available() else torch.float32
        model = AutoModelForCausalLM.from_pretrained(self.cfg.model, dtype=dtype)
        model.to("cuda" if torch.cuda.is_available() else "cpu").eval()
        return model, tok

    async def complete(self, prompt: str, *, reference: str | None = None) -> Completion:
        future = asyncio.get_running_loop().create_future()
        await self._queue.put((prompt, future))
        return await future

    async def _run_batches(self) -> None:
        while True:
            batch = [await self._queue.get()]
            await asyncio.sleep(0.01)  # let the other workers' prompts arrive
            while len(batch) < self.cfg.concurrency and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                results = await asyncio.to_thread(self._generate, [p for p, _ in batch])
            except Exception as err:  # noqa: BLE001 - reported per document
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(RequestFailed(f"generation failed: {err}"))
                continue
            for (_, fut), result in zip(batch, results, strict=True):
                if not fut.done():
                    fut.set_result(result)

    def _generate(self, prompts: list[str]) -> list[Completion]:
        import torch

        tok, model = self._tok, self._model
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        enc = enc.to(model.device)
        sampling = self.cfg.temperature > 0
        with torch.no_grad():
            out = model.generate(
                **enc,
                max_new_tokens=self.cfg.max_tokens,
                do_sample=sampling,
                temperature=self.cfg.temperature if sampling else None,
                pad_token_id=tok.pad_token_id,
            )
        new = out[:, enc.input_ids.shape[1] :].tolist()
        results = []
        for row, mask in zip(new, enc.attention_mask.tolist(), strict=True):
            stopped = tok.eos_token_id in row
            ids = row[: row.index(tok.eos_token_id)] if stopped else row
            results.append(
                Completion(
                    tok.decode(ids, skip_special_tokens=True),
                    "stop" if stopped else "length",
                    int(sum(mask)),
                    len(ids),
                )
            )
        return results


_TEACHERS = {
    "original": OriginalTeacher,
    "openai": OpenAIChatTeacher,
    "openai-completions": OpenAICompletionsTeacher,
    "anthropic": AnthropicTeacher,
    "hf": HFTeacher,
}


def make_teacher(cfg: TeacherConfig) -> Teacher:
    return _TEACHERS[cfg.kind](cfg)
