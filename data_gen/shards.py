"""Crash-safe Arrow shards: `DIR/shards/part-NNNNN.arrow`, each written whole or not at all.

A shard is written with `store.write_table_atomic` (a hidden temp name in the same folder,
fsynced, renamed into place, the folder fsynced), and the folder layout is `store`'s dataset
contract. Readers (pyarrow, `datasets.load_dataset("arrow", ...)`, the DataModule) therefore
only ever see complete shards, and the shards themselves are the record of finished work: on
resume the ids in them are skipped, so nothing is lost or done twice whatever moment the
process was killed at. Shards are Arrow IPC *stream* files.

A lock file keeps a second process from writing into the same folder at the same time; a
writer takes it before it looks at what the folder holds, so that the look and the writing are
one step. Shards may carry metadata (`nif gen` records its configuration fingerprint in each).
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path
from typing import Any

import pyarrow as pa

from data_gen.store import (
    SCHEMA,
    DamagedShard,
    FolderError,
    check_whole,
    iter_shards,
    read_shard,
    shard_paths,
    temp_path,
    write_table_atomic,
)


def read_rows(out_dir: str | Path) -> list[dict[str, Any]]:
    """Every row of every shard, in shard order."""
    rows: list[dict[str, Any]] = []
    for table in iter_shards(out_dir):
        rows += table.to_pylist()
    return rows


def read_ids(out_dir: str | Path) -> set[str]:
    ids: set[str] = set()
    for table in iter_shards(out_dir):
        ids.update(table.column("id").to_pylist())
    return ids


def token_totals(out_dir: str | Path) -> tuple[int, int]:
    """Prompt and completion tokens over every shard (every run that added to the folder)."""
    prompt = completion = 0
    for table in iter_shards(out_dir):
        prompt += sum(v or 0 for v in table.column("prompt_tokens").to_pylist())
        completion += sum(v or 0 for v in table.column("completion_tokens").to_pylist())
    return prompt, completion


def damaged_shards(out_dir: str | Path, *, full: bool = False) -> list[Path]:
    """The shards that are not whole: cut short or empty (their ends are checked), or with
    `full`, also any that cannot be read through."""
    damaged = []
    for path in shard_paths(out_dir):
        try:
            read_shard(path) if full else check_whole(path)
        except DamagedShard:
            damaged.append(path)
    return damaged


def move_aside(path: Path, folder: Path) -> Path:
    """`path` moved into `folder` (created), under a new name if that one is taken."""
    folder.mkdir(parents=True, exist_ok=True)
    target, n = folder / path.name, 0
    while target.exists():
        n += 1
        target = folder / f"{path.name}.{n}"
    os.replace(path, target)
    return target


class DirLock:
    """An exclusive `flock` on `DIR/<name>` that names its holder (pid@host) in the file;
    released by the kernel if the process dies, so a killed run never blocks the next. On network
    filesystems `flock` is as good as the filesystem's locking. Subclasses name their file and
    say what a busy folder means (`busy`)."""

    name = ".lock"

    def __init__(self, out_dir: str | Path) -> None:
        self.path = Path(out_dir) / self.name
        self._fd: int | None = None

    def busy(self, holder: str) -> Exception:
        """The error when another process holds the lock (`holder`: its note, or '')."""
        who = f"another process ({holder})" if holder else "another process"
        return FolderError(
            f"{self.path.parent} is being written by {who}, which holds {self.path}; wait for "
            "it to finish, or use another folder"
        )

    def __enter__(self) -> DirLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
            os.close(fd)
            raise self.busy(holder) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}@{socket.gethostname()}\n".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


class ShardWriter:
    """Buffers rows and writes them as a new shard every `rows_per_shard` rows or every
    `flush_seconds` (so a kill loses at most that much finished work, which the next run redoes)."""

    def __init__(
        self,
        out_dir: str | Path,
        rows_per_shard: int,
        flush_seconds: float = 30.0,
        metadata: dict[str, str] | None = None,
    ):
        self.schema = SCHEMA.with_metadata(metadata) if metadata else SCHEMA
        self.dir = Path(out_dir) / "shards"
        self.dir.mkdir(parents=True, exist_ok=True)
        for stale in self.dir.glob(temp_path("part-*.arrow").name):  # a killed run's last shard
            stale.unlink()
        existing = sorted(self.dir.glob("part-*.arrow"))  # other *.arrow: read, not numbered
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
        table = pa.Table.from_pylist(self._rows, schema=self.schema)
        write_table_atomic(self.dir / f"part-{self._next:05d}.arrow", table)
        self._next += 1
        self.written += len(self._rows)
        self._rows = []
