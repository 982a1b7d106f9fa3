"""`nif gen`: corpus -> sample -> cut -> teacher -> crash-safe shards, exactly once.

The shards are the record of finished work (see `shards.py`). A run:

1. takes the folder's lock, then refuses to continue a folder generated with a different
   configuration, saying which settings differ (operational settings — concurrency, rate
   limits, retries, servers — may change between runs: they do not change the data). The
   configuration is in manifest.json and, as a fingerprint, in every shard, so a lost or edited
   manifest cannot mix settings either (shards from before fingerprints are trusted only with a
   matching manifest). A damaged shard (cut short, empty) is named; with `--repair` it is moved
   to `damaged/` and its documents, known from the kept sample, are generated again. Then it
   checks the corpus (a clear error before any request if nothing usable remains);
2. samples and cuts the documents (deterministic: same arguments, same examples) and keeps
   them in `sample.arrow`, so a resumed run does not read the corpus again (for OpenWebText
   that read is the whole split);
3. skips every id already in a shard, and sends the rest through `concurrency` asyncio workers
   (or, with `--batch`, as provider batches: `batch.py`); each answer is buffered and written
   with the next shard, each failure is recorded in `failures.jsonl` (retried by the next run,
   since it is in no shard);
4. stops cleanly on `RunStopped` (spend limit, bad key), on Ctrl-C, or when the first
   `FAIL_FAST` documents all fail (a wrong model or endpoint), writing every finished row;
5. writes `manifest.json`: the configuration (no secrets) and the counts of the rows on disk;
   "complete" only when every sampled document is in a shard. On any exit (an error, a full
   disk, Ctrl-C or SIGTERM) the finished rows are flushed first and the manifest counts them.

Killing the process at any moment loses at most the rows not yet flushed (at most
`flush_seconds` of work), which the next run requests again; nothing is ever written twice.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from data_gen.config import OPERATIONAL, GenConfig
from data_gen.corpus import SkipCounts
from data_gen.llm import (
    Completion,
    RequestFailed,
    RunStopped,
    TeacherConfig,
    make_teacher,
)
from data_gen.llm.batch import BatchLedger, run_batches
from data_gen.llm.fanout import fan_out
from data_gen.sampling import Example, cut_document, sample_corpus
from data_gen.shards import (
    DirLock,
    ShardWriter,
    damaged_shards,
    move_aside,
    read_ids,
    token_totals,
)
from data_gen.store import (
    FINGERPRINT_KEY,
    DamagedShard,
    DiskFull,
    FolderError,
    JsonlAppender,
    config_diff,
    config_value,
    fingerprint,
    read_manifest,
    read_shard,
    shard_fingerprint,
    shard_paths,
    write_json_atomic,
    write_table_atomic,
)


@dataclass
class GenStats:
    sampled: int = 0
    already_done: int = 0
    done: int = 0  # rows in the shards after this run
    new: int = 0  # rows written by this run
    failed: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    finish_reasons: dict[str, int] = field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    wall_time_s: float = 0.0
    stopped: str | None = None  # why the run stopped early, if it did
    last_failure: str | None = None  # the last document failure's reason (the server's text)
    timed_out: int = 0  # failed documents whose attempts ran past --timeout
    advice: list[str] = field(default_factory=list)  # what to change, each said once

    @property
    def complete(self) -> bool:
        return self.stopped is None and self.failed == 0 and self.done == self.sampled


# A run whose first FAIL_FAST documents all fail, with no answer at all, stops (exit 3).
FAIL_FAST = 32

# The settings that decide which examples a run makes (the key of `sample.arrow`).
SAMPLE_KEYS = (
    "corpus",
    "num_docs",
    "seed",
    "text_field",
    "id_field",
    "split_min",
    "split_max",
    "min_words",
)


def prepare_examples(cfg: GenConfig, *, progress: bool = False) -> tuple[list[Example], SkipCounts]:
    """The sampled, cut examples; raises before any request when nothing usable remains."""
    sample, skipped = sample_corpus(
        cfg.corpus,
        cfg.num_docs,
        cfg.seed,
        text_field=cfg.text_field,
        id_field=cfg.id_field,
        min_words=cfg.min_words,
        workers=cfg.sample_workers,
        progress=progress,
    )
    if not sample:
        raise ValueError(
            f"`--corpus` {cfg.corpus}: no usable documents (skipped: {skipped.summary()}; "
            f"text field {cfg.text_field!r}, at least {cfg.min_words} words)"
        )
    examples = [cut_document(d, cfg.seed, cfg.split_min, cfg.split_max) for d in sample]
    return examples, skipped


def _sample_key(cfg: GenConfig) -> str:
    return json.dumps({k: getattr(cfg, k) for k in SAMPLE_KEYS}, sort_keys=True)


def load_sample(out: Path, cfg: GenConfig) -> tuple[list[Example], SkipCounts] | None:
    """The examples an earlier run on `out` sampled with the same settings, or None."""
    path = out / "sample.arrow"
    if not path.is_file():
        return None
    try:
        table = read_shard(path)
    except DamagedShard:
        return None  # sampled again: the same settings give the same sample
    meta = table.schema.metadata or {}
    if meta.get(b"sample_key", b"").decode() != _sample_key(cfg):
        return None
    examples = [Example(**row) for row in table.to_pylist()]
    return examples, SkipCounts(json.loads(meta[b"skipped"]))


def save_sample(out: Path, cfg: GenConfig, examples: list[Example], skipped: SkipCounts) -> None:
    columns = {f: [getattr(ex, f) for ex in examples] for f in ("id", "prompt", "reference")}
    metadata = {"sample_key": _sample_key(cfg), "skipped": json.dumps(dict(skipped))}
    write_table_atomic(out / "sample.arrow", pa.table(columns).replace_schema_metadata(metadata))


def check_resume(out: Path, cfg: GenConfig) -> None:
    """Refuse to mix two configurations in one folder; name what differs, and where."""
    new = config_fingerprint(cfg)
    manifest = read_manifest(out)
    if manifest is not None:
        old = manifest.get("config")
        old = fingerprint(old if isinstance(old, dict) else {}, OPERATIONAL)
        _refuse_diff(f"`--out` {out}", old, new)
    unknown = []
    for path in shard_paths(out):
        try:
            old = shard_fingerprint(path)
        except (OSError, ValueError):
            continue  # damaged: `check_damaged` names it
        if old is None:
            unknown.append(path)
        else:
            _refuse_diff(f"`--out` {out}: {path}", old, new)
    if unknown and manifest is None:
        raise FolderError(
            f"`--out` {out}: {_names(unknown)} carry no record of the settings they were made "
            "with, and there is no manifest.json to vouch for them; use a new folder"
        )


def config_fingerprint(cfg: GenConfig) -> dict:
    """What decides the data of `cfg`, as it reads back from JSON (tuples become lists)."""
    return json.loads(json.dumps(fingerprint(cfg.public_dict(), OPERATIONAL)))


def _refuse_diff(what: str, old: dict, new: dict) -> None:
    diffs = [
        f"{key}: {config_value(old, key)!r} -> {config_value(new, key)!r}"
        for key in config_diff(old, new)
    ]
    if diffs:
        raise FolderError(
            f"{what} was generated with a different configuration "
            f"({'; '.join(diffs)}); use a new folder, or the original settings to resume"
        )


def _names(paths: list[Path]) -> str:
    shown = ", ".join(str(p) for p in paths[:3])
    return shown + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")


def check_damaged(out: Path, repair: bool) -> None:
    """Name the damaged shards; with `repair`, move them to `damaged/` (their documents are then
    missing from the shards, so this run generates exactly those again)."""
    damaged = damaged_shards(out, full=repair)
    if damaged and not repair:
        raise FolderError(
            f"`--out` {out}: damaged shard(s) {_names(damaged)} (cut short or empty); re-run "
            f"with `--repair` to move them to {out / 'damaged'} and generate their documents again"
        )
    for path in damaged:
        move_aside(path, out / "damaged")


def generate(cfg: GenConfig, *, progress: bool = True) -> GenStats:
    """Run (or resume) the generation described by `cfg`."""
    out = Path(cfg.out)
    with DirLock(out):  # first: another run may be writing, or about to
        check_resume(out, cfg)
        check_damaged(out, cfg.repair)
        pending = BatchLedger.load(out).pending()
        if pending and not cfg.teacher.batch:
            raise ValueError(
                f"`--out` {out} has {len(pending)} provider batch(es) still pending; re-run with "
                f"`--batch` to collect them (deleting {out / 'batches.json'} abandons them, "
                "and their documents would be paid for again)"
            )
        cached = load_sample(out, cfg)
        examples, skipped = cached or prepare_examples(cfg, progress=progress)
        if cached is None:
            save_sample(out, cfg, examples, skipped)
        return asyncio.run(_generate(cfg, out, examples, skipped, progress))


@dataclass
class Estimate:
    """What a run would send (`nif gen --dry-run`); tokens estimated as characters / 4, as the
    TPM limiter charges them."""

    sampled: int
    already_done: int
    to_send: int
    prompt_tokens: int
    max_completion_tokens: int
    skipped: dict[str, int]


def token_cost(
    prompt_tokens: int, completion_tokens: int, price_in: float, price_out: float
) -> float:
    """Dollars for these tokens at `price_in` / `price_out` dollars per million tokens."""
    return (prompt_tokens * price_in + completion_tokens * price_out) / 1e6


def estimate(cfg: GenConfig, *, progress: bool = True) -> Estimate:
    """Sample (or reuse the kept sample) and count what `generate(cfg)` would send; writes
    nothing and sends nothing."""
    out = Path(cfg.out)
    check_resume(out, cfg)
    examples, skipped = load_sample(out, cfg) or prepare_examples(cfg, progress=progress)
    finished = read_ids(out)
    todo = [ex for ex in examples if ex.id not in finished]
    return Estimate(
        sampled=len(examples),
        already_done=len(examples) - len(todo),
        to_send=len(todo),
        prompt_tokens=sum(len(ex.prompt) for ex in todo) // 4,
        max_completion_tokens=len(todo) * cfg.teacher.max_tokens,
        skipped=dict(skipped),
    )


class _Bookkeeper:
    """One run's bookkeeping: rows to the shard writer, failures to failures.jsonl, counts."""

    def __init__(self, out: Path, cfg: GenConfig, stats: GenStats, bar) -> None:
        # Each shard records the settings it was made with (`check_resume` reads them back).
        metadata = {FINGERPRINT_KEY.decode(): json.dumps(config_fingerprint(cfg), sort_keys=True)}
        self.writer = ShardWriter(out, cfg.shard_rows, cfg.flush_seconds, metadata)
        # This run's failures (a fresh file: the next run retries them all).
        self.failures = JsonlAppender((out / "failures.jsonl").open("w", encoding="utf-8"))
        self.stats, self.bar = stats, bar
        self.closed = False
        self._last_postfix = 0.0

    def done(self, ex: Example, c: Completion, teacher: str) -> None:
        if self.closed:  # a worker finishing while the run winds down: redone next run
            return
        self.writer.add(
            {
                "id": ex.id,
                "prompt": ex.prompt,
                "completion": c.text,
                "reference": ex.reference,
                "teacher": teacher,
                "finish_reason": c.finish_reason,
                "prompt_tokens": c.prompt_tokens,
                "completion_tokens": c.completion_tokens,
            }
        )
        self.stats.new += 1
        reasons = self.stats.finish_reasons
        reasons[c.finish_reason] = reasons.get(c.finish_reason, 0) + 1
        self._tick()

    def failed(self, ex: Example, reason: str) -> None:
        if self.closed:
            return
        self.stats.failed += 1
        self.failures.append({"id": ex.id, "reason": reason})
        self._tick()

    def _tick(self) -> None:
        self.bar.update(1)
        now = time.monotonic()
        if not self.bar.disable and now - self._last_postfix > 0.5:  # per row it costs ~20%
            self._last_postfix = now
            done = self.stats.already_done + self.stats.new
            self.bar.set_postfix(done=done, failed=self.stats.failed)

    def close(self) -> DiskFull | None:
        """Flush every finished row, whatever happened; the `DiskFull` if they did not fit (the
        manifest is written first, then it is raised)."""
        self.closed = True
        self.failures.close()
        self.bar.close()
        try:
            self.writer.flush()
        except DiskFull as err:
            return err
        return None


async def _generate(
    cfg: GenConfig, out: Path, examples: list[Example], skipped: SkipCounts, progress: bool
) -> GenStats:
    t0 = time.perf_counter()
    finished = read_ids(out)
    todo = [ex for ex in examples if ex.id not in finished]
    stats = GenStats(
        sampled=len(examples),
        already_done=len(examples) - len(todo),
        skipped=dict(skipped),
    )
    _write_manifest(out, cfg, stats, status="running")
    run = _Bookkeeper(
        out, cfg, stats, _progress_bar(len(todo), stats.already_done, enabled=progress)
    )
    try:
        async with make_teacher(cfg.teacher) as teacher:
            if cfg.teacher.batch:
                await _send_batches(teacher, out, todo, run)
            else:
                await _send_live(teacher, todo, run, cfg.teacher.concurrency)
    except (KeyboardInterrupt, asyncio.CancelledError):
        stats.stopped = "interrupted"
        raise
    except BaseException as err:  # a full disk, a bug: the manifest must not say "complete"
        stats.stopped = stats.stopped or (str(err) if isinstance(err, DiskFull) else repr(err))
        raise
    finally:
        disk_full = run.close()
        if disk_full is not None:
            stats.stopped = stats.stopped or str(disk_full)
        stats.done = stats.already_done + run.writer.written  # the rows on disk
        stats.prompt_tokens, stats.completion_tokens = token_totals(out)  # every run's
        stats.wall_time_s = round(time.perf_counter() - t0, 3)
        status = "complete" if stats.complete else ("stopped" if stats.stopped else "incomplete")
        _write_manifest(out, cfg, stats, status=status)
    if disk_full is not None:
        raise disk_full
    return stats


async def _send_live(teacher, todo: list[Example], run: _Bookkeeper, concurrency: int) -> None:
    """`concurrency` workers, one request each at a time, until every document is asked or a
    stop; advice for the failures a setting explains (`_advise`)."""
    stats = run.stats

    def failed(ex: Example, err: RequestFailed) -> None:
        run.failed(ex, str(err))
        _advise(stats, teacher, err)
        if stats.new == 0 and stats.failed >= FAIL_FAST and stats.stopped is None:
            # A wrong model name or endpoint fails every request: say so now rather than
            # fail the whole corpus one document at a time.
            stats.stopped = (
                f"the teacher failed the first {stats.failed} documents and answered "
                f"none (last: {err}); check --model / --base-url"
            )
            raise RunStopped(stats.stopped)

    stop = await fan_out(
        teacher,
        todo,
        lambda ex: ex.prompt,
        lambda ex, c: run.done(ex, c, teacher.name),
        failed,
        concurrency=concurrency,
        reference=lambda ex: ex.reference,
    )
    if stop is not None and stats.stopped is None:
        stats.stopped = f"{type(stop).__name__}: {stop}"
    if stats.timed_out:
        gate = getattr(teacher, "gate", None)
        lowest = f" (it came down to {gate.lowest} at a time)" if gate is not None else ""
        _add_advice(
            stats,
            f"{stats.timed_out} document(s) failed on timeouts: the server is slower than "
            f"--concurrency {concurrency} with --timeout {teacher.cfg.timeout:g}s allows{lowest}; "
            "re-run with a lower --concurrency (1 for a server that answers one request at a "
            "time) or a higher --timeout",
        )


def _advise(stats: GenStats, teacher, err: RequestFailed) -> None:
    """Record a document's failure for the report, and the advice it calls for."""
    stats.last_failure = str(err)
    status = getattr(err, "status", None)
    stats.timed_out += bool(getattr(err, "timeouts", 0))
    cfg = getattr(teacher, "cfg", None)
    if cfg is not None and cfg.kind == "openai" and stats.new == 0 and status and status >= 500:
        # `transformers serve` and others answer 500 on /chat/completions for a model without
        # a chat template: a base model, which wants raw text in and out.
        _add_advice(
            stats,
            "the chat endpoint answered the first documents with server errors (HTTP 5xx) "
            "and nothing else: "
            f"if {cfg.model} is a base model (no chat template), use `--teacher "
            "openai-completions` (raw text in and out, /v1/completions) with a new --out",
        )


def _add_advice(stats: GenStats, text: str) -> None:
    if text not in stats.advice:
        stats.advice.append(text)


async def _send_batches(teacher, out: Path, todo: list[Example], run: _Bookkeeper) -> None:
    """Documents through the provider's batch API (`batch.py`), answers into the shards."""
    by_id = {ex.id: ex for ex in todo}
    try:
        running = await run_batches(
            teacher,
            BatchLedger.load(out),
            {ex.id: ex.prompt for ex in todo},
            on_answer=lambda key, completion: run.done(by_id[key], completion, teacher.name),
            on_error=lambda key, reason: run.failed(by_id[key], reason),
            on_status=lambda text: run.bar.set_postfix_str(text, refresh=True),
            before_collected=run.writer.flush,  # answers in shards before a batch counts as done
        )
        if running:
            run.stats.stopped = (
                f"{running} batch(es) still running at the provider (--no-wait); re-run the same "
                "command later to collect them"
            )
    except RequestFailed as err:
        run.stats.stopped = f"{err}; every batch sent is recorded: re-run to collect them"
    except RunStopped as err:
        run.stats.stopped = f"{type(err).__name__}: {err}"


def _write_manifest(out: Path, cfg: GenConfig, stats: GenStats, *, status: str) -> None:
    write_json_atomic(
        out / "manifest.json",
        {
            "status": status,
            "config": cfg.public_dict(),
            "teacher": teacher_label(cfg.teacher),
            "counts": {
                "sampled": stats.sampled,
                "done": stats.done,
                "new_this_run": stats.new,
                "failed": stats.failed,
                "skipped": stats.skipped,
                "finish_reasons": stats.finish_reasons,
                "prompt_tokens": stats.prompt_tokens,
                "completion_tokens": stats.completion_tokens,
            },
            "wall_time_s": stats.wall_time_s,
            "stopped": stats.stopped,
            "advice": stats.advice,
        },
    )


def teacher_label(cfg: TeacherConfig) -> str:
    return cfg.kind if cfg.kind == "original" else f"{cfg.kind}:{cfg.model}"


def _progress_bar(total: int, initial: int, *, enabled: bool):
    from tqdm import tqdm

    return tqdm(
        total=total + initial,
        initial=initial,
        unit="doc",
        desc="nif gen",
        disable=not enabled,
        dynamic_ncols=True,
    )
