"""Generation throughput against a local fake teacher: ours vs a minimal aiohttp client.

    python -m benchmarks.bench_gen                       # 0.5 s and 0 s latency, C = 16/64/256
    python -m benchmarks.bench_gen --latency 0.5 --concurrency 256 --reps 1

The fake server (tests/support/fake_provider.py, run as a script) runs in its own process with
a fixed per-reply latency, so neither client shares an event loop or the GIL with it. For each
latency and concurrency C:

(a) baseline: the smallest reasonable aiohttp client: C tasks posting chat completions and
    reading the JSON, no limiter, no retries, nothing written;
(b) teacher: our teacher client alone (`make_teacher(...).complete`, C tasks): limiter, slots,
    fleet choice, retry bookkeeping, parsing;
(c) ours: the real `nif gen` path, `data_gen.generate.generate(GenConfig(...))`: corpus
    sampling, the teacher client, Arrow shards, manifest (corpus preparation before the first
    request is excluded: the wall time is the generator's own `wall_time_s`).

Reported: completions/s (median of `--reps`, with min and max), the ratio to (a), and the ratio
to the Little's-law bound C / latency (the most any client can get from a server that answers
in `latency` seconds with C requests in flight). Rows go to benchmarks/results/gen.jsonl.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import markdown_table, write_rows
from data_gen.generate import GenConfig, generate
from data_gen.llm import TeacherConfig, make_teacher

# The test suite's fake teacher, run as a script (it is not part of the installed packages).
FAKE_PROVIDER = Path(__file__).resolve().parents[1] / "tests" / "support" / "fake_provider.py"

# A steady prose-like prompt: every request costs the same, so rates compare cleanly.
_TEXT = "the river ran past the old mill while children watched boats drift slowly by"
_WORDS = _TEXT.split()


def _prompts(n: int) -> list[str]:
    return [
        f"Document {i}: " + " ".join(_WORDS[(i + j) % len(_WORDS)] for j in range(40))
        for i in range(n)
    ]


def _write_corpus(path: Path, n: int) -> Path:
    with path.open("w", encoding="utf-8") as f:
        for i, text in enumerate(_prompts(n)):
            f.write(json.dumps({"id": f"d{i}", "text": text + " and then it rained."}) + "\n")
    return path


class _Server:
    """`python tests/support/fake_provider.py` in a child process, for one latency."""

    def __init__(self, latency: float) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(FAKE_PROVIDER), "--port", "0", "--latency", str(latency)],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.url = self.proc.stdout.readline().strip()
        if not self.url.startswith("http://"):
            self.proc.kill()
            raise RuntimeError("the fake server did not start")

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


async def _baseline(url: str, prompts: list[str], concurrency: int) -> float:
    """(a) The minimal client; returns completions/s."""
    import aiohttp

    todo = list(reversed(prompts))

    async def worker(session) -> None:
        while todo:
            prompt = todo.pop()
            body = {"model": "m", "messages": [{"role": "user", "content": prompt}]}
            async with session.post(url + "/chat/completions", json=body) as r:
                answer = await r.json()
            assert answer["choices"][0]["message"]["content"]

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        return len(prompts) / (time.perf_counter() - t0)


async def _teacher_alone(url: str, prompts: list[str], concurrency: int) -> float:
    """(b) Our teacher client, C tasks; returns completions/s."""
    cfg = TeacherConfig(kind="openai", model="m", base_urls=(url,), concurrency=concurrency)
    todo = list(reversed(prompts))
    async with make_teacher(cfg) as teacher:

        async def worker() -> None:
            while todo:
                c = await teacher.complete(todo.pop())
                assert c.text

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return len(prompts) / (time.perf_counter() - t0)


def _ours(url: str, corpus: Path, n: int, concurrency: int, work: Path) -> float:
    """(c) The real generate path into a fresh folder; returns completions/s."""
    out = Path(tempfile.mkdtemp(dir=work))
    teacher = TeacherConfig(kind="openai", model="m", base_urls=(url,), concurrency=concurrency)
    stats = generate(GenConfig(corpus=str(corpus), out=str(out), teacher=teacher), progress=False)
    if stats.new != n or stats.failed:
        raise RuntimeError(f"generate wrote {stats.new} of {n} rows ({stats.failed} failed)")
    return stats.new / stats.wall_time_s


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def bench(latency: float, concurrency: int, n: int, reps: int, work: Path) -> dict:
    corpus = _write_corpus(work / f"corpus_{n}.jsonl", n)
    prompts = _prompts(n)
    server = _Server(latency)
    try:
        asyncio.run(_baseline(server.url, prompts[: min(n, 200)], concurrency))  # warm-up
        rates: dict[str, list[float]] = {"baseline": [], "teacher": [], "ours": []}
        for _ in range(reps):  # interleaved, so drift of a shared machine hits all three
            rates["baseline"].append(asyncio.run(_baseline(server.url, prompts, concurrency)))
            rates["teacher"].append(asyncio.run(_teacher_alone(server.url, prompts, concurrency)))
            rates["ours"].append(_ours(server.url, corpus, n, concurrency, work))
    finally:
        server.close()
    base, teacher, ours = (_spread(rates[k]) for k in ("baseline", "teacher", "ours"))
    row = {
        "bench": "gen",
        "latency_s": latency,
        "concurrency": concurrency,
        "requests": n,
        "reps": reps,
        "baseline_per_s": base["median"],
        "baseline_min_max": [base["min"], base["max"]],
        "teacher_per_s": teacher["median"],
        "teacher_min_max": [teacher["min"], teacher["max"]],
        "ours_per_s": ours["median"],
        "ours_min_max": [ours["min"], ours["max"]],
        "ours_vs_baseline": ours["median"] / base["median"],
        "teacher_vs_baseline": teacher["median"] / base["median"],
    }
    if latency > 0:
        bound = concurrency / latency
        row.update(
            little_bound_per_s=bound,
            ours_vs_bound=ours["median"] / bound,
            baseline_vs_bound=base["median"] / bound,
        )
    return row


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--latency", type=float, nargs="+", default=[0.5, 0.0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument(
        "--rounds", type=int, default=10, help="requests per run = rounds x C (latency > 0)"
    )
    parser.add_argument("--requests", type=int, default=2000, help="per run at latency 0")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--no-write", action="store_true", help="print only, no results row")
    args = parser.parse_args(argv)
    if min(args.concurrency) < 1 or args.reps < 1 or args.rounds < 1 or args.requests < 1:
        parser.error("--concurrency, --reps, --rounds and --requests must be >= 1")
    if min(args.latency) < 0:
        parser.error("--latency must be >= 0")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for latency in args.latency:
            for c in args.concurrency:
                n = args.rounds * c if latency > 0 else args.requests
                row = bench(latency, c, n, args.reps, Path(tmp))
                rows.append(row)
                print(json.dumps(row), flush=True)
    columns = [
        "latency_s",
        "concurrency",
        "requests",
        "baseline_per_s",
        "teacher_per_s",
        "ours_per_s",
        "ours_vs_baseline",
        "little_bound_per_s",
        "ours_vs_bound",
    ]
    print(markdown_table(rows, columns))
    if not args.no_write:
        print("rows appended to", write_rows("gen", rows))
    return rows


if __name__ == "__main__":
    main()
