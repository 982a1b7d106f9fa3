"""Crash-safe Arrow shards: `DIR/shards/part-NNNNN.arrow`, each written whole or not at all.

A shard is written to a hidden temp name in the same folder, flushed and fsynced, renamed into
place with `os.replace` (atomic on POSIX), and the folder is fsynced so the rename survives a
power cut. Readers (pyarrow, `datasets.load_dataset("arrow", ...)`, the DataModule) therefore
only ever see complete shards, and the shards themselves are the record of finished work: on
resume the ids in them are skipped, so nothing is lost or done twice whatever moment the
process was killed at. Shards are Arrow IPC *stream* files.

A lock file keeps a second process from writing into the same folder at the same time.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path
from typing import Any

import pyarrow as pa

SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("prompt", pa.string()),
        ("completion", pa.string()),
        ("reference", pa.string()),
        ("teacher", pa.string()),
        ("finish_reason", pa.string()),
        ("prompt_tokens", pa.int64()),
        ("completion_tokens", pa.int64()),
    ]
)


def shard_paths(out_dir: str | Path) -> list[Path]:
    return sorted((Path(out_dir) / "shards").glob("part-*.arrow"))


def read_table(path: Path) -> pa.Table:
    with pa.OSFile(str(path), "rb") as f:
        return pa.ipc.open_stream(f).read_all()


def read_rows(out_dir: str | Path) -> list[dict[str, Any]]:
    """Every row of every shard, in shard order."""
    rows: list[dict[str, Any]] = []
    for path in shard_paths(out_dir):
        rows += read_table(path).to_pylist()
    return rows


def read_ids(out_dir: str | Path) -> set[str]:
    ids: set[str] = set()
    for path in shard_paths(out_dir):
        ids.update(read_table(path).column("id").to_pylist())
    return ids


def token_totals(out_dir: str | Path) -> tuple[int, int]:
    """Prompt and completion tokens over every shard (every run that added to the folder)."""
    prompt = completion = 0
    for path in shard_paths(out_dir):
        table = read_table(path)
        prompt += sum(v or 0 for v in table.column("prompt_tokens").to_pylist())
        completion += sum(v or 0 for v in table.column("completion_tokens").to_pylist())
    return prompt, completion


def write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def write_table_atomic(path: Path, table: pa.Table) -> None:
    """`table` as an Arrow IPC stream file at `path`, whole or not at all (temp + rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with pa.OSFile(str(tmp), "wb") as f, pa.ipc.new_stream(f, table.schema) as writer:
        writer.write_table(table)
    with tmp.open("rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class DirLock:
    """An exclusive `flock` on `DIR/.lock`; released by the kernel if the process dies."""

    def __init__(self, out_dir: Path) -> None:
        self.path = out_dir / ".lock"
        self._fd: int | None = None

    def __enter__(self) -> DirLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise RuntimeError(
                f"{self.path.parent} is being written by another process; wait for it to finish"
            ) from None
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)


class ShardWriter:
    """Buffers rows and writes them as a new shard every `rows_per_shard` rows or every
    `flush_seconds` (so a kill loses at most that much finished work, which the next run redoes)."""

    def __init__(self, out_dir: str | Path, rows_per_shard: int, flush_seconds: float = 30.0):
        self.dir = Path(out_dir) / "shards"
        self.dir.mkdir(parents=True, exist_ok=True)
        for stale in self.dir.glob(".part-*.tmp"):  # a shard a killed run never finished
            stale.unlink()
        existing = shard_paths(out_dir)
        self._next = int(existing[-1].stem.split("-")[1]) + 1 if existing else 0
        self.rows_per_shard = rows_per_shard
        self.flush_seconds = flush_seconds
        self._rows: list[dict[str, Any]] = []
        self._first_at = 0.0
        self.written = 0

    def add(self, row: dict[str, Any]) -> None:
        if not self._rows:
            self._first_at = time.monotonic()
        self._rows.append(row)
        if (
            len(self._rows) >= self.rows_per_shard
            or time.monotonic() - self._first_at >= self.flush_seconds
        ):
            self.flush()

    def flush(self) -> None:
        if not self._rows:
            return
        table = pa.Table.from_pylist(self._rows, schema=SCHEMA)
        final = self.dir / f"part-{self._next:05d}.arrow"
        tmp = self.dir / f".{final.name}.tmp"
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_stream(sink, SCHEMA) as writer:
            writer.write_table(table)
        with open(tmp, "rb+") as f:  # pyarrow's OSFile has no fsync
            os.fsync(f.fileno())
        os.replace(tmp, final)
        _fsync_dir(self.dir)
        self._next += 1
        self.written += len(self._rows)
        self._rows = []
