"""Corpus sources: local files and folders, Hugging Face datasets, and the built-in corpus.

A source is read as a list of `Unit`s (`plan_units`): a byte range of a .jsonl file, a whole
.json/.parquet/.txt file, one `datasets` streaming shard of an `hf:` corpus, or the built-in
corpus. Units are picklable, so several processes can read one source (`data_gen.sampling`).
Every local format is read incrementally, so memory does not grow with the corpus:

- .jsonl: line by line (lines end at `\n`; `\r\n` is fine, a lone `\r` ends no line); a large
  file is cut into `CHUNK_BYTES` byte ranges, and a line belongs to the range its first byte is
  in, so the ranges together read every line exactly once;
- .json: a top-level array (or the array under `{"data": [...]}`) is decoded one element at a
  time from a buffer read in chunks; any other object is one record. Decoding stops at the first
  break in the JSON (or a single value over `MAX_JSON_VALUE_CHARS`): the records before it are
  kept, the rest of the file counts as one `invalid_json` (one `invalid_utf8` for a bad byte);
- .parquet: batch by batch (`iter_batches`), only the text and id columns;
- .txt: the whole file is one document, so it is read whole (a document is held anyway).

`usable_documents` keeps every usable document and counts every unusable one by reason in a
`SkipCounts`. Bad input never stops a run by itself: an unreadable file, a non-JSON line, a
missing field, an empty or too-short text, invalid UTF-8, or text that cannot be written as
UTF-8 (a lone surrogate such as the JSON escape `\\ud800`) is skipped and counted. Only a source
with *nothing* usable is an error, raised by the caller before any request is sent. Repeated
documents are the sampler's to detect (`data_gen.sampling`): it needs no memory of the corpus.

A document's id is the `--id-field` value when given, else a stable hash of its text, `text_id`
(the same text gets the same id on every machine and every run, which is what resume relies on;
tests use `text_id` to name the document a text becomes).
"""

from __future__ import annotations

import codecs
import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SUFFIXES = (".jsonl", ".json", ".parquet", ".txt")

# Skip reasons, as counted in the manifest.
UNREADABLE_FILE = "unreadable_file"
INVALID_JSON = "invalid_json"
INVALID_UTF8 = "invalid_utf8"
INVALID_UNICODE = "invalid_unicode"  # decodes, but holds a lone surrogate: no UTF-8 for it
MISSING_FIELD = "missing_field"
EMPTY = "empty"
TOO_SHORT = "too_short"
DUPLICATE = "duplicate"

# A .jsonl file is read in byte ranges of this size (the units that workers share).
CHUNK_BYTES = 8 << 20
# A .json value larger than this is taken for a break in the file (see the module docstring).
MAX_JSON_VALUE_CHARS = 256 << 20
_READ_BYTES = 1 << 20
_DECODER = json.JSONDecoder()


@dataclass(frozen=True)
class Document:
    id: str
    text: str


class SkipCounts(Counter):
    """Skipped documents by reason (a `Counter` with a readable summary).

    An unreadable file counts once however many units of it failed: `unreadable(path)` records
    the path, and `merge` joins the counts of several readers."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.unreadable_paths: set[str] = set()

    def summary(self) -> str:
        return ", ".join(f"{n} {reason}" for reason, n in sorted(self.items())) or "none"

    def unreadable(self, path: Path | str) -> None:
        self.unreadable_paths.add(str(path))
        self[UNREADABLE_FILE] = len(self.unreadable_paths)

    def merge(self, other: SkipCounts) -> None:
        self.update(+Counter({k: v for k, v in other.items() if k != UNREADABLE_FILE}))
        for path in other.unreadable_paths:
            self.unreadable(path)

    def __reduce__(self):  # Counter's drops the attribute; workers send their counts back
        return (self.__class__, (dict(self),), {"unreadable_paths": self.unreadable_paths})


def text_id(text: str) -> str:
    """Stable id of a text: the first 16 hex digits of its SHA-256 (of its UTF-8 form)."""
    return _utf8_id(text.encode("utf-8"))


def _utf8_id(data: bytes) -> str:
    """`text_id` of a text already encoded (`usable_documents` encodes each text once)."""
    return hashlib.sha256(data).hexdigest()[:16]


@dataclass(frozen=True)
class Unit:
    """A piece of a source that one reader reads start to end (picklable)."""

    kind: str  # "file" | "hf" | "builtin"
    path: str = ""  # the file, or the `hf:` spec (for error messages)
    start: int = 0  # a .jsonl byte range [start, end); end None = to the end
    end: int | None = None
    size: int = 0  # bytes, for deciding whether more processes pay off
    dataset: Any = None  # an `hf:` streaming shard


def plan_units(src: str, *, chunk_bytes: int | None = None) -> list[Unit]:
    """The units of `src`, in the source's order; a .jsonl file in ranges of `chunk_bytes`
    (default `CHUNK_BYTES`).

    `src` is `builtin`, `hf:NAME[:SPLIT][@REVISION]`, or a local .jsonl/.json/.parquet/.txt
    file or a folder of them (searched recursively, in sorted path order)."""
    chunk_bytes = chunk_bytes or CHUNK_BYTES
    if src == "builtin":
        return [Unit("builtin")]
    if src.startswith("hf:"):
        return _hf_units(src[3:])
    path = Path(src)
    files = (
        sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in SUFFIXES)
        if path.is_dir()
        else [path]
    )
    units = []
    for file in files:
        try:
            size = file.stat().st_size
        except OSError:
            size = 0  # reading it fails too, and counts it
        if file.suffix == ".jsonl" and size > chunk_bytes:
            units += [
                Unit("file", str(file), start, end, end - start)
                for start in range(0, size, chunk_bytes)
                for end in [min(start + chunk_bytes, size)]
            ]
        else:
            units.append(Unit("file", str(file), size=size))
    return units


def unit_records(
    unit: Unit, skipped: SkipCounts, *, text_field: str = "text", id_field: str | None = None
) -> Iterator[dict]:
    """The records of one unit; unreadable or broken input counted in `skipped`."""
    if unit.kind == "builtin":
        from data_gen.builtin import builtin_documents

        yield from builtin_documents()
    elif unit.kind == "hf":
        with _hf_errors(unit.path):
            yield from unit.dataset
    else:
        yield from _file_records(unit, skipped, text_field=text_field, id_field=id_field)


def usable_documents(
    records: Iterable[dict],
    skipped: SkipCounts,
    *,
    text_field: str = "text",
    id_field: str | None = None,
    min_words: int = 8,
) -> Iterator[Document]:
    """The usable documents among `records`, in order; the others counted by reason."""
    for record in records:
        text = record.get(text_field)
        if not isinstance(text, str):
            skipped[MISSING_FIELD] += 1
            continue
        if not text or text.isspace():
            skipped[EMPTY] += 1
            continue
        # At most min_words + 1 pieces: no list of every word of a long document.
        if len(text.split(maxsplit=min_words)) < min_words:
            skipped[TOO_SHORT] += 1
            continue
        try:  # the shards, the hash and the request all need a UTF-8 form
            data = text.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate
            skipped[INVALID_UNICODE] += 1
            continue
        if id_field is not None:
            raw_id = record.get(id_field)
            if raw_id is None or str(raw_id) == "":
                skipped[MISSING_FIELD] += 1
                continue
            doc_id = str(raw_id)
            if not _encodable(doc_id):
                skipped[INVALID_UNICODE] += 1
                continue
        else:
            doc_id = _utf8_id(data)
        yield Document(doc_id, text)


def _encodable(text: str) -> bool:
    """Whether `text` has a UTF-8 form (the shards, the hash and the request all need one)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_source(src: str) -> None:
    """Fail fast, naming `--corpus`, when the source cannot exist."""
    if src == "builtin" or src.startswith("hf:"):
        if src == "hf:":
            raise ValueError("`--corpus hf:NAME` needs a name, e.g. hf:Skylion007/openwebtext")
        return
    path = Path(src)
    if not path.exists():
        raise FileNotFoundError(f"`--corpus` {src} does not exist")
    if path.is_file() and path.suffix not in SUFFIXES:
        raise ValueError(f"`--corpus` {src}: unsupported file type {path.suffix!r} ({SUFFIXES})")


# --- local files --------------------------------------------------------------------------------


def _file_records(
    unit: Unit, skipped: SkipCounts, *, text_field: str, id_field: str | None
) -> Iterator[dict]:
    path = Path(unit.path)
    try:
        if path.suffix == ".jsonl":
            yield from _jsonl_records(path, unit.start, unit.end, skipped)
        elif path.suffix == ".json":
            yield from _json_records(path, skipped)
        elif path.suffix == ".parquet":
            yield from _parquet_records(path, (text_field, id_field))
        else:  # .txt: the whole file is one document
            text = _decode(path.read_bytes(), skipped)
            if text is not None:
                yield {text_field: text, "path": str(path)}
    except _read_errors():  # a file that cannot be read is skipped and counted, not a crash
        skipped.unreadable(path)


def _read_errors() -> tuple[type[BaseException], ...]:
    """What "this file cannot be read" raises: the OS's errors, a decoder's, pyarrow's (not
    MemoryError or a bug's TypeError, which must surface)."""
    import pyarrow as pa

    return (OSError, ValueError, pa.ArrowException)


def _jsonl_records(path: Path, start: int, end: int | None, skipped: SkipCounts) -> Iterator[dict]:
    """The lines whose first byte is in [start, end), one JSON record each."""
    with path.open("rb") as f:
        pos = start
        if start > 0:  # the line in progress at `start` belongs to the range before
            f.seek(start - 1)
            pos = start - 1 + len(f.readline())
        for line in f:
            if end is not None and pos >= end:
                return
            pos += len(line)
            if line.isspace():  # a blank line (every line read holds at least its newline)
                continue
            text = _decode(line, skipped)
            if text is None:
                continue
            try:
                record = _DECODER.decode(text)
            except (json.JSONDecodeError, RecursionError):  # deeply nested: not JSON for us
                skipped[INVALID_JSON] += 1
                continue
            if isinstance(record, dict):
                yield record
            else:
                skipped[INVALID_JSON] += 1


def _decode(data: bytes, skipped: SkipCounts) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        skipped[INVALID_UTF8] += 1
        return None


def _json_records(path: Path, skipped: SkipCounts) -> Iterator[dict]:
    """A .json file's records, one top-level array element (or `data` element) at a time."""
    with path.open("rb") as f:
        reader = _JsonReader(f)
        try:
            first = reader.peek()
            if first == "[":
                yield from _array_records(reader, skipped)
            elif first == "{":
                yield from _object_records(reader, skipped)
            else:  # empty, or a lone scalar: no record
                raise json.JSONDecodeError("expected an array or an object", reader.buf, 0)
            if reader.peek() != "":
                raise json.JSONDecodeError("extra data", reader.buf, reader.pos)
        except (json.JSONDecodeError, RecursionError):
            skipped[INVALID_JSON] += 1
        except UnicodeDecodeError:
            skipped[INVALID_UTF8] += 1


def _array_records(reader: _JsonReader, skipped: SkipCounts) -> Iterator[dict]:
    reader.expect("[")
    if reader.peek() == "]":
        reader.pos += 1
        return
    while True:
        item = reader.value()
        if isinstance(item, dict):
            yield item
        else:
            skipped[INVALID_JSON] += 1
        if reader.expect(",", "]") == "]":
            return


def _object_records(reader: _JsonReader, skipped: SkipCounts) -> Iterator[dict]:
    """`{"data": [records]}` streams the records; any other object is one record."""
    reader.expect("{")
    members: dict[str, Any] = {}
    streamed = False
    if reader.peek() == "}":
        reader.pos += 1
    else:
        while True:
            key = reader.value()
            if not isinstance(key, str):
                raise json.JSONDecodeError("expected a key", reader.buf, reader.pos)
            reader.expect(":")
            if key == "data" and not streamed and reader.peek() == "[":
                yield from _array_records(reader, skipped)
                streamed = True
            else:
                members[key] = reader.value()
            if reader.expect(",", "}") == "}":
                break
    if streamed:
        return
    if "data" in members:  # "data" that is not a list of records
        skipped[INVALID_JSON] += 1
    else:
        yield members


_WHITESPACE = re.compile(r"[ \t\n\r]*")


class _JsonReader:
    """A UTF-8 JSON text read in chunks, decoded one value at a time (`raw_decode` on a buffer
    that grows only while a value does not fit, doubling, so a large value costs linear time)."""

    def __init__(self, f) -> None:
        self.f = f
        self.utf8 = codecs.getincrementaldecoder("utf-8")()
        self.buf = ""
        self.pos = 0
        self.eof = False
        self.bad_utf8: UnicodeDecodeError | None = None

    def _more(self) -> bool:
        """Read on (at least as much again as the buffer holds); False at the end. Invalid
        UTF-8 is raised only when the text before it is used up, so what is read does not
        depend on the chunk size."""
        if self.bad_utf8 is not None:
            raise self.bad_utf8
        if self.eof:
            return False
        if len(self.buf) - self.pos > MAX_JSON_VALUE_CHARS:
            raise json.JSONDecodeError("a value too large to stream", "", 0)
        data = self.f.read(max(_READ_BYTES, len(self.buf) - self.pos))
        self.eof = not data
        try:
            text = self.utf8.decode(data, final=self.eof)
        except UnicodeDecodeError as err:  # keep the valid text before the bad byte
            text = err.object[: err.start].decode("utf-8")
            self.bad_utf8 = err
        self.buf = self.buf[self.pos :] + text
        self.pos = 0
        return True

    def peek(self) -> str:
        """The next character that is not whitespace ("" at the end), not consumed."""
        while True:
            self.pos = _WHITESPACE.match(self.buf, self.pos).end()
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self._more():
                return ""

    def expect(self, *chars: str) -> str:
        char = self.peek()
        if char == "" or char not in chars:
            raise json.JSONDecodeError(f"expected {' or '.join(chars)}", self.buf, self.pos)
        self.pos += 1
        return char

    def value(self) -> Any:
        self.peek()
        while True:
            try:
                value, end = _DECODER.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError:
                if self._more():
                    continue
                raise
            # A number (or literal) ending at the buffer's end may go on in the next chunk.
            if end < len(self.buf) or not self._more():
                self.pos = end
                return value


def _parquet_records(path: Path, fields: tuple[str | None, ...]) -> Iterator[dict]:
    import pyarrow.parquet as pq

    # Batch by batch and only the columns used: a shard of a corpus never sits in memory whole.
    file = pq.ParquetFile(path)
    columns = [c for c in dict.fromkeys(fields) if c is not None and c in file.schema_arrow.names]
    if not columns:  # every row lacks the text (or id) field
        yield from ({} for _ in range(file.metadata.num_rows))
        return
    for batch in file.iter_batches(batch_size=1024, columns=columns):
        yield from batch.to_pylist()


# --- Hugging Face datasets ----------------------------------------------------------------------


def parse_hf_spec(spec: str) -> tuple[str, str, str | None]:
    """`NAME[:SPLIT][@REVISION]` -> (name, split, revision); the split defaults to `train`."""
    rest, _, revision = spec.partition("@")
    name, _, split = rest.partition(":")
    return name, split or "train", revision or None


def _hf_units(spec: str) -> list[Unit]:
    """A Hugging Face dataset split, streamed (nothing is downloaded up front), one unit per
    data shard (file) so that workers can share it."""
    from datasets import load_dataset

    name, split, revision = parse_hf_spec(spec)
    with _hf_errors(spec):
        dataset = load_dataset(name, split=split, revision=revision, streaming=True)
    shards = getattr(dataset, "num_shards", 1)
    if not isinstance(shards, int) or shards < 2:
        return [Unit("hf", spec, dataset=dataset)]
    return [
        Unit("hf", spec, dataset=dataset.shard(num_shards=shards, index=i)) for i in range(shards)
    ]


@contextmanager
def _hf_errors(spec: str):
    """Loading (or streaming) errors of `hf:SPEC` as one clear line each."""
    name, split, _ = parse_hf_spec(spec)
    try:
        yield
    except RuntimeError as err:
        if "scripts are no longer supported" not in str(err):
            raise
        # datasets >= 4 runs no loading scripts; some well-known corpora still ship one.
        raise ValueError(
            f"`--corpus hf:{spec}`: this dataset is defined by a loading script, which the "
            "installed `datasets` no longer runs. Use the Hub's parquet export, "
            f"`hf:{name}:{split}@refs/convert/parquet` (for very large sets the export may hold "
            "only part of the data), or a local copy of the files as `--corpus DIR`"
        ) from None
    except OSError as err:  # not on the Hub, no network, no local cache
        raise ValueError(
            f"`--corpus hf:{spec}`: cannot load it ({err}). Offline, point HF_HOME at a cache "
            "filled beforehand and set HF_DATASETS_OFFLINE=1, or pass a local copy as "
            "`--corpus DIR`"
        ) from None
