"""Provider batch APIs: the same requests at half the price, answered within 24 hours.

`nif gen --batch` sends the documents still to do as OpenAI Batch jobs (`openai`,
`openai-completions`) or Anthropic Message Batches (`anthropic`), waits for them, and writes the
answers through the same shards as the live path, so "exactly once" holds as before.

Nothing finished is lost and nothing is paid for twice:
- every batch the provider accepts is recorded in `DIR/batches.json` (written atomically) with
  the document ids it carries, before anything else happens; a later run — after a kill, or the
  next day — collects it instead of sending those documents again;
- a finished batch's answers go into shards; documents it did not answer (expired, cancelled)
  are sent again in a new batch; documents it answered with an error go to `failures.jsonl`
  and are retried by the next run;
- a live run (without `--batch`) on a folder with batches still pending is refused.
The one gap: a kill in the instant between the provider accepting a batch and its record being
written leaves that batch unknown here, so its documents are sent again.

Custom ids are `doc-<k>`, the position in the batch (providers restrict their characters);
the record maps them back to document ids.

Every batch call goes to that API root only, as the live requests do (`limits.py`): no
redirect is followed, an Anthropic `results_url` on another origin is refused, each answer is
read up to one answer's cap, and a results file up to `results_cap` = max(4 MiB,
batch_size x 256 bytes x max_tokens); an answer far past max_tokens fails that document.

The client is reached through `BatchClient` (the HTTP clients implement it). A batch lives at
one API root, so batch mode refuses several `--base-url`s (`config.check_batch_urls`) instead
of quietly using the first.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from data_gen.llm.client import Completion, join_url
from data_gen.llm.config import TeacherConfig
from data_gen.llm.errors import RequestFailed
from data_gen.llm.limits import BYTES_PER_TOKEN, check_same_origin, results_cap
from data_gen.llm.retry import error_message, redact_url
from data_gen.store import parse_jsonl, write_json_atomic


@dataclass
class BatchRecord:
    id: str
    """The provider's batch id."""
    ids: list[str]
    """Document ids, in custom-id order (`doc-0`, `doc-1`, ...)."""
    status: str = "submitted"
    """The provider's status, as last seen."""
    collected: bool = False
    """Its answers are in the shards (or its failures recorded)."""


@dataclass
class BatchLedger:
    """`DIR/batches.json`: every batch the provider accepted for this folder."""

    path: Path
    batches: list[BatchRecord] = field(default_factory=list)

    @classmethod
    def load(cls, out: Path, name: str = "batches.json") -> BatchLedger:
        path = out / name
        if not path.is_file():
            return cls(path)
        raw = json.loads(path.read_text(encoding="utf-8"))
        return cls(path, [BatchRecord(**b) for b in raw["batches"]])

    def pending(self) -> list[BatchRecord]:
        return [b for b in self.batches if not b.collected]

    def in_flight(self) -> set[str]:
        return {i for b in self.pending() for i in b.ids}

    def save(self) -> None:
        write_json_atomic(self.path, {"batches": [asdict(b) for b in self.batches]})


@runtime_checkable
class BatchClient(Protocol):
    """What batch mode needs from a client: the HTTP clients of `wire.py` (openai,
    openai-completions, anthropic) implement it, with their live requests' wire format, key,
    retries and backoff."""

    cfg: TeacherConfig
    """`kind` picks the provider's batch API; `batch_size`, `batch_wait`, `poll_seconds`."""

    @property
    def batch_url(self) -> str:
        """The one API root (batch mode refuses several `--base-url`s: `check_batch_urls`)."""
        ...

    @property
    def batch_endpoint(self) -> str:
        """The live endpoint each batched request stands for, below the API root."""
        ...

    def batch_request(self, prompt: str) -> dict[str, Any]:
        """The body of the request for `prompt`."""
        ...

    def parse_batch_result(self, body: dict[str, Any]) -> Completion:
        """The completion in a successful answer's body; raises on a malformed one
        (RequestFailed, with its reason, for one far past max_tokens)."""
        ...

    async def call(self, method: str, url: str, **kwargs: Any) -> bytes:
        """One API call with the client's key and retries: a 2xx body, or RequestFailed.
        Never follows a redirect; reads at most `cap=(bytes, why)` (default: one answer's)."""
        ...


class _BatchApi:
    """One provider's batch endpoints, spoken through a live client's session and headers."""

    def __init__(self, client: BatchClient) -> None:
        self.client = client
        self.base = client.batch_url

    def url(self, path: str) -> str:
        """`path` below the API root (before any query the root carries)."""
        return join_url(self.base, path)

    async def download(self, url: str) -> bytes:
        """A results file, read up to `results_cap` (a batch holds `batch_size` answers)."""
        cfg = self.client.cfg
        cap = results_cap(cfg.max_tokens, batch_size=cfg.batch_size)
        why = (
            f"the cap for batch results: batch_size {cfg.batch_size} answers of "
            f"{BYTES_PER_TOKEN} bytes x max_tokens {cfg.max_tokens}, at least 4 MiB"
        )
        return await self.client.call("GET", url, cap=(cap, why))

    async def json(self, method: str, url: str, **kwargs) -> dict[str, Any]:
        try:
            return json.loads(await self.client.call(method, url, **kwargs))
        except ValueError:
            raise RequestFailed(f"{method} {redact_url(url)}: the answer is not JSON") from None

    # Subclasses: submit(lines) -> batch id; poll(id) -> (status, ended, the batch object);
    # results(batch object) -> [(custom_id, Completion | None, error | None)].


class OpenAIBatches(_BatchApi):
    """Upload a JSONL file of requests, create a batch on it, read its output and error files."""

    async def submit(self, lines: list[tuple[str, dict[str, Any]]]) -> str:
        import aiohttp

        endpoint = "/v1" + self.client.batch_endpoint
        jsonl = "".join(
            json.dumps({"custom_id": cid, "method": "POST", "url": endpoint, "body": body}) + "\n"
            for cid, body in lines
        )

        def form() -> aiohttp.FormData:  # fresh per attempt: aiohttp < 3.12 sends a form once
            data = aiohttp.FormData()
            data.add_field("purpose", "batch")
            data.add_field("file", jsonl.encode("utf-8"), filename="nif-batch.jsonl")
            return data

        upload = await self.json("POST", self.url("/files"), data=form)
        payload = {
            "input_file_id": upload["id"],
            "endpoint": endpoint,
            "completion_window": "24h",
        }
        return str((await self.json("POST", self.url("/batches"), json=payload))["id"])

    async def poll(self, batch_id: str) -> tuple[str, bool, dict[str, Any]]:
        batch = await self.json("GET", self.url(f"/batches/{batch_id}"))
        status = str(batch.get("status"))
        ended = status in ("completed", "failed", "expired", "cancelled")
        errors = (batch.get("errors") or {}).get("data") or []
        if status == "failed" and errors:  # the whole batch was refused, e.g. an unknown model
            status += f": {errors[0].get('message', errors[0])}"
        return status, ended, batch

    async def results(
        self, batch: dict[str, Any]
    ) -> list[tuple[str, Completion | None, str | None]]:
        out = []
        for key in ("output_file_id", "error_file_id"):
            if not batch.get(key):
                continue
            raw = await self.download(self.url(f"/files/{batch[key]}/content"))
            out += [self._result(rec) for rec in _jsonl(raw)]
        return out

    def _result(self, rec: dict[str, Any]) -> tuple[str, Completion | None, str | None]:
        cid, response = str(rec.get("custom_id")), rec.get("response") or {}
        if rec.get("error"):
            return cid, None, f"batch error: {rec['error'].get('message', rec['error'])}"
        if response.get("status_code") != 200:
            body = json.dumps(response.get("body"))
            return cid, None, f"HTTP {response.get('status_code')}: {error_message(body)}"
        try:
            return cid, self.client.parse_batch_result(response["body"]), None
        except RequestFailed as err:
            return cid, None, str(err)
        except (ValueError, KeyError, TypeError, IndexError, AttributeError):
            return cid, None, "malformed response body"


class AnthropicBatches(_BatchApi):
    """Message Batches: one JSON request with every message, results as JSONL."""

    async def submit(self, lines: list[tuple[str, dict[str, Any]]]) -> str:
        requests = [{"custom_id": cid, "params": body} for cid, body in lines]
        batch = await self.json("POST", self.url("/messages/batches"), json={"requests": requests})
        return str(batch["id"])

    async def poll(self, batch_id: str) -> tuple[str, bool, dict[str, Any]]:
        batch = await self.json("GET", self.url(f"/messages/batches/{batch_id}"))
        status = str(batch.get("processing_status"))
        return status, status == "ended", batch

    async def results(
        self, batch: dict[str, Any]
    ) -> list[tuple[str, Completion | None, str | None]]:
        url = batch.get("results_url") or self.url(f"/messages/batches/{batch['id']}/results")
        check_same_origin(url, self.base)  # the key goes to the base URL's host only
        return [self._result(rec) for rec in _jsonl(await self.download(url))]

    def _result(self, rec: dict[str, Any]) -> tuple[str, Completion | None, str | None]:
        cid, result = str(rec.get("custom_id")), rec.get("result") or {}
        kind = result.get("type")
        if kind == "succeeded":
            try:
                return cid, self.client.parse_batch_result(result["message"]), None
            except RequestFailed as err:
                return cid, None, str(err)
            except (ValueError, KeyError, TypeError, IndexError, AttributeError):
                return cid, None, "malformed response body"
        if kind == "errored":
            return cid, None, f"batch error: {error_message(json.dumps(result.get('error')))}"
        return cid, None, None  # canceled / expired: not answered, sent again


def _jsonl(raw: bytes) -> list[dict[str, Any]]:
    """The records of a results file; a broken line is skipped (its request counts as
    unanswered and is sent again)."""
    return parse_jsonl(raw.decode("utf-8", errors="replace"))


def batch_api(client: BatchClient) -> _BatchApi:
    """The provider's batch API for `client`; refuses a client without one, or with a fleet."""
    if not isinstance(client, BatchClient):
        raise TypeError(f"{client!r} has no batch API (`--batch` needs one of the HTTP clients)")
    return AnthropicBatches(client) if client.cfg.kind == "anthropic" else OpenAIBatches(client)


async def run_batches(
    client: BatchClient,
    ledger: BatchLedger,
    items: dict[str, str],
    *,
    on_answer: Callable[[str, Completion], None],
    on_error: Callable[[str, str], None],
    on_status: Callable[[str], None] = lambda text: None,
    before_collected: Callable[[], None] = lambda: None,
) -> int:
    """Get an answer for every `items` key (key -> prompt) through the provider's batches;
    returns how many batches are still running (only with `batch_wait` off).

    Keys already in a pending batch of `ledger` are not sent again: that batch is collected.
    The rest go in new batches of `batch_size`, each recorded in the ledger the moment it is
    accepted. Every pending batch is then polled until it ends (or, with `batch_wait` off,
    checked once); each answer goes to `on_answer(key, completion)`, each error or unanswered
    key to `on_error(key, reason)`, and once `before_collected()` has returned the batch is
    marked collected. Answers for keys not in `items` (finished by an earlier run) are ignored."""
    api = batch_api(client)
    in_flight = ledger.in_flight()
    fresh = [key for key in items if key not in in_flight]
    size = client.cfg.batch_size
    for start in range(0, len(fresh), size):
        chunk = fresh[start : start + size]
        lines = [(f"doc-{k}", client.batch_request(items[key])) for k, key in enumerate(chunk)]
        ledger.batches.append(BatchRecord(await api.submit(lines), chunk))
        ledger.save()  # at once: from here on this batch is collected, never sent again
    callbacks = (on_answer, on_error, on_status, before_collected)
    await asyncio.gather(
        *(_collect(api, rec, ledger, items, *callbacks) for rec in ledger.pending())
    )
    ledger.save()  # the statuses last seen
    return len(ledger.pending())


async def _collect(api, rec, ledger, items, on_answer, on_error, on_status, before_collected):
    """Wait for one batch to end; hand over its answers and errors; mark it collected."""
    while True:
        rec.status, ended, batch = await api.poll(rec.id)
        if ended:
            break
        on_status(f"batch {rec.id}: {rec.status}")
        if not api.client.cfg.batch_wait:
            return  # still pending; a later run collects it
        await asyncio.sleep(api.client.cfg.poll_seconds)
    seen: set[str] = set()
    for custom_id, completion, error in await api.results(batch):
        try:
            key = rec.ids[int(custom_id.removeprefix("doc-"))]
        except (ValueError, IndexError):
            continue  # not one of ours
        if key not in items or key in seen or (completion is None and error is None):
            continue  # finished by an earlier run, a repeated line, or expired (below)
        seen.add(key)
        if completion is not None:
            on_answer(key, completion)
        else:
            on_error(key, error)
    for key in rec.ids:
        if key in items and key not in seen:
            on_error(key, f"batch {rec.id} ended ({rec.status}) without answering it")
    before_collected()
    rec.collected = True
    ledger.save()
