"""The typed configs of `nif gen` and `nif filter`: the one schema of their flags and YAML keys.

`data_gen.schema` derives from these dataclasses the argparse flags (with help and defaults),
the `gen:` / `filter:` sections of a `nif run` config, and the collected error report. The
teacher options are `TeacherConfig`'s (`data_gen.llm.config`), flattened beside gen's own; the
judge of `nif filter` takes the same ones prefixed `judge_`.

Building a config is pure. What needs the world (the corpus exists, the key's environment
variable is set, the source folder holds shards) is in `check_inputs()`, which
`data_gen.schema.validate` runs once before any work starts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data_gen.llm.config import TeacherConfig
from data_gen.sampling import default_workers
from data_gen.schema import option, section

# Options of `nif gen` that shape what it prints, not the data: left out of manifest.json.
PRESENTATION = ("dry_run", "quiet", "price_in", "price_out")

# Settings of `nif gen` that may change between runs on the same folder: they change how fast
# (or where) the data is made, not what it is. Dropped at any depth by `store.fingerprint`, so
# `nif gen` (`check_resume`) and `nif run` (its gen stage) agree on what changes the data.
OPERATIONAL = {
    "out",
    "shard_rows",
    "flush_seconds",
    "concurrency",
    "rpm",
    "tpm",
    "max_retries",
    "timeout",
    "backoff",
    "base_urls",
    "api_key_env",
    "batch",
    "batch_size",
    "poll_seconds",
    "batch_wait",
    "repair",
    "sample_workers",
}


@dataclass
class GenConfig:
    """Everything `nif gen` needs. Errors name the flag (or, in a run config, the key)."""

    corpus: str = option(metavar="SOURCE")
    """builtin | hf:NAME[:SPLIT][@REVISION] | a .jsonl/.json/.parquet/.txt file or folder."""
    out: str = option(metavar="DIR")
    """Output folder: shards/, manifest.json, failures.jsonl (resumable)."""
    num_docs: int | None = None
    """Documents to sample uniformly without replacement; none = all."""
    seed: int = 0
    """Seed of the sample and the cut points."""
    text_field: str = "text"
    """Field holding the text in JSON/parquet/HF records."""
    id_field: str | None = None
    """Field holding a document id; none = a hash of the text."""
    split_min: float = 0.25
    """Earliest cut, as a fraction of the word count."""
    split_max: float = 0.75
    """Latest cut, as a fraction of the word count."""
    min_words: int = 8
    """Shorter documents are skipped as too short."""
    sample_workers: int = option(default_workers(), shown="one per core, at most 8")
    """Processes reading the corpus while sampling (.jsonl ranges, files, `hf:` shards); the
    sample is the same for any number."""
    shard_rows: int = 1000
    """Rows per shard."""
    flush_seconds: float = 30.0
    """Also write a shard at least this often, bounding the work a kill loses."""
    dry_run: bool = False
    """Sample and count what would be sent (documents, tokens, cost); send nothing."""
    price_in: float | None = None
    """Dollars per million prompt tokens, for the cost estimate (with `price_out`)."""
    price_out: float | None = None
    """Dollars per million completion tokens."""
    quiet: bool = False
    """No progress bar."""
    repair: bool = False
    """Move damaged shards (cut short, empty) to OUT/damaged/ and generate their documents
    again; without it a damaged shard stops the run, named."""
    teacher: TeacherConfig = section(TeacherConfig, flatten=True, title="teacher")

    def __post_init__(self) -> None:
        if self.num_docs is not None and self.num_docs < 1:
            raise ValueError(f"`--num-docs` must be >= 1, got {self.num_docs}")
        if not 0.0 < self.split_min <= self.split_max < 1.0:
            raise ValueError(
                "`--split-min` and `--split-max` must satisfy 0 < min <= max < 1, "
                f"got {self.split_min} and {self.split_max}"
            )
        if self.sample_workers < 1:
            raise ValueError(f"`--sample-workers` must be >= 1, got {self.sample_workers}")
        if self.min_words < 2:
            raise ValueError(f"`--min-words` must be >= 2, got {self.min_words}")
        if self.shard_rows < 1:
            raise ValueError(f"`--shard-rows` must be >= 1, got {self.shard_rows}")
        if self.flush_seconds <= 0:
            raise ValueError(f"`--flush-seconds` must be > 0, got {self.flush_seconds}")
        if (self.price_in is None) != (self.price_out is None):
            raise ValueError("give both `--price-in` and `--price-out` (dollars per 1M tokens)")

    def check_inputs(self) -> list[str]:
        from data_gen.corpus import check_source
        from data_gen.store import folder_problem

        problems = [p for p in [folder_problem(self.out, what="`--out`")] if p]
        try:
            check_source(self.corpus)
        except (ValueError, FileNotFoundError) as err:
            problems.append(str(err))
        return problems

    def public_dict(self) -> dict[str, Any]:
        """The configuration as manifest.json records it (no secrets, no presentation)."""
        out = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in PRESENTATION
        }
        out["teacher"] = self.teacher.public_dict()
        return out


@dataclass
class FilterConfig:
    """What `nif filter` does. Errors name the flag (or, in a run config, the key)."""

    src: str = option(positional=True, metavar="DIR")
    """Folder written by `nif gen`."""
    out: str = option(metavar="DIR")
    """New dataset folder."""
    uppercase: bool = True
    """Apply the uppercase rule (a): drop completions that start uppercase where the true
    continuation does not."""
    keep_instructional: bool = False
    """Keep rows the judge calls instructional (report them, do not drop them)."""
    keep_conversational: bool = False
    """Keep rows the judge calls conversational (report them, do not drop them)."""
    quiet: bool = False
    """No progress bar."""
    judge: TeacherConfig | None = section(
        None,
        flatten=True,
        prefix="judge_",
        title="judge (filter b)",
        defaults={"max_tokens": 16},
        shown={"kind": "none: no judge, filter (a) only"},
    )
    """The LLM judge of filter (b): set `--judge-teacher` to enable it."""

    def __post_init__(self) -> None:
        if self.judge is not None and self.judge.kind == "original":
            raise ValueError(
                "the judge needs an LLM client: set `--judge-teacher` (and `--judge-model`)"
            )
        if self.out and self.src and Path(self.out).resolve() == Path(self.src).resolve():
            raise ValueError("`--out` must be a new folder, not DIR itself")

    @property
    def drop_instructional(self) -> bool:
        return not self.keep_instructional

    @property
    def drop_conversational(self) -> bool:
        return not self.keep_conversational

    def check_inputs(self, *, src_written_later: bool = False) -> list[str]:
        """`--out` can be a folder and DIR holds the rows the filter reads (unless an earlier
        stage of `nif run` writes DIR)."""
        from data_gen.store import check_dataset_dir, folder_problem

        problem = folder_problem(self.out, what="`--out`")
        if problem or src_written_later:
            return [problem] if problem else []
        try:  # the uppercase rule reads each row's true continuation too
            check_dataset_dir(
                self.src, what="DIR", columns=("id", "prompt", "completion", "reference")
            )
        except (FileNotFoundError, ValueError) as err:
            return [str(err)]
        return []

    def public_dict(self) -> dict[str, Any]:
        return {
            "src": self.src,
            "uppercase": self.uppercase,
            "judge": self.judge.public_dict() if self.judge else None,
            "drop_instructional": self.drop_instructional,
            "drop_conversational": self.drop_conversational,
        }
