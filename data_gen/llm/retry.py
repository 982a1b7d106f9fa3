"""What an API's error answer means for the next attempt: retry, wait how long, or give up.

Pure functions over status codes, headers and bodies, so the policy can be tested without a
server. The rules follow the providers' documentation (DESIGN.md, "Teacher APIs"):

- 408 / 409 / 425 / 429 / 5xx / 529 (Anthropic overloaded) are transient: retry with exponential
  backoff and *full* jitter (uniform in [0, base * 2**attempt]) so that hundreds of workers hit by
  the same outage do not come back in lock-step;
- a server's own `retry-after-ms`, then `retry-after` (seconds or an HTTP date), wins over the
  computed backoff;
- a 429 that says the quota / spend / credit limit is used up is *not* transient: every further
  request would fail the same way, so the caller stops the run at once;
- other 4xx (400 context too long, 404 model not found, 422) fail this document only.
"""

from __future__ import annotations

import email.utils
import json
import random
import re
import time
from collections.abc import Callable, Mapping
from datetime import datetime

RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 520, 522, 524, 529})
AUTH_STATUS = frozenset({401, 403})
# The longest single wait the client accepts from backoff; a server's retry-after may be longer.
MAX_BACKOFF_S = 60.0

# OpenAI: code `insufficient_quota`, "You exceeded your current quota"; Anthropic: "You have
# reached your specified API usage limits" / "spend limit" / "credit balance is too low".
_SPEND_LIMIT = re.compile(
    r"insufficient_quota|exceeded your current quota|spend(ing)? limit|credit balance|"
    r"billing|usage limits?",
    re.IGNORECASE,
)
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_DURATION_SCALE = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
# Key-looking tokens an API may echo back ("Incorrect API key provided: sk-ab***yz").
_KEYLIKE = re.compile(r"\b(sk-(?:ant-)?|key-)[A-Za-z0-9_\-*.]{3,}")
# Credentials a URL may carry: userinfo (`http://user:pass@host`) and the query (`?key=...`).
_URL = re.compile(r"\b([a-z][a-z0-9+.-]*://)([^\s/?#@]*@)?([^\s?#]*)(\?[^\s#\"'<>]*)?", re.I)


def is_retryable(status: int) -> bool:
    return status in RETRY_STATUS or 500 <= status < 600


def is_spend_limit(status: int, body: str) -> bool:
    """A quota / spend / billing answer: retrying cannot help until a human raises the limit."""
    return status in (400, 402, 403, 429) and bool(_SPEND_LIMIT.search(body))


def backoff_delay(
    attempt: int, base: float, *, cap: float = MAX_BACKOFF_S, rng: random.Random | None = None
) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2**attempt)] (attempt 0 = first retry)."""
    ceiling = min(cap, base * 2.0 ** min(attempt, 30))
    return (rng or random).uniform(0.0, ceiling)


def retry_after_seconds(
    headers: Mapping[str, str], *, now: Callable[[], float] = time.time
) -> float | None:
    """`retry-after-ms`, then `retry-after` (seconds or an HTTP date); None when neither parses."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000.0)
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
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - now())


def parse_reset(value: str, *, now: Callable[[], float] = time.time) -> float | None:
    """Seconds until a rate-limit window resets.

    OpenAI sends durations ("6m0s", "1.5s", "20ms", "1h2m3s"); Anthropic sends RFC 3339 times
    ("2026-11-24T23:00:05Z"); some servers send plain seconds ("2").
    """
    text = value.strip()
    parts = _DURATION.findall(text)
    if parts and "".join(n + u for n, u in parts) == text:
        return sum(float(n) * _DURATION_SCALE[u] for n, u in parts)
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        return None  # a naive time is ambiguous; better no pause than a wrong one
    return max(0.0, when.timestamp() - now())


# The most characters of a server's error text kept in a message (and in failures.jsonl).
ERROR_TEXT_CHARS = 300
_TAG = re.compile(r"<(script|style)\b.*?</\1\s*>|<[^>]*>", re.IGNORECASE | re.DOTALL)


def error_message(body: str, *, secret: str | None = None) -> str:
    """The server's own error text, on one line, at most `ERROR_TEXT_CHARS` characters, with
    the key and anything key-like masked. Reads the shapes servers send: OpenAI's and
    Anthropic's `{"error": {"message"}}`, vLLM's `{"message"}`, FastAPI's `{"detail"}`, a bare
    `{"error": "..."}`; else the body itself (an HTML page reduced to its text)."""
    message = None
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict):
            message = err.get("message") or err.get("detail")
        elif isinstance(err, str):
            message = err
        message = message or data.get("message") or data.get("detail")
        if message is not None and not isinstance(message, str):
            message = json.dumps(message)  # FastAPI's validation errors are a list
    if not message:
        message = _TAG.sub(" ", body) if "<" in body else body
    text = " ".join(redact(str(message), secret).split()) or "(empty body)"
    if len(text) > ERROR_TEXT_CHARS:
        text = text[: ERROR_TEXT_CHARS - 3] + "..."
    return text


def redact(text: str, secret: str | None) -> str:
    """Mask the key itself, anything that looks like one (APIs echo key prefixes back), and the
    credentials of any URL in `text` (`redact_url`)."""
    if secret:
        text = text.replace(secret, "***")
    return _KEYLIKE.sub(lambda m: m.group(1) + "***", redact_url(text))


def redact_url(text: str) -> str:
    """`text` with every URL's userinfo and query values masked, e.g.
    `http://u:p@host/v1?key=abc` -> `http://***@host/v1?key=***`: a `--base-url` may carry a
    key, and it is written to manifests and printed in messages."""
    return _URL.sub(_redact_one_url, text)


def _redact_one_url(m: re.Match) -> str:
    scheme, userinfo, rest, query = m.groups()
    if query:
        params = (p.split("=", 1)[0] + "=***" if "=" in p else "***" for p in query[1:].split("&"))
        query = "?" + "&".join(params)
    return scheme + ("***@" if userinfo else "") + rest + (query or "")
