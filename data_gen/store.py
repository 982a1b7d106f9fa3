"""The run folder on disk: how its files are written, read back, and compared with a config.

Every stage of nif-lightning may be killed at any moment and re-run on the same folder, so every
file it leaves behind must be either whole or absent, and every file it resumes from must be
readable after a kill. This module is the one place that knows how:

- **Atomic writes** (`write_bytes_atomic`, `write_text_atomic`, `write_json_atomic`,
  `write_table_atomic`): the content goes to `.{name}.tmp` in the same folder, is flushed and
  fsynced, renamed over `name` with `os.replace` (atomic on POSIX), and the folder is fsynced so
  the rename survives a power cut. A reader sees the old file or the new one, never half of one.
- **The append-only JSONL cache** (`JsonlCache`): finished work (verdicts, answers) appended one
  flushed line at a time, so a kill loses at most the line being written. That line may be cut
  short: readers skip it, and the next writer ends it first so the next record is not glued on.
  A JSONL file the user gives (`read_jsonl_records`) is read strictly instead: a bad line is an
  error naming FILE:LINE.
- **The dataset folder** (`SCHEMA`, `shard_paths`, `check_dataset_dir`, `read_dataset`): rows in
  `DIR/shards/*.arrow`, Arrow IPC files (`nif gen` writes the stream format as `part-NNNNN.arrow`;
  the file format, which other tools write, is read too). Written by gen and filter, read by
  filter, export and training.
- **The configuration fingerprint** (`fingerprint`, `config_diff`): what a folder was made with,
  minus the operational settings that change how fast it is made but not what it holds, so that
  a resumed run can refuse a different configuration and name the keys that differ. `nif gen`
  records it in manifest.json and in each shard's Arrow schema metadata (`FINGERPRINT_KEY`), so
  a lost or edited manifest cannot let other settings into the folder.
- **Errors a user can fix** (`FolderError`, a `ValueError`, so the CLI reports it as bad input,
  exit 2, in one line): a folder another process is writing, a damaged shard (`DamagedShard`:
  cut short or empty; a shard must end with the Arrow end-of-stream marker or the file footer,
  as pyarrow and `datasets` write them), a full disk (`DiskFull`, raised by the atomic writer
  in place of ENOSPC), a dataset whose manifest says it is not complete.

pyarrow is imported on first use, so the JSON writers and the fingerprint cost nothing at import.
"""

from __future__ import annotations

import errno
import functools
import json
import os
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import IO, Any

# --------------------------------------------------------------------------- errors


class FolderError(ValueError):
    """A run folder that cannot be used as it is; the message names the file and the fix."""


class DamagedShard(FolderError):
    """A shard that cannot be read whole (cut short by a failed copy or disk, or empty)."""


class DiskFull(FolderError):
    """No space left while writing; what was written before is whole, the file being written is
    absent (or its previous version untouched)."""


# --------------------------------------------------------------------------- atomic writes


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """`data` at `path`, whole or not at all."""
    _write_atomic(path, lambda f: f.write(data))


def write_text_atomic(path: str | Path, text: str) -> None:
    """`text` (UTF-8) at `path`, whole or not at all."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, obj: Any, *, indent: int | None = 2) -> None:
    """`obj` as JSON (UTF-8, one trailing newline) at `path`, whole or not at all."""
    write_text_atomic(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def write_table_atomic(path: str | Path, table) -> None:
    """`table` (a `pyarrow.Table`) as an Arrow IPC stream at `path`, whole or not at all."""
    import pyarrow as pa

    def write(f: IO[bytes]) -> None:
        with pa.ipc.new_stream(f, table.schema) as writer:
            writer.write_table(table)

    _write_atomic(path, write)


def temp_path(path: str | Path) -> Path:
    """Where `path` is written before the rename; a leftover one is a write a kill cut short."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp")


def _write_atomic(path: str | Path, write: Callable[[IO[bytes]], object]) -> None:
    path = Path(path)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as err:
        tmp.unlink(missing_ok=True)  # the old file, if any, is untouched
        if _no_space(err):
            raise DiskFull(
                f"no space left on the device writing {path}; free some space and re-run the "
                "same command (what was written before is kept)"
            ) from None
        raise


def _no_space(err: BaseException) -> bool:
    # pyarrow reports a failed write as its own OSError subclass, with the errno in the text.
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return isinstance(err, OSError) and "No space left on device" in str(err)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- JSONL cache


def parse_jsonl(text: str) -> list[dict[str, Any]]:
    """The JSON objects of a JSONL text; a line that is not one (cut short by a kill, or
    garbled in transit) is skipped, so the work it recorded is simply done again."""
    records = []
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            records.append(rec)
    return records


def read_jsonl_records(path: str | Path, *, what: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Each JSON object of a JSONL file the user gave (questions, prompts, references), with its
    place `"WHAT FILE:LINE"` for the caller's own checks; blank lines are skipped. Unlike
    `parse_jsonl` (our own cache, where a torn line is just redone), anything else is a
    `ValueError` in one line: a missing file, or a line that is not UTF-8, not JSON (too
    deeply nested included) or not an object, named by FILE:LINE. Lines end at `\\n` only (a
    U+2028 inside a JSON string is no line end)."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{what} {str(p)!r} does not exist")
    for n, raw in enumerate(p.read_bytes().split(b"\n"), start=1):
        where = f"{what} {p}:{n}"
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ValueError(f"{where}: not UTF-8 text ({err.reason})") from None
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where}: not valid JSON ({err.msg})") from None
        except RecursionError:
            raise ValueError(f"{where}: not valid JSON (nested too deeply)") from None
        if not isinstance(rec, dict):
            raise ValueError(f"{where}: a record must be a JSON object, not {type(rec).__name__}")
        yield where, rec


class JsonlCache:
    """An append-only JSONL file of finished work: `read()` what is there, then
    `with cache.open_for_append() as out: out.append(record)` as more is finished."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def read(self) -> list[dict[str, Any]]:
        """Every whole record, in file order; none if the file does not exist."""
        if not self.path.is_file():
            return []
        return parse_jsonl(self.path.read_text(encoding="utf-8"))

    def open_for_append(self) -> JsonlAppender:
        """An appender, after ending a last line a kill cut short (else the next record would be
        glued to the broken one and lost with it)."""
        if self.path.is_file() and self.path.stat().st_size:
            with self.path.open("rb+") as f:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    f.write(b"\n")
        return JsonlAppender(self.path.open("a", encoding="utf-8"))


class JsonlAppender:
    """Writes one record per line, each flushed at once; a context manager."""

    def __init__(self, file: IO[str]) -> None:
        self._file = file

    def append(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()  # a kill loses at most the record being written

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --------------------------------------------------------------------------- dataset folder

# The columns training needs; `nif gen` writes all of SCHEMA.
REQUIRED_COLUMNS = ("id", "prompt", "completion")


def __getattr__(name: str):
    if name == "SCHEMA":  # `store.SCHEMA`, built on first use
        return _schema()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def _schema():
    """The columns `nif gen` writes, in order."""
    import pyarrow as pa

    return pa.schema(
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


def shard_paths(data_dir: str | Path) -> list[Path]:
    """The shard files of a dataset folder, in order: every `DIR/shards/*.arrow`."""
    return sorted((Path(data_dir) / "shards").glob("*.arrow"))


# How a whole IPC file ends: the stream format's end-of-stream marker, the file format's magic.
_STREAM_END = b"\xff\xff\xff\xff\x00\x00\x00\x00"
_FILE_END = b"ARROW1"
_REPAIR_HINT = (
    "re-run the command that wrote the folder (`nif gen ... --repair` moves it aside and "
    "regenerates just its documents)"
)


def read_shard(path: str | Path):
    """One shard as a `pyarrow.Table`: the IPC stream format (`nif gen`, `datasets`) or the
    IPC file format. `DamagedShard`, naming the file, if it is not whole."""
    import pyarrow as pa

    check_whole(path)
    try:
        try:
            with pa.OSFile(str(path), "rb") as f:
                return pa.ipc.open_stream(f).read_all()
        except pa.ArrowInvalid:
            with pa.OSFile(str(path), "rb") as f:
                return pa.ipc.open_file(f).read_all()
    except (pa.ArrowInvalid, OSError) as err:
        raise DamagedShard(f"{path} is damaged ({err}); {_REPAIR_HINT}") from None


def check_whole(path: str | Path) -> None:
    """`DamagedShard` unless `path` ends as a whole IPC file does. A cheap test of its last
    bytes (every shard is checked before a long job starts): a copy or disk that cut it short
    leaves no end marker, even at a record boundary."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - len(_STREAM_END)))
        tail = f.read()
    if size == 0:
        raise DamagedShard(f"{path} is empty; {_REPAIR_HINT}")
    if tail != _STREAM_END and not tail.endswith(_FILE_END):
        raise DamagedShard(
            f"{path} is not an Arrow IPC file, or was cut short (no end marker); {_REPAIR_HINT}"
        )


def shard_fingerprint(path: str | Path) -> dict[str, Any] | None:
    """The configuration fingerprint a shard was written with (`FINGERPRINT_KEY` in its schema
    metadata), or None for a shard without one (written before fingerprints, or by another
    tool). Reads the schema only."""
    import pyarrow as pa

    try:
        with pa.OSFile(str(path), "rb") as f:
            metadata = pa.ipc.open_stream(f).schema.metadata or {}
    except pa.ArrowInvalid:
        with pa.OSFile(str(path), "rb") as f:
            metadata = pa.ipc.open_file(f).schema.metadata or {}
    raw = metadata.get(FINGERPRINT_KEY)
    return json.loads(raw) if raw is not None else None


# Schema metadata key of a shard's configuration fingerprint (JSON).
FINGERPRINT_KEY = b"nif_config"


def iter_shards(data_dir: str | Path) -> Iterator:
    """Each shard's table in order, one at a time (a folder may not fit in memory twice)."""
    for path in shard_paths(data_dir):
        yield read_shard(path)


def read_manifest(data_dir: str | Path) -> dict[str, Any] | None:
    """`DIR/manifest.json`, or None where there is none (a one-line error if it is not a JSON
    object: `read_json_object`)."""
    path = Path(data_dir) / "manifest.json"
    return read_json_object(path, what="manifest") if path.is_file() else None


def check_dataset_dir(
    data_dir: str | Path, *, what: str = "data folder", columns: Collection[str] = REQUIRED_COLUMNS
) -> list[Path]:
    """The shard files, or a clear error naming the input (`what`: its flag or key, e.g.
    "`--data`") and what is wrong with it: no shards, a damaged shard (every shard's end is
    checked), missing columns (the first shard's), or a manifest.json saying the folder is not
    complete (a gen with failures or stopped early, a filter with verdicts missing). A folder
    without manifest.json (another tool's data) is used as it is."""
    data = Path(data_dir)
    if not data.is_dir():
        raise FileNotFoundError(f"{what} {data} does not exist (run `nif gen` first)")
    shards = shard_paths(data)
    if not shards:
        raise ValueError(f"{what} {data} holds no shards/*.arrow (run `nif gen` first)")
    for shard in shards:
        check_whole(shard)
    names = read_shard(shards[0]).schema.names
    missing = sorted(set(columns) - set(names))
    if missing:
        raise ValueError(f"{what} {data}: shards lack column(s) {missing} (have {names})")
    manifest = read_manifest(data)
    if manifest is not None and manifest.get("status") != "complete":
        raise FolderError(
            f"{what} {data} is not complete (its manifest.json says {manifest.get('status')!r}); "
            "re-run the `nif gen` / `nif filter` command that wrote it to finish it"
        )
    return shards


def read_dataset(data_dir: str | Path, columns: Collection[str] | None = None):
    """Every row of every shard as one `pyarrow.Table` (only `columns`, if given, in that
    order). No shards: an empty table."""
    import pyarrow as pa

    tables = [t.select(list(columns)) if columns else t for t in iter_shards(data_dir)]
    if not tables:
        empty = _schema().empty_table()
        return empty.select(list(columns)) if columns else empty
    return pa.concat_tables(tables, promote_options="permissive")


# --------------------------------------------------------------------------- fingerprint


def fingerprint(config: dict[str, Any], operational: Collection[str]) -> dict[str, Any]:
    """`config` without the keys named in `operational`, at any depth (`concurrency` drops
    both `concurrency` and `teacher.concurrency`): what decides the output of a run."""
    return {
        key: fingerprint(value, operational) if isinstance(value, dict) else value
        for key, value in config.items()
        if key not in operational
    }


def config_diff(old: Any, new: Any) -> list[str]:
    """The dotted paths of the keys whose values differ (`teacher.model`), sorted; "value"
    when `old` and `new` themselves are different non-mappings."""
    return _diff(old, new, "")


def config_value(config: Any, path: str) -> Any:
    """The value at a dotted path of `config_diff`'s, or None where it is absent."""
    for key in path.split("."):
        config = config.get(key) if isinstance(config, dict) else None
    return config


def _diff(old: Any, new: Any, prefix: str) -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(set(old) | set(new))
        return [d for k in keys for d in _diff(old.get(k), new.get(k), f"{prefix}{k}.")]
    return [prefix.rstrip(".") or "value"] if old != new else []


# --------------------------------------------------------------------------- state files


def read_json_object(path: str | Path, *, what: str) -> dict[str, Any]:
    """A JSON object this project wrote (manifest, run state, results), or a one-line error
    naming the file and the fix when it is not one (edited by hand, cut by a full disk)."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(
            f"{what} {p} is not valid JSON ({type(err).__name__}); move it aside (or restore "
            "it) and re-run"
        ) from None
    if not isinstance(data, dict):
        raise ValueError(
            f"{what} {p} holds a {type(data).__name__}, not the JSON object this tool writes; "
            "move it aside (or restore it) and re-run"
        )
    return data


def folder_problem(path: str | Path, *, what: str) -> str | None:
    """Why `path` cannot be an output folder (it exists as a file), or None."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        return f"{what} {p} is a file, not a folder: give a folder path"
    return None
