"""Shared by the benchmarks: timing, environment description, and result rows.

Every benchmark measures its baselines in the same run and writes one JSON line per measured
row to `benchmarks/results/<name>.jsonl`, tagged with the device and library versions, so rows
from different machines never get compared by accident.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def environment() -> dict[str, str]:
    import torch

    env = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if torch.cuda.is_available():
        env["device"] = torch.cuda.get_device_name()
        major, minor = torch.cuda.get_device_capability()
        env["capability"] = f"sm_{major}{minor}"
    else:
        env["device"] = f"CPU ({platform.processor() or platform.machine()}, "
        env["device"] += f"{torch.get_num_threads()} threads)"
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        pass
    return env


def time_fn(fn: Callable[[], object], *, warmup: int = 3, reps: int = 10) -> dict[str, float]:
    """Median and spread (min, max) in milliseconds; `triton.testing.do_bench` on a GPU."""
    import torch

    if torch.cuda.is_available():
        import triton.testing

        ms = triton.testing.do_bench(fn, warmup=25, rep=100, quantiles=[0.5, 0.2, 0.8])
        return {"median_ms": ms[0], "p20_ms": ms[1], "p80_ms": ms[2]}
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000)
    samples.sort()
    return {
        "median_ms": statistics.median(samples),
        "p20_ms": samples[int(0.2 * (len(samples) - 1))],
        "p80_ms": samples[int(0.8 * (len(samples) - 1))],
    }


def write_rows(name: str, rows: list[dict]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.jsonl"
    env = environment()
    with path.open("a", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps({**env, **row}) + "\n")
    return path


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    def fmt(v):
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)
