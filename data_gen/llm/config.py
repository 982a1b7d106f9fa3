"""`TeacherConfig`: how to reach an LLM (the teacher of `nif gen`, the judge of `nif filter`
and `nif eval`), and the constants its checks need.

Kept apart from the clients so a config (and the CLI flags derived from it) can be built
without importing the HTTP engine. API keys are never stored here: `api_key()` reads the
variable named by `--api-key-env` when a client is made.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from data_gen.llm.retry import redact_url
from data_gen.schema import option

KINDS = ("original", "openai", "openai-completions", "anthropic", "hf")
BATCH_KINDS = ("openai", "openai-completions", "anthropic")  # have a provider batch API

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


Kind = Literal["original", "openai", "openai-completions", "anthropic", "hf"]


@dataclass
class TeacherConfig:
    """How to reach an LLM. Each field is a `nif gen` flag (the judge's are prefixed `judge-`)."""

    kind: Kind = option("original", flag="teacher")
    """Who answers: original (the true continuation, no LLM) | openai | openai-completions |
    anthropic | hf (a local model)."""
    model: str | None = option(None, shown="none; every teacher but `original` needs one")
    """API model name, or a HF hub id / local folder for `hf`."""
    base_urls: tuple[str, ...] = option(
        (),
        flag="base_url",
        shown="the provider's: https://api.openai.com/v1 (openai), http://localhost:8000/v1 "
        "(openai-completions), https://api.anthropic.com/v1 (anthropic)",
    )
    """API root such as http://host:8000/v1; repeat to spread the load over a fleet. Redirects
    are never followed; a user:password@ or ?key= in it is masked wherever it is written."""
    api_key_env: str | None = option(
        None, shown="OPENAI_API_KEY (openai, openai-completions), ANTHROPIC_API_KEY (anthropic)"
    )
    """NAME of the environment variable holding the key (never the key itself)."""
    temperature: float = 0.0
    """Sampling temperature; the paper: 0."""
    max_tokens: int = 1024
    """Reply length cap in tokens; also bounds what the server may send back: a body of at most
    max(4 MiB, 256 bytes per token), a completion of at most max(1024, 16 per token) characters."""
    system_prompt: str | None = option(None, shown="none; the paper's for `anthropic`")
    """System prompt; "" for none."""
    concurrency: int = 16
    """Requests in flight (the most: a request past --timeout halves it for a while); the batch
    size for `hf`."""
    rpm: float | None = option(None, shown="no limit")
    """Requests-per-minute budget."""
    tpm: float | None = option(None, shown="no limit")
    """Tokens-per-minute budget; prompt chars / 4 + max_tokens charged up front."""
    max_retries: int = 6
    """Retries per request before it counts as failed."""
    timeout: float = 120.0
    """Seconds per request, the whole exchange (the answer's body included)."""
    backoff: float = 1.0
    """First retry delay in seconds, doubled per attempt, with full jitter."""
    batch: bool = False
    """Send through the provider's batch API (openai, openai-completions, anthropic): half the
    price, answers within 24 h; waits for them (stop any time: the same command collects them)."""
    batch_size: int = 10_000
    """Requests per provider batch (OpenAI takes 50k, Anthropic 100k)."""
    poll_seconds: float = 60.0
    """Seconds between status checks of a pending batch."""
    batch_wait: bool = option(True, flag="wait")
    """Wait for the batches to end; --no-wait: send, collect what has ended, exit (3)."""

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
                shown = redact_url(url)
                raise ValueError(f"`--base-url` must start with http:// or https://, got {shown!r}")
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
        check_batch_urls(self)

    def check_inputs(self) -> list[str]:
        """The key's variable is set where one is needed (read now, never stored)."""
        if self.api_key_env is not None and self.api_key_env not in os.environ:
            return [f"`--api-key-env {self.api_key_env}`: that environment variable is not set"]
        try:
            key = self.api_key()
        except ValueError as err:
            return [str(err)]
        userinfo = any(urlsplit(url).username is not None for url in self.base_urls)
        if key and userinfo and self.kind != "anthropic":
            # Both would be the Authorization header (Bearer key, Basic user:password).
            return [
                f"`--base-url` holds a user:password@ and ${self.key_env} holds a key: both "
                "would be sent as the Authorization header; keep one of them"
            ]
        return []

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
        """For manifest.json: every setting, the key variable's *name* only, never a value, and
        base URLs with any credentials in them masked (`redact_url`)."""
        out = dataclasses.asdict(self)
        out["base_urls"] = [redact_url(url) for url in self.base_urls]
        return out

    def __repr__(self) -> str:
        shown = {**self.public_dict(), "base_urls": tuple(redact_url(u) for u in self.base_urls)}
        fields = ", ".join(f"{k}={v!r}" for k, v in shown.items())
        return f"{type(self).__name__}({fields})"


def check_batch_urls(cfg: TeacherConfig, *, batch: bool | None = None) -> None:
    """Refuse batch mode with several `--base-url`s: a provider batch is uploaded to, polled at
    and read from one API root, so it cannot be spread over a fleet, and using the first server
    alone would silently drop the rest. Pure (a value check); `batch` defaults to `cfg.batch`,
    so this is a no-op for a live config. `TeacherConfig` refuses such a config when built (same
    message); this runs again when batches start (the HTTP clients' `batch_url`), so a config
    made any other way cannot slip through."""
    batch = cfg.batch if batch is None else batch
    if batch and len(cfg.base_urls) > 1:
        raise ValueError(
            "`--batch` talks to one provider endpoint: give at most one `--base-url` "
            f"(got {len(cfg.base_urls)})"
        )
