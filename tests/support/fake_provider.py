"""A local teacher server for tests and benchmarks: OpenAI and Anthropic wire formats, with
latency and fault injection. It lives under tests/ so that no HTTP server ships in the wheel;
tests import it as `fake_provider` (pyproject's pytest `pythonpath`), other processes run the
file as a script (it imports nothing from the project).

Routes: `POST /v1/chat/completions`, `POST /v1/completions` (OpenAI) and `POST /v1/messages`
(Anthropic). The default reply is a deterministic function of the prompt (`reply_for`), so a test
can check that row X's completion belongs to document X; `reply_fn` replaces it (e.g. a judge).

Faults, all optional and combinable:
    fail_first=K, faults=[...]   each distinct prompt first gets K faults, the kinds taken in
                                 turn from `faults`: 429 (with retry-after-ms), 500, 503, 529
                                 (Anthropic overloaded), drop (connection closed mid-request),
                                 slow (reply after `slow_seconds`, past the client's timeout),
                                 malformed (200 with a broken JSON body); and the other outcomes
                                 below
    schedule=[...]               the outcome of the i-th request received (None = a normal
                                 reply), e.g. ["429s", None, "spend"]; after the list, normal
    fault_rate=p                 each request also fails with probability p (seeded)
    length_every=N               every N-th prompt (by hash) ends with finish_reason `length`
    spend_limit_after=N          after N successful replies every request is a spend-limit 429
    headers_remaining=True       send OpenAI rate-limit headers
    reply_headers={...} or f(i)  extra headers on the i-th successful reply (rate-limit tests)
    chat_error=(status, body)    the chat route answers every request with that status and that
                                 plain-text body (a base model without a chat template behind
                                 `transformers serve`: HTTP 500 "Internal Server Error"); the
                                 completions route works
    single_stream=True           one request at a time: each waits for those before it, then
                                 takes `latency` (a small local server); a request whose client
                                 hung up while it waited is dropped, not answered

Hostile modes (issue 11: a server that tries to leak the key, or to exhaust memory or time),
applied to every route, or only to paths matching the regex `hostile_paths`:
    redirect_to="http://h:p"     answer `redirect_status` (307) with Location redirect_to + the
                                 request's path and query (a client must not follow it)
    endless_body=True            200 whose JSON body never ends (a client must stop at its cap)
    slow_body=s                  200 at once, then the body one small piece every s seconds
                                 (a client's timeout must cover the body too)
    huge_completion=N            a valid answer whose completion is N characters, live and in
                                 batch results (the server ignored max_tokens)
    results_base="http://h:p/v1" Anthropic batches name their results_url on that root (a
                                 client must not send its key to another origin)
Every request received, on any route, hostile or not, is appended to `log` as (method,
path?query): a second server made only to be redirected to can assert that it received nothing.

Batch APIs (`nif gen --batch`): OpenAI's `POST /v1/files`, `POST /v1/batches`,
`GET /v1/batches/{id}`, `GET /v1/files/{id}/content`, and Anthropic's `POST /v1/messages/batches`,
`GET /v1/messages/batches/{id}` and `.../results`. A batch stays in progress for `batch_polls`
status checks, then ends with every request answered, except every `batch_expire_every`-th
(expired: no answer) and every `batch_error_every`-th (answered with an error). The first
`batch_upload_faults` file uploads fail with a 500.

Outcomes beyond FAULTS: 429s (retry-after in whole seconds), length (finish_reason `length`),
spend (the provider's spend-limit 429), 400 (context too long), 401 (rejected key).
What happened is counted: `requests`, `by_route` (chat / completions / anthropic), `injected`
(outcome -> count), `successes` (prompt hash -> replies), `arrivals` (monotonic times) and the
last request bodies and headers (`bodies`, `headers_seen`), for tests to assert on.

Run it in-process (a background thread with its own event loop, so the code under test can call
`asyncio.run` itself):

    with FakeTeacherServer(fail_first=1) as server:
        server.url  # http://127.0.0.1:PORT/v1

or in the caller's own event loop (`async with FakeTeacherServer() as server:`), or as a
process that a test can keep alive while it SIGKILLs the generator:

    python tests/support/fake_provider.py --port 0 --latency 0.05   # prints the URL when ready

which `spawn` starts for a test (`with spawn("--latency", "0.05") as url:`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import random
import re
import subprocess
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

FAULTS = ("429", "500", "503", "529", "drop", "slow", "malformed")  # a client retries these
FATAL_FAULTS = ("400", "401")  # context too long; rejected key
OTHER_OUTCOMES = ("429s", "length", "spend")  # retry-after seconds; finish length; spend limit
OUTCOMES = FAULTS + FATAL_FAULTS + OTHER_OUTCOMES
_KEEP_BODIES = 256  # the last request bodies kept for assertions (a benchmark sends 100k)


def reply_for(prompt: str, words: int = 12) -> str:
    """The server's default continuation of `prompt`: tagged with the prompt's hash."""
    digest = hashlib.sha256(prompt.encode("utf-8")).hexdigest()
    filler = " ".join(f"w{digest[i % 60 : i % 60 + 4]}" for i in range(words))
    return f"cont-{digest[:12]} {filler}"


@dataclass
class FakeTeacherServer:
    latency: float = 0.0
    fail_first: int = 0
    faults: tuple[str, ...] = FAULTS
    fault_rate: float = 0.0
    length_every: int = 0
    spend_limit_after: int | None = None
    slow_seconds: float = 5.0
    headers_remaining: bool = False
    reply_fn: Callable[[str], str] | None = None
    schedule: Sequence[str | None] = ()
    reply_headers: dict[str, str] | Callable[[int], dict[str, str]] | None = None
    retry_after_ms: int = 20
    retry_after_s: int = 1
    seed: int = 0
    host: str = "127.0.0.1"
    port: int = 0
    batch_polls: int = 0
    batch_expire_every: int = 0
    batch_error_every: int = 0
    batch_upload_faults: int = 0
    redirect_to: str | None = None
    redirect_status: int = 307
    endless_body: bool = False
    slow_body: float = 0.0
    huge_completion: int = 0
    hostile_paths: str | None = None
    results_base: str | None = None
    chat_error: tuple[int, str] | None = None
    single_stream: bool = False
    # What happened, for assertions.
    requests: int = 0
    batches_created: int = 0
    successes: Counter = field(default_factory=Counter)  # prompt hash -> replies sent
    injected: Counter = field(default_factory=Counter)  # fault kind -> count
    by_route: Counter = field(default_factory=Counter)  # chat / completions / anthropic -> count
    arrivals: list[float] = field(default_factory=list)  # time.monotonic() per request

    def __post_init__(self) -> None:
        bad = sorted((set(self.faults) | set(self.schedule)) - set(OUTCOMES) - {None})
        if bad:
            raise ValueError(f"unknown fault kind(s) {bad}; known: {OUTCOMES}")
        if not 0 <= self.fault_rate <= 1:
            raise ValueError(f"`--fault-rate` must be in [0, 1], got {self.fault_rate}")
        if self.latency < 0:
            raise ValueError(f"`--latency` must be >= 0, got {self.latency}")
        self.bodies: deque[dict] = deque(maxlen=_KEEP_BODIES)
        self.headers_seen: deque[dict[str, str]] = deque(maxlen=_KEEP_BODIES)
        self.auth_seen: set[str | None] = set()
        self.log: list[tuple[str, str]] = []  # (method, path?query) of every request
        self._seen: Counter = Counter()
        self._replies = 0  # successful replies sent
        self._next_fault = 0
        self._rng = random.Random(self.seed)
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner = None
        self._files: dict[str, bytes] = {}
        self._batches: dict[str, dict] = {}
        self._stream_lock: asyncio.Lock | None = None  # made in the server's loop
        self.dropped = 0  # single_stream: requests whose client left before their turn

    # ---- the app -------------------------------------------------------------------------------

    def app(self):
        from aiohttp import web

        @web.middleware
        async def hostile(request, handler):
            return await self._hostile(request, handler)

        app = web.Application(middlewares=[hostile])
        app.router.add_post("/v1/chat/completions", self._handle("chat"))
        app.router.add_post("/v1/completions", self._handle("completions"))
        app.router.add_post("/v1/messages", self._handle("anthropic"))
        # Provider batch APIs (`nif gen --batch`).
        app.router.add_post("/v1/files", self._upload)
        app.router.add_get("/v1/files/{id}/content", self._file_content)
        app.router.add_post("/v1/batches", self._openai_batch)
        app.router.add_get("/v1/batches/{id}", self._openai_batch_status)
        app.router.add_post("/v1/messages/batches", self._anthropic_batch)
        app.router.add_get("/v1/messages/batches/{id}", self._anthropic_batch_status)
        app.router.add_get("/v1/messages/batches/{id}/results", self._anthropic_results)
        return app

    # ---- hostile modes: before any route ------------------------------------------------------

    def _text(self, prompt: str) -> str:
        if self.huge_completion:
            return "x" * self.huge_completion
        return self.reply_fn(prompt) if self.reply_fn else reply_for(prompt)

    async def _hostile(self, request, handler):
        from aiohttp import web

        with self._lock:
            self.log.append((request.method, request.path_qs))
        hostile = self.hostile_paths is None or re.search(self.hostile_paths, request.path)
        if not hostile:
            return await handler(request)
        if self.redirect_to is not None:
            self.injected["redirect"] += 1
            location = self.redirect_to.rstrip("/") + request.path_qs
            return web.Response(status=self.redirect_status, headers={"Location": location})
        if self.endless_body or self.slow_body:
            self.injected["endless_body" if self.endless_body else "slow_body"] += 1
            return await self._stream(request)
        return await handler(request)

    async def _stream(self, request):
        """A 200 whose body never ends (`endless_body`) or trickles (`slow_body`)."""
        from aiohttp import web

        response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        await response.prepare(request)
        await response.write(b'{"choices": [{"index": 0, "text": "')
        chunk = b"x" * (64 * 1024 if self.endless_body else 8)
        try:
            while True:
                if self.slow_body:
                    await asyncio.sleep(self.slow_body)
                await response.write(chunk)
        except (ConnectionError, RuntimeError, asyncio.CancelledError):
            pass  # the client hung up: what it should do
        return response

    # ---- batch APIs: every request answered when the batch ends --------------------------------

    async def _upload(self, request):
        from aiohttp import web

        form = await request.post()
        with self._lock:
            fault = self.batch_upload_faults > 0
            self.batch_upload_faults -= fault
        if fault:
            return _error("chat", 500, "server_error", "upload failed, try again")
        file_id = f"file-{len(self._files)}"
        self._files[file_id] = form["file"].file.read()
        return web.json_response({"id": file_id, "object": "file", "purpose": form["purpose"]})

    async def _file_content(self, request):
        from aiohttp import web

        data = self._files.get(request.match_info["id"])
        if data is None:
            return _error("chat", 404, "not_found", "no such file")
        return web.Response(body=data, content_type="application/jsonl")

    def _new_batch(self, prefix: str, requests: list[tuple[str, str, dict]]) -> str:
        """`requests`: (custom_id, wire format, request body)."""
        with self._lock:
            batch_id = f"{prefix}{self.batches_created}"
            self.batches_created += 1
        self._batches[batch_id] = {"requests": requests, "polls": 0, "results": None}
        return batch_id

    def _batch_results(self, batch_id: str) -> list[tuple[str, dict | None, str | None]] | None:
        """None while in progress; then (custom_id, answer body or None, error or None), with
        expired requests left out."""
        batch = self._batches[batch_id]
        batch["polls"] += 1
        if batch["polls"] <= self.batch_polls:
            return None
        if batch["results"] is None:
            results = []
            for k, (custom_id, fmt, body) in enumerate(batch["requests"], start=1):
                if self.batch_expire_every and k % self.batch_expire_every == 0:
                    continue
                if self.batch_error_every and k % self.batch_error_every == 0:
                    results.append((custom_id, None, "context too long"))
                    continue
                prompt = _prompt_of(fmt, body)
                text = self._text(prompt)
                with self._lock:
                    self.successes[hashlib.sha256(prompt.encode("utf-8")).hexdigest()] += 1
                results.append((custom_id, _answer(fmt, body, text, "stop", prompt), None))
            batch["results"] = results
        return batch["results"]

    async def _openai_batch(self, request):
        from aiohttp import web

        body = await request.json()
        fmt = "chat" if body["endpoint"].endswith("/chat/completions") else "completions"
        lines = self._files[body["input_file_id"]].decode("utf-8").splitlines()
        requests = [(r["custom_id"], fmt, r["body"]) for r in map(json.loads, lines)]
        batch_id = self._new_batch("batch_", requests)
        return web.json_response({"id": batch_id, "object": "batch", "status": "validating"})

    async def _openai_batch_status(self, request):
        from aiohttp import web

        batch_id = request.match_info["id"]
        results = self._batch_results(batch_id)
        if results is None:
            return web.json_response({"id": batch_id, "status": "in_progress"})
        out, err = [], []
        for custom_id, answer, error in results:
            if answer is not None:
                out.append(
                    {"custom_id": custom_id, "response": {"status_code": 200, "body": answer}}
                )
            else:
                body = {"error": {"message": error, "type": "invalid_request_error"}}
                err.append({"custom_id": custom_id, "response": {"status_code": 400, "body": body}})
        files = {}
        for key, records in (("output_file_id", out), ("error_file_id", err)):
            files[key] = None
            if records:
                files[key] = f"file-{key[:3]}-{batch_id}"
                self._files[files[key]] = "".join(json.dumps(r) + "\n" for r in records).encode()
        return web.json_response({"id": batch_id, "status": "completed", **files})

    async def _anthropic_batch(self, request):
        from aiohttp import web

        if "anthropic-version" not in request.headers:
            return _error("anthropic", 400, "invalid_request_error", "anthropic-version missing")
        body = await request.json()
        requests = [(r["custom_id"], "anthropic", r["params"]) for r in body["requests"]]
        batch_id = self._new_batch("msgbatch_", requests)
        return web.json_response(
            {"id": batch_id, "type": "message_batch", "processing_status": "in_progress"}
        )

    async def _anthropic_batch_status(self, request):
        from aiohttp import web

        batch_id = request.match_info["id"]
        ended = self._batch_results(batch_id) is not None
        root = self.results_base or self.url
        return web.json_response(
            {
                "id": batch_id,
                "type": "message_batch",
                "processing_status": "ended" if ended else "in_progress",
                "results_url": f"{root}/messages/batches/{batch_id}/results" if ended else None,
            }
        )

    async def _anthropic_results(self, request):
        from aiohttp import web

        answered = {cid: (a, e) for cid, a, e in self._batches[request.match_info["id"]]["results"]}
        lines = []
        for custom_id, _, _ in self._batches[request.match_info["id"]]["requests"]:
            if custom_id not in answered:
                result = {"type": "expired"}
            elif answered[custom_id][0] is not None:
                result = {"type": "succeeded", "message": answered[custom_id][0]}
            else:
                error = {"type": "invalid_request_error", "message": answered[custom_id][1]}
                result = {"type": "errored", "error": {"type": "error", "error": error}}
            lines.append(json.dumps({"custom_id": custom_id, "result": result}) + "\n")
        return web.Response(text="".join(lines), content_type="application/jsonl")

    def _handle(self, fmt: str):
        from aiohttp import web

        async def handler(request):
            arrived = time.monotonic()
            try:
                body = await request.json()
                prompt = _prompt_of(fmt, body)
            except (ValueError, KeyError, IndexError, TypeError):
                return _error(fmt, 400, "invalid_request_error", "malformed request body")
            if fmt == "anthropic" and "anthropic-version" not in request.headers:
                return _error(fmt, 400, "invalid_request_error", "anthropic-version header missing")
            self.auth_seen.add(
                request.headers.get("Authorization") or request.headers.get("x-api-key")
            )
            if self.chat_error is not None and fmt == "chat":
                with self._lock:
                    self.requests += 1
                    self.by_route[fmt] += 1
                    self.injected["chat_error"] += 1
                status, text = self.chat_error
                return web.Response(status=status, text=text, content_type="text/plain")
            if self.single_stream:
                return await self._one_at_a_time(request, fmt, body, prompt)
            key = hashlib.sha256(prompt.encode("utf-8")).hexdigest()
            with self._lock:
                index = self.requests
                self.requests += 1
                self.by_route[fmt] += 1
                self.arrivals.append(arrived)
                self.bodies.append(body)
                self.headers_seen.append(dict(request.headers))
                n = self._seen[key]
                self._seen[key] += 1
                fault = None
                if index < len(self.schedule):
                    fault = self.schedule[index]
                elif n < self.fail_first and self.faults:
                    # Cycle through the kinds across requests: every kind gets its turn.
                    fault = self.faults[self._next_fault % len(self.faults)]
                    self._next_fault += 1
                elif self.fault_rate and self._rng.random() < self.fault_rate:
                    fault = self._rng.choice(self.faults)
                spent = (
                    self.spend_limit_after is not None and self._replies >= self.spend_limit_after
                )
            if self.latency:
                await asyncio.sleep(self.latency)
            if spent:
                return _spend_limit(fmt)
            if fault is not None and fault != "length":
                self.injected[fault] += 1
                return await self._fault(fault, fmt, request)
            text = self._text(prompt)
            length = self.length_every and int(key[8:16], 16) % self.length_every == 0
            if fault == "length":
                self.injected["length"] += 1
                length = True
            with self._lock:
                success_index = self._replies
                self._replies += 1
                self.successes[key] += 1
            headers = {}
            if self.headers_remaining:
                headers = {
                    "x-ratelimit-remaining-requests": "100",
                    "x-ratelimit-reset-requests": "1s",
                }
            if self.reply_headers is not None:
                extra = self.reply_headers
                headers.update(extra(success_index) if callable(extra) else extra)
            return web.json_response(
                _answer(fmt, body, text, "length" if length else "stop", prompt), headers=headers
            )

        return handler

    async def _one_at_a_time(self, request, fmt: str, body: dict, prompt: str):
        """`single_stream`: queue behind the requests before this one, then `latency`."""
        from aiohttp import web

        if self._stream_lock is None:
            self._stream_lock = asyncio.Lock()
        async with self._stream_lock:
            transport = request.transport
            if transport is None or transport.is_closing():
                self.dropped += 1  # the client timed out while it waited
                return web.Response(status=499)
            await asyncio.sleep(self.latency)
            with self._lock:
                self.requests += 1
                self.by_route[fmt] += 1
                self._replies += 1
                self.successes[hashlib.sha256(prompt.encode("utf-8")).hexdigest()] += 1
        return web.json_response(_answer(fmt, body, self._text(prompt), "stop", prompt))

    async def _fault(self, fault: str, fmt: str, request):
        from aiohttp import web

        if fault == "429":
            headers = {"retry-after-ms": str(self.retry_after_ms)}
            return _error(fmt, 429, "rate_limit_error", "slow down", headers)
        if fault == "429s":
            headers = {"retry-after": str(self.retry_after_s)}
            return _error(fmt, 429, "rate_limit_error", "slow down", headers)
        if fault == "spend":
            return _spend_limit(fmt)
        if fault in ("500", "503"):
            return _error(fmt, int(fault), "server_error", "try again")
        if fault == "400":
            return _error(fmt, 400, "invalid_request_error", "context too long")
        if fault == "401":
            return _error(fmt, 401, "authentication_error", "invalid x-api-key")
        if fault == "529":
            return _error(fmt, 529, "overloaded_error", "Overloaded")
        if fault == "drop":
            request.transport.close()
            return web.Response(status=500)
        if fault == "slow":
            await asyncio.sleep(self.slow_seconds)
            return _error(fmt, 500, "server_error", "too late")
        return web.Response(
            status=200, text='{"choices": [ {"trunc', content_type="application/json"
        )

    # ---- running it ----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    async def start(self) -> None:
        from aiohttp import web

        self._runner = web.AppRunner(self.app())
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def __enter__(self) -> FakeTeacherServer:
        ready = threading.Event()

        def serve() -> None:
            self._loop = asyncio.new_event_loop()
            self._loop.run_until_complete(self.start())
            ready.set()
            self._loop.run_forever()
            self._loop.run_until_complete(self.stop())
            self._loop.close()

        self._thread = threading.Thread(target=serve, daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("fake teacher server did not start")
        return self

    def __exit__(self, *exc) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    # In the caller's own event loop: `async with FakeTeacherServer() as server:`.
    async def __aenter__(self) -> FakeTeacherServer:
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()


def _prompt_of(fmt: str, body: dict) -> str:
    if fmt == "completions":
        return str(body["prompt"])
    messages = body["messages"]
    return str(messages[-1]["content"])


def _answer(fmt: str, body: dict, text: str, finish: str, prompt: str) -> dict:
    usage_in, usage_out = len(prompt.split()), len(text.split())
    if fmt == "anthropic":
        return {
            "type": "message",
            "role": "assistant",
            "model": body.get("model"),
            "content": [{"type": "text", "text": text}],
            "stop_reason": "max_tokens" if finish == "length" else "end_turn",
            "usage": {"input_tokens": usage_in, "output_tokens": usage_out},
        }
    choice = {"index": 0, "finish_reason": finish}
    if fmt == "chat":
        choice["message"] = {"role": "assistant", "content": text}
    else:
        choice["text"] = text
    return {
        "object": "chat.completion" if fmt == "chat" else "text_completion",
        "model": body.get("model"),
        "choices": [choice],
        "usage": {"prompt_tokens": usage_in, "completion_tokens": usage_out},
    }


def _spend_limit(fmt: str):
    """The providers' answers when the money is gone (never worth a retry)."""
    if fmt == "anthropic":
        message = "You have reached your specified API usage limits (spend limit)."
        return _error(fmt, 429, "rate_limit_error", message)
    return _error(fmt, 429, "insufficient_quota", "You exceeded your current quota")


def _error(fmt: str, status: int, kind: str, message: str, headers: dict | None = None):
    from aiohttp import web

    if fmt == "anthropic":
        body = {"type": "error", "error": {"type": kind, "message": message}}
    else:
        body = {"error": {"type": kind, "code": kind, "message": message}}
    return web.json_response(body, status=status, headers=headers or {})


@contextlib.contextmanager
def spawn(*flags: str, cwd: str | Path | None = None) -> Iterator[str]:
    """This script as a separate process (`--port 0` and `flags`, run in `cwd`): yields the URL
    it prints when ready, and kills it on exit. For a server that must outlive what a test
    kills, or that is not in the test's process."""
    proc = subprocess.Popen(
        [sys.executable, __file__, "--port", "0", *flags],
        stdout=subprocess.PIPE,
        text=True,
        cwd=cwd,
    )
    try:
        url = proc.stdout.readline().strip()
        if not url.startswith("http://"):
            raise RuntimeError(f"the fake provider did not start (it printed {url!r})")
        yield url
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Local fake teacher server (tests, benchmarks).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 = any free port")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per reply")
    parser.add_argument("--fail-first", type=int, default=0, help="faults per prompt first")
    parser.add_argument("--faults", default=",".join(FAULTS), help="comma-separated kinds")
    parser.add_argument("--fault-rate", type=float, default=0.0)
    parser.add_argument("--slow-seconds", type=float, default=5.0)
    parser.add_argument("--length-every", type=int, default=0, help="every N-th prompt: length")
    parser.add_argument("--spend-limit-after", type=int, default=None, help="replies, then 429")
    parser.add_argument("--retry-after-ms", type=int, default=20, help="of the 429 fault")
    parser.add_argument("--seed", type=int, default=0, help="of --fault-rate")
    args = parser.parse_args(argv)
    server = FakeTeacherServer(
        latency=args.latency,
        fail_first=args.fail_first,
        faults=tuple(f for f in args.faults.split(",") if f),
        fault_rate=args.fault_rate,
        slow_seconds=args.slow_seconds,
        length_every=args.length_every,
        spend_limit_after=args.spend_limit_after,
        retry_after_ms=args.retry_after_ms,
        seed=args.seed,
        host=args.host,
        port=args.port,
    )

    async def serve() -> None:
        await server.start()
        print(server.url, flush=True)
        await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


if __name__ == "__main__":
    main()
