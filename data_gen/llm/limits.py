"""What a teacher or judge server may send back, and where it may send us: the limits that keep
a broken or hostile endpoint from exhausting memory or collecting the API key.

A base URL is trusted with the key; nothing it answers is. So:

- **No redirect is followed** (live requests and every batch call, every provider): a 3xx is a
  failed request, not retried, whose message names the Location's host:port. Following one
  would send the request (Anthropic's `x-api-key` survives a cross-host redirect) to wherever
  the server points, and store that host's answer as the completion. An Anthropic batch's
  `results_url` must be on the base URL's origin for the same reason.
- **Bodies are read up to a cap**, in pieces, so an endless or huge body fails at the cap with
  memory flat. One answer (a live completion, or any batch call but the results download) may
  be `body_cap(max_tokens)` = max(4 MiB, 256 bytes per `max_tokens` token) long: 4 MiB at the
  default 1024 tokens; 256 bytes a token is far above any real answer (about 4 characters a
  token, JSON-escaped, with metadata). A batch results file holds up to `batch_size` answers:
  `results_cap` = max(4 MiB, batch_size x 256 bytes x max_tokens).
- **A completion far longer than `max_tokens` allows** (more than 16 characters a token, and at
  least 1024 characters) means the server ignored the limit: that document fails instead of a
  row being stored.
- The client's `timeout` (aiohttp `ClientTimeout(total=...)`) bounds the whole exchange, body
  included, so a body trickled one byte at a time fails when it runs out.
Past any of these the request fails with `RequestFailed` at once (the same server would do the
same again); the next run retries the document.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urljoin, urlsplit

from data_gen.llm.errors import RequestFailed
from data_gen.llm.retry import redact_url

MIN_BODY_BYTES = 4 * 2**20  # the floor of every cap: a few MB
BYTES_PER_TOKEN = 256  # a generous bound on one token's share of a JSON answer
CHARS_PER_TOKEN = 16  # a completion longer than this per token ignored max_tokens
MIN_COMPLETION_CHARS = 1024  # so a small max_tokens (a judge's 16) leaves room for any token
_CHUNK = 64 * 1024


def body_cap(max_tokens: int) -> int:
    """The most bytes one answer may hold: max(4 MiB, 256 bytes x max_tokens)."""
    return max(MIN_BODY_BYTES, BYTES_PER_TOKEN * max_tokens)


def results_cap(max_tokens: int, *, batch_size: int) -> int:
    """The most bytes a batch results file may hold: `batch_size` answers."""
    return max(MIN_BODY_BYTES, batch_size * BYTES_PER_TOKEN * max_tokens)


def completion_char_cap(max_tokens: int) -> int:
    """The longest completion taken as an answer: max(1024, 16 characters x max_tokens)."""
    return max(MIN_COMPLETION_CHARS, CHARS_PER_TOKEN * max_tokens)


def too_long(text: str, max_tokens: int) -> str | None:
    """Why `text` is no answer to a request for at most `max_tokens` tokens, or None."""
    if len(text) <= completion_char_cap(max_tokens):
        return None
    return (
        f"the completion is {len(text)} characters for max_tokens {max_tokens} tokens: the "
        f"server ignored max_tokens (at most {completion_char_cap(max_tokens)} are taken)"
    )


def size(n: int) -> str:
    """Bytes as MiB (whole when exact): `4 MiB`, `2.5 MiB`."""
    mib = n / 2**20
    return f"{mib:.0f} MiB" if mib == int(mib) else f"{mib:.1f} MiB"


async def read_capped(response: Any, cap: int, what: str) -> bytes:
    """The body of an aiohttp `response`, read in pieces; RequestFailed past `cap` bytes
    (`what` says which cap, for the message)."""
    declared = response.content_length
    if declared is not None and declared > cap:
        raise RequestFailed(f"the server sent a body larger than {size(cap)} ({what})")
    body = bytearray()
    async for piece in response.content.iter_chunked(_CHUNK):
        body += piece
        if len(body) > cap:
            raise RequestFailed(f"the server sent a body larger than {size(cap)} ({what})")
    return bytes(body)


def origin(url: str) -> str:
    """host:port of an absolute URL (the scheme's port when none is written)."""
    parts = urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme, 0)
    return f"{parts.hostname}:{port}"


def redirect_refused(status: int, url: str, location: str | None) -> RequestFailed:
    """The failure for a 3xx answer to `url`: names where it pointed, never follows it."""
    if not location:
        where = "without a Location"
    else:
        target = urljoin(url, location)
        where = f"to {origin(target)}" if origin(target) != origin(url) else "on the same host"
        where += f" ({redact_url(target)[:200]})"
    return RequestFailed(
        f"HTTP {status}: a redirect {where} was not followed: teacher and judge endpoints never "
        "follow redirects (one could carry the API key to another host); give the final URL "
        "as the base URL"
    )


def check_same_origin(url: str, root: str) -> None:
    """Refuse `url` (named by a server's answer) unless it is on `root`'s origin, where the
    key may go."""
    if urlsplit(url).scheme != urlsplit(root).scheme or origin(url) != origin(root):
        raise RequestFailed(
            f"the server named a URL on another origin ({origin(url)}, base URL on "
            f"{origin(root)}): not requested, the API key goes only to the base URL's host"
        )
