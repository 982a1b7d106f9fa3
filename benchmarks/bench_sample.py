"""Sampling a large local corpus: documents/s and peak memory, ours vs the previous sampler.

    python -m benchmarks.bench_sample                    # 0.5M and 1M docs, k = 8,000 / 80,000
    python -m benchmarks.bench_sample --docs 1000000 --num-docs 80000 --workers 2 --reps 1

The corpus is generated once into `--work` (default /tmp/nif_bench_sample, never the repo): a
JSONL of `--docs` documents of ~700 bytes each (1,000,000 documents ~ 700 MB), text only, so
every document's id is the hash of its text, as in a plain `nif gen` run. What is timed is what
`nif gen` does before its first request (`prepare_examples`): read, sample, cut.

(a) baseline: the sampler before this benchmark, from git (commit `BASELINE`): each file read
    whole (`read_bytes` + `splitlines`), every document id of the corpus in a set for the
    duplicate check, reservoir sampling in the source's order; one process.
(b) ours: `data_gen.sampling.sample_corpus`: streamed reads, a bottom-k sample by a seeded hash
    of the id, with `--workers` processes over 8 MiB byte ranges of the file.

Each measurement runs in a fresh process, so each peak is its own. Reported per row: docs/s
(corpus documents / wall seconds, process start-up of the workers included; median of `--reps`
interleaved repetitions, with min and max), and the peak RSS of the whole process tree (parent
+ workers, summed and sampled every 20 ms, and never below the parent's own peak), with the
parent's peak and the largest worker's (VmHWM: `ru_maxrss` would start each process at its
parent's RSS at the fork). `sample_digest` (a hash of the sampled ids in order) must agree
between worker counts: the sample does not depend on how the corpus is read. The timings come
from a machine that may be shared with other jobs: compare rows of one run, and expect noise.
Rows go to benchmarks/results/sample.jsonl.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

from benchmarks.common import markdown_table, write_rows

ROOT = Path(__file__).resolve().parents[1]
# The last commit with the reservoir sampler and whole-file reads (the baseline).
BASELINE = "2e9ae6cb66613ad67f2a3fd8af09e9c4c7c8bd6e"

_PROSE = (
    "the river ran past the old mill while children watched boats drift slowly by and a "
    "merchant counted coins near the bridge where swallows nested under stone arches each "
    "spring council members argued about taxes roads schools harvests weather prices rumours"
)
_WORDS = _PROSE.split()


def write_corpus(path: Path, docs: int) -> Path:
    """`docs` distinct documents of ~700 bytes each, one JSON object a line (reused if there)."""
    done = path.with_suffix(".done")
    if path.exists() and done.exists() and done.read_text() == str(docs):
        return path
    n = len(_WORDS)
    with path.open("w", encoding="utf-8") as f:
        for i in range(docs):
            words = [_WORDS[(i * 7 + j * j + (i >> 3) * j) % n] for j in range(110)]
            f.write(json.dumps({"text": f"Report {i}: " + " ".join(words) + "."}) + "\n")
    done.write_text(str(docs))
    return path


def _baseline_modules() -> tuple[types.ModuleType, types.ModuleType]:
    """corpus.py and sampling.py as they were at `BASELINE`, as modules of their own."""
    modules = []
    for name in ("corpus", "sampling"):
        source = subprocess.run(
            ["git", "show", f"{BASELINE}:data_gen/{name}.py"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        source = source.replace("from data_gen.corpus import", "from baseline_corpus import")
        module = types.ModuleType(f"baseline_{name}")
        sys.modules[module.__name__] = module  # dataclasses look their module up
        exec(compile(source, f"baseline_{name}.py", "exec"), module.__dict__)
        modules.append(module)
    return modules[0], modules[1]


def _hwm_mb(pid: int | str = "self") -> float:
    """The peak RSS of a process's address space (VmHWM, Linux), in MiB; 0 if gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    match = re.search(r"VmHWM:\s*(\d+) kB", status)
    return int(match.group(1)) / 1024 if match else 0.0


class _PeakRss:
    """The peak of the summed RSS of this process and its children, and the largest child
    peak, sampled in a thread (a child's own peak is its VmHWM, read while it lives)."""

    def __init__(self, every: float = 0.02) -> None:
        import psutil

        self.me, self.every = psutil.Process(), every
        self.tree_mb = self.child_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            total = self.me.memory_info().rss
            for child in self.me.children(recursive=True):
                try:
                    total += child.memory_info().rss
                except psutil.Error:
                    continue
                self.child_mb = max(self.child_mb, _hwm_mb(child.pid))
            self.tree_mb = max(self.tree_mb, total / 2**20)
            self._stop.wait(self.every)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _child(spec: dict) -> dict:
    """One measurement, in this (fresh) process."""
    from data_gen import corpus, sampling

    if spec.get("chunk_bytes"):  # small corpora (the smoke test): still several units
        corpus.CHUNK_BYTES = spec["chunk_bytes"]
        sampling.PARALLEL_MIN_BYTES = 0
    path, n, seed = spec["corpus"], spec["num_docs"], 0
    if spec["impl"] == "baseline":
        old_corpus, old_sampling = _baseline_modules()
    rss = _PeakRss()
    t0 = time.perf_counter()
    if spec["impl"] == "baseline":
        skipped = old_corpus.SkipCounts()
        docs = old_sampling.sample_documents(old_corpus.iter_documents(path, skipped), n, seed)
    else:
        docs, skipped = sampling.sample_corpus(path, n, seed, workers=spec["workers"])
    examples = [sampling.cut_document(d, seed, 0.25, 0.75) for d in docs]
    seconds = time.perf_counter() - t0
    rss.stop()
    parent = _hwm_mb()
    return {
        "seconds": seconds,
        "sampled": len(examples),
        "skipped": dict(skipped),
        "peak_rss_mb": max(rss.tree_mb, parent),
        "parent_peak_mb": parent,
        "worker_peak_mb": rss.child_mb,
        "sample_digest": hashlib.sha256("\n".join(d.id for d in docs).encode()).hexdigest()[:16],
    }


def _measure(spec: dict) -> dict:
    argv = [sys.executable, "-m", "benchmarks.bench_sample", "--child", json.dumps(spec)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"measurement {spec} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench(corpus: Path, docs: int, n: int, impls: list[tuple[str, int]], args) -> list[dict]:
    """One row per (implementation, workers); the repetitions interleaved, so drift of a shared
    machine hits every implementation alike."""
    runs: dict[tuple[str, int], list[dict]] = {impl: [] for impl in impls}
    for _ in range(args.reps):
        for impl, workers in impls:
            spec = {"impl": impl, "corpus": str(corpus), "num_docs": n, "workers": workers}
            spec["chunk_bytes"] = args.chunk_bytes
            runs[impl, workers].append(_measure(spec))
    return [_row(corpus, docs, n, impl, workers, runs[impl, workers]) for impl, workers in impls]


def _row(corpus: Path, docs: int, n: int, impl: str, workers: int, runs: list[dict]) -> dict:
    rates = [docs / r["seconds"] for r in runs]
    peaks = [r["peak_rss_mb"] for r in runs]
    return {
        "bench": "sample",
        "impl": impl if impl == "ours" else f"baseline@{BASELINE[:7]} (reservoir, whole-file)",
        "corpus_docs": docs,
        "corpus_mb": corpus.stat().st_size / 2**20,
        "num_docs": n,
        "workers": workers,
        "reps": len(runs),
        "docs_per_s": statistics.median(rates),
        "docs_per_s_min_max": [min(rates), max(rates)],
        "peak_rss_mb": statistics.median(peaks),
        "peak_rss_mb_max": max(peaks),
        "parent_peak_mb": max(r["parent_peak_mb"] for r in runs),
        "worker_peak_mb": max(r["worker_peak_mb"] for r in runs),
        "sampled": runs[0]["sampled"],
        "sample_digest": runs[0]["sample_digest"],
        "cpu_count": os.cpu_count(),
        "note": "shared machine (other jobs running): timings are noisy",
    }


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, nargs="+", default=[500_000, 1_000_000])
    parser.add_argument("--num-docs", type=int, nargs="+", default=[8_000, 80_000])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--work", default="/tmp/nif_bench_sample", help="where the corpus goes")
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--chunk-bytes", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--no-write", action="store_true", help="print only, no results row")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_child(json.loads(args.child))), flush=True)
        return []
    if min(args.docs) < 1 or min(args.num_docs) < 1 or min(args.workers) < 1 or args.reps < 1:
        parser.error("--docs, --num-docs, --workers and --reps must be >= 1")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for docs in args.docs:
        corpus = write_corpus(work / f"corpus_{docs}.jsonl", docs)
        for n in args.num_docs:
            impls = [("ours", w) for w in args.workers]
            impls += [] if args.no_baseline else [("baseline", 1)]
            for row in bench(corpus, docs, n, impls, args):
                rows.append(row)
                print(json.dumps(row), flush=True)
    columns = ["impl", "corpus_docs", "num_docs", "workers", "docs_per_s", "peak_rss_mb"]
    print(markdown_table(rows, [*columns, "parent_peak_mb", "worker_peak_mb", "sample_digest"]))
    if not args.no_write:
        print("rows appended to", write_rows("sample", rows))
    return rows


if __name__ == "__main__":
    main()
