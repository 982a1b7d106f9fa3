"""Corpus sources: local files and folders, Hugging Face datasets, and the built-in corpus.

`iter_documents(src)` yields every usable document of a source, in a fixed order, and counts
every unusable one by reason in a `SkipCounts`. Bad input never stops a run by itself: an
unreadable file, a non-JSON line, a missing field, an empty or too-short text, invalid UTF-8,
or text that cannot be written as UTF-8 (a lone surrogate such as the JSON escape `\\ud800`) is
skipped and counted. Only a source with *nothing* usable is an error, raised by the caller
before any request is sent.

A document's id is the `--id-field` value when given, else a stable hash of its text (the same
text gets the same id on every machine and every run, which is what resume relies on).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

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


@dataclass(frozen=True)
class Document:
    id: str
    text: str


class SkipCounts(Counter):
    """Skipped documents by reason (a `Counter` with a readable summary)."""

    def summary(self) -> str:
        return ", ".join(f"{n} {reason}" for reason, n in sorted(self.items())) or "none"


def text_id(text: str) -> str:
    """Stable id of a text: the first 16 hex digits of its SHA-256."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def iter_documents(
    src: str,
    skipped: SkipCounts,
    *,
    text_field: str = "text",
    id_field: str | None = None,
    min_words: int = 8,
) -> Iterator[Document]:
    """Usable documents of `src` in a fixed order; unusable ones counted in `skipped`.

    `src` is `builtin`, `hf:NAME[:SPLIT][@REVISION]`, or a local .jsonl/.json/.parquet/.txt
    file or a folder of them (searched recursively, in sorted path order).
    """
    seen: set[str] = set()
    for record in _records(src, skipped, text_field=text_field):
        text = record.get(text_field)
        if text is None:
            skipped[MISSING_FIELD] += 1
            continue
        if not isinstance(text, str):
            skipped[MISSING_FIELD] += 1
            continue
        if not text.strip():
            skipped[EMPTY] += 1
            continue
        if len(text.split()) < min_words:
            skipped[TOO_SHORT] += 1
            continue
        if not _encodable(text):
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
            doc_id = text_id(text)
        if doc_id in seen:  # the same document twice would make "exactly once" ambiguous
            skipped[DUPLICATE] += 1
            continue
        seen.add(doc_id)
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


def _records(src: str, skipped: SkipCounts, *, text_field: str) -> Iterator[dict]:
    if src == "builtin":
        from data_gen.builtin import builtin_documents

        yield from builtin_documents()
    elif src.startswith("hf:"):
        yield from _hf_records(src[3:])
    else:
        path = Path(src)
        files = (
            sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in SUFFIXES)
            if path.is_dir()
            else [path]
        )
        for file in files:
            yield from _file_records(file, skipped, text_field=text_field)


def _file_records(path: Path, skipped: SkipCounts, *, text_field: str) -> Iterator[dict]:
    try:
        if path.suffix == ".parquet":
            yield from _parquet_records(path)
            return
        data = path.read_bytes()
    except Exception:  # noqa: BLE001 - any unreadable file is skipped and counted
        skipped[UNREADABLE_FILE] += 1
        return
    if path.suffix == ".jsonl":
        for line in data.splitlines():
            if not line.strip():
                continue
            text = _decode(line, skipped)
            if text is None:
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError:
                skipped[INVALID_JSON] += 1
                continue
            if isinstance(record, dict):
                yield record
            else:
                skipped[INVALID_JSON] += 1
    elif path.suffix == ".json":
        text = _decode(data, skipped)
        if text is None:
            return
        try:
            loaded = json.loads(text)
        except json.JSONDecodeError:
            skipped[INVALID_JSON] += 1
            return
        if isinstance(loaded, dict):  # {"data": [...]} or a single record
            loaded = loaded.get("data", [loaded])
        for record in loaded if isinstance(loaded, list) else []:
            if isinstance(record, dict):
                yield record
            else:
                skipped[INVALID_JSON] += 1
    else:  # .txt: the whole file is one document
        text = _decode(data, skipped)
        if text is not None:
            yield {text_field: text, "path": str(path)}


def _decode(data: bytes, skipped: SkipCounts) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        skipped[INVALID_UTF8] += 1
        return None


def _parquet_records(path: Path) -> Iterator[dict]:
    import pyarrow.parquet as pq

    # Row groups one at a time: an OpenWebText parquet shard never sits in memory whole.
    file = pq.ParquetFile(path)
    for i in range(file.num_row_groups):
        yield from file.read_row_group(i).to_pylist()


def parse_hf_spec(spec: str) -> tuple[str, str, str | None]:
    """`NAME[:SPLIT][@REVISION]` -> (name, split, revision); the split defaults to `train`."""
    rest, _, revision = spec.partition("@")
    name, _, split = rest.partition(":")
    return name, split or "train", revision or None


def _hf_records(spec: str) -> Iterator[dict]:
    """A Hugging Face dataset split, streamed so nothing is downloaded up front."""
    from datasets import load_dataset

    name, split, revision = parse_hf_spec(spec)
    try:
        yield from load_dataset(name, split=split, revision=revision, streaming=True)
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
