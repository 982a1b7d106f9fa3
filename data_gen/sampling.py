"""Which documents, and where each is cut: seeded, reproducible, independent of order and sharding.

- Documents: `--num-docs` uniformly at random without replacement, as a bottom-k sample. Each
  document gets a key, a keyed 128-bit BLAKE2b hash of (seed, document id), and the `num_docs`
  documents with the smallest keys are kept. A key depends on nothing else, so the same set comes
  out whatever order the documents arrive in, however the corpus is split into files, and however
  many processes read it; memory is O(num_docs) (a heap of the kept documents), never O(corpus).
  Same source + same seed = same documents. (The sampler before this one, a reservoir over the
  source's order with cuts drawn by `random.Random`, made other samples and cuts.)
- Repeats: copies of a document share its id, hence its key, and are caught among the kept
  documents. `duplicate` counts the extra copies *of the sampled documents*, exactly and
  whatever the order: a document that ends up sampled is kept from its first copy on (the
  threshold only falls), so every later copy meets it. Copies of documents that are not sampled
  are not counted: that would take every id of the corpus in memory. (Without `--num-docs` every
  document is sampled, and every repeat counted.) Copies that share an id but not their text
  (`--id-field`) keep the text that sorts first, so that too is independent of order.
- Parallel: `sample_corpus` hands the source's units (`corpus.plan_units`: .jsonl byte ranges,
  files, `datasets` streaming shards) to `workers` processes; each keeps the bottom k of what it
  reads and the parent merges them (the bottom k of a union is the bottom k of the parts'
  bottom k's, and the repeat counts add up, for the reason above).
- Cut point: in words, uniform over [split_min, split_max] of the document's word count (the
  paper: 25%-75%), drawn from (seed, document id) alone: it does not depend on which other
  documents were sampled or in what order they are processed. The draw is a keyed BLAKE2b hash
  with its own personalization, unrelated to the sampling key, so being kept (a small key) says
  nothing about where a document is cut.
- The prompt is the text up to the end of the cut word, verbatim (original whitespace and line
  breaks); the reference is the true rest, from the whitespace after it.
"""

from __future__ import annotations

import functools
import hashlib
import heapq
import math
import os
import pickle
import queue
import re
import signal
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from data_gen.corpus import (
    DUPLICATE,
    Document,
    SkipCounts,
    Unit,
    plan_units,
    unit_records,
    usable_documents,
)

# Below this many bytes of input, starting processes costs more than it saves.
PARALLEL_MIN_BYTES = 16 << 20
# Progress is reported every this many records (per process).
_TICK = 4096
# How often (seconds) the parent, waiting for a message, checks that its workers still live.
_POLL_S = 1.0
# Once every worker has ended, how long (seconds) the parent still waits for a message.
_DRAIN_S = 0.1


@dataclass(frozen=True)
class Example:
    id: str
    prompt: str
    reference: str


def default_workers(limit: int = 8) -> int:
    """One sampling process per core this process may use, at most `limit`."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, limit))


class _Keyer:
    """A document's place in the sample's order: the smallest `n` keys are the sample."""

    def __init__(self, seed: int) -> None:
        self.secret = str(seed).encode()

    def __call__(self, doc_id: str) -> int:
        digest = hashlib.blake2b(
            doc_id.encode("utf-8"), digest_size=16, key=self.secret, person=b"nif-sample"
        ).digest()
        return int.from_bytes(digest, "big")


class BottomK:
    """The `n` documents with the smallest keys offered so far (all of them when `n` is None),
    and how many extra copies of each were offered. `key(doc_id)` is a document's key; offering
    documents from memory and taking `documents()` is the in-memory sample (tests use it)."""

    def __init__(self, n: int | None, seed: int) -> None:
        self.n = n
        self.key = _Keyer(seed)
        self._heap: list[tuple[int, str]] = []  # (-key, id): the largest kept key on top
        self._kept: dict[str, tuple[int, str, int]] = {}  # id -> (key, text, copies)

    def offer(self, doc: Document) -> None:
        self._add(self.key(doc.id), doc.id, doc.text, 1)

    def _add(self, key: int, doc_id: str, text: str, copies: int) -> None:
        heap = self._heap
        if self.n is not None and len(heap) >= self.n and key > -heap[0][0]:
            return  # never in the sample: the threshold only falls
        kept = self._kept.get(doc_id)
        if kept is not None:  # a repeat of a kept document
            self._kept[doc_id] = (key, min(text, kept[1]), kept[2] + copies)
            return
        # Tuples of atomic values: the garbage collector stops tracking them, so a large
        # sample does not make every collection slower.
        self._kept[doc_id] = (key, text, copies)
        heapq.heappush(heap, (-key, doc_id))
        if self.n is not None and len(heap) > self.n:
            del self._kept[heapq.heappop(heap)[1]]

    def merge(self, other: BottomK) -> None:
        for doc_id, (key, text, copies) in other._kept.items():
            self._add(key, doc_id, text, copies)

    @property
    def duplicates(self) -> int:
        """Extra copies of the kept documents."""
        return sum(copies - 1 for _, _, copies in self._kept.values())

    def documents(self) -> list[Document]:
        """The kept documents in key order (itself a seeded shuffle, the same for any input
        order)."""
        ordered = sorted(self._kept.items(), key=lambda item: item[1][0])
        return [Document(doc_id, text) for doc_id, (_, text, _) in ordered]


@dataclass(frozen=True)
class _Reading:
    """What a reader needs to turn units into a bottom-k sample (sent to every worker)."""

    n: int | None
    seed: int
    text_field: str
    id_field: str | None
    min_words: int

    def read(self, unit: Unit, sample: BottomK, skipped: SkipCounts, tick: _Ticker) -> None:
        records = unit_records(unit, skipped, text_field=self.text_field, id_field=self.id_field)
        for doc in usable_documents(
            tick.count(records),
            skipped,
            text_field=self.text_field,
            id_field=self.id_field,
            min_words=self.min_words,
        ):
            sample.offer(doc)


class _Ticker:
    """Counts records for the progress bar, reporting every `_TICK`."""

    def __init__(self, report: Callable[[int], object]) -> None:
        self.report = report
        self.pending = 0

    def count(self, records: Iterable[dict]) -> Iterator[dict]:
        for record in records:
            yield record
            self.pending += 1
            if self.pending >= _TICK:
                self.flush()

    def flush(self) -> None:
        if self.pending:
            self.report(self.pending)
            self.pending = 0


def sample_corpus(
    src: str,
    n: int | None,
    seed: int,
    *,
    text_field: str = "text",
    id_field: str | None = None,
    min_words: int = 8,
    workers: int = 1,
    progress: bool = False,
) -> tuple[list[Document], SkipCounts]:
    """`n` documents of `src` uniformly without replacement (all when None), in key order, and
    the unusable records counted by reason (`duplicate`: see the module docstring).

    Reads with up to `workers` processes when the source has several units and is large enough
    to repay starting them; the result is the same either way."""
    from tqdm import tqdm

    reading = _Reading(n, seed, text_field, id_field, min_words)
    units = plan_units(src)
    workers = min(workers, len(units))
    big = any(u.kind == "hf" for u in units) or sum(u.size for u in units) >= PARALLEL_MIN_BYTES
    bar = tqdm(
        desc="sampling corpus",
        unit="doc",
        unit_scale=True,
        disable=not progress,
        leave=False,
        dynamic_ncols=True,
    )
    with bar:
        payloads = _pickled(units) if workers > 1 and big and _spawn_can_start() else None
        if payloads is not None:
            sample, skipped = _read_in_processes(payloads, reading, workers, bar.update)
        else:
            sample, skipped = BottomK(n, seed), SkipCounts()
            tick = _Ticker(bar.update)
            for unit in units:
                reading.read(unit, sample, skipped, tick)
            tick.flush()
    if sample.duplicates:
        skipped[DUPLICATE] += sample.duplicates
    return sample.documents(), skipped


def _spawn_can_start() -> bool:
    """Whether a spawned process can start here: it imports `__main__` again, which a program
    read from stdin does not allow (sampling then stays in this process)."""
    import sys

    main = sys.modules.get("__main__")
    if getattr(getattr(main, "__spec__", None), "name", None) is not None:
        return True
    path = getattr(main, "__file__", None)
    return path is None or os.path.isfile(path)


def _pickled(units: list[Unit]) -> list[bytes] | None:
    """The units as workers receive them, or None when one cannot be sent (an `hf:` dataset
    object that does not pickle: then this process reads). Pickled here, not in the queue's
    thread, which would drop such a unit with no more than a printed traceback."""
    try:
        return [pickle.dumps(unit) for unit in units]
    except Exception:  # noqa: BLE001 - any pickling failure means: read here
        return None


def _read_in_processes(
    payloads: list[bytes], reading: _Reading, workers: int, tick: Callable[[int], object]
) -> tuple[BottomK, SkipCounts]:
    """Workers take units (pickled, `_pickled`) from a shared queue, the faster ones more, and
    send back their bottom k; the parent merges them. Any worker's error is raised here, and on
    any exit the workers are stopped."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")  # no fork of a process that may hold threads
    tasks, events = _task_queue(ctx, payloads, workers), ctx.Queue()
    procs = [
        ctx.Process(target=_worker, args=(tasks, events, reading), daemon=True)
        for _ in range(workers)
    ]
    sample, skipped = BottomK(reading.n, reading.seed), SkipCounts()
    try:
        for p in procs:
            p.start()
        finished = 0
        while finished < workers:
            kind, payload = _next_event(events, procs)
            if kind == "progress":
                tick(payload)
            elif kind == "error":
                raise payload
            else:
                part, counts = payload
                sample.merge(part)
                skipped.merge(counts)
                finished += 1
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join()
        tasks.close()
        events.close()
    return sample, skipped


def _task_queue(ctx, payloads: list[bytes], workers: int):
    """Every unit, then one `None` per worker (its signal to send its sample back)."""
    tasks = ctx.Queue()
    for payload in payloads:
        tasks.put(payload)
    for _ in range(workers):
        tasks.put(None)
    tasks.cancel_join_thread()  # units left unread when stopping early must not hold us up
    return tasks


def _next_event(events, procs) -> tuple[str, object]:
    """The next message of a worker, waiting as long as one is alive; raised instead: a worker
    that died, or all of them ended with a result missing."""
    while True:
        try:
            return events.get(timeout=_POLL_S)
        except queue.Empty:
            pass
        if _all_ended(procs):
            # A worker that exits with code 0 has flushed what it sent into the pipe (the
            # queue's feeder thread is joined at exit), so a message that landed after the
            # wait above timed out is readable now: only an empty pipe means one never came.
            try:
                return events.get(timeout=_DRAIN_S)
            except queue.Empty:
                pass
            raise RuntimeError("a sampling worker ended with no sample sent")


def _all_ended(procs) -> bool:
    """Whether every worker has exited (with code 0); raised for one that exited otherwise."""
    codes = [p.exitcode for p in procs]
    dead = [code for code in codes if code not in (None, 0)]
    if dead:
        raise RuntimeError(
            f"a sampling worker exited with code {dead[0]} (out of memory? its error, if any, "
            "is above); `--sample-workers 1` samples in this process"
        )
    return None not in codes


def _worker(tasks, events, reading: _Reading) -> None:
    """One sampling process: read units until the `None`, then send the bottom k back."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us; Ctrl-C is its to handle
    try:
        sample, skipped = BottomK(reading.n, reading.seed), SkipCounts()
        tick = _Ticker(lambda k: events.put(("progress", k)))
        while (payload := tasks.get()) is not None:
            reading.read(pickle.loads(payload), sample, skipped, tick)
        tick.flush()
        events.put(("done", (sample, skipped)))
    except Exception as err:  # noqa: BLE001 - raised in the parent, which names the input
        try:
            pickle.loads(pickle.dumps(err))  # the queue pickles later, in another thread
        except Exception:  # noqa: BLE001 - an error that does not pickle
            err = RuntimeError(repr(err))
        events.put(("error", err))


def cut_document(doc: Document, seed: int, split_min: float, split_max: float) -> Example:
    """Cut `doc` after a word chosen uniformly in [split_min, split_max] of its word count."""
    n = len(doc.text.split())  # words: runs of non-whitespace (str.split's and re's \s agree)
    if n < 2:
        raise ValueError(f"document {doc.id} has {n} word(s); it cannot be cut in two")
    # Words in the prompt: at least one, and at least one word left for the continuation.
    lo = min(max(1, math.ceil(split_min * n)), n - 1)
    hi = max(min(n - 1, math.floor(split_max * n)), lo)
    k = lo + _cut_draw(doc.id, seed, hi - lo + 1)
    end = _first_words(k).match(doc.text).end()
    return Example(doc.id, doc.text[:end], doc.text[end:])


def _cut_draw(doc_id: str, seed: int, m: int) -> int:
    """Uniform in [0, m), from (seed, id) alone: a keyed hash apart from the sampling key's (its
    own `person`), so a small sampling key says nothing about the cut (bias at most m / 2^128)."""
    digest = hashlib.blake2b(
        doc_id.encode("utf-8"), digest_size=16, key=str(seed).encode(), person=b"nif-cut"
    ).digest()
    return int.from_bytes(digest, "big") * m >> 128


@functools.lru_cache(maxsize=4096)
def _first_words(k: int) -> re.Pattern:
    """Matches a text up to the end of its k-th word (in C: no object per word)."""
    return re.compile(rf"\s*(?:\S+\s+){{{k - 1}}}\S+")
