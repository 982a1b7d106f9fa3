"""`nif kernels check`: compile every Triton launch of the LoRA op for real GPUs, on this machine.

A thin handler: parse, call `nif_kernels.aot.check`, print a table or JSON. No GPU is
needed (Triton's bundled ptxas compiles for any target), so CI runs it and a user can run it for
their own GPU before a long job.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from datetime import date
from pathlib import Path

from data_gen.store import folder_problem

_DEFAULT_ARCHS = "70,80,90"


def register(subparsers) -> None:
    kernels = subparsers.add_parser(
        "kernels",
        help="check the Triton kernels for real GPUs (no GPU needed)",
        description="Check the Triton LoRA kernels for real GPUs.",
    )
    sub = kernels.add_subparsers(dest="kernels_command", metavar="COMMAND")
    check = sub.add_parser(
        "check",
        help="compile every launch of the LoRA op for sm_70/80/90; exit 1 if a rule fails",
        description=(
            "Compile ahead of time every Triton launch lora_linear makes (forward and backward, "
            "each backend the arch runs), at the tiles the launchers choose on that GPU: fp16 "
            "everywhere and bf16 on sm_80+, ranks 8, 16, 64, 128, dropout 0 and 0.1, for the "
            "real shape M=8192, K=N=4096. No GPU is needed. Rules: every launch compiles; shared "
            "memory within the arch's per-block limit; no register spills at r <= 64; kernels "
            "with tl.dot use tensor-core MMA on sm_80+.\n\n"
            "exit status: 0 every rule holds, 1 a rule fails (the failures are listed), "
            "2 bad input.\n\n"
            "example:\n  nif kernels check --arch 70   # before a long job on a V100"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check.add_argument(
        "--arch",
        default=_DEFAULT_ARCHS,
        help="compute capabilities, comma-separated, from 70, 75, 80, 86, 89, 90 "
        f"(default: {_DEFAULT_ARCHS})",
    )
    check.add_argument(
        "--json",
        action="store_true",
        help="print the rows as a JSON list (default: off, a kernel x arch table)",
    )
    check.add_argument(
        "--save",
        metavar="DIR",
        help="also write the rows (kernels_check.json) and the table with the verdict "
        "(kernels_check.md) into DIR, e.g. benchmarks/results (default: print only)",
    )
    check.set_defaults(func=_check)


def _parse_archs(text: str) -> tuple[int, ...]:
    from nif_kernels.aot import SMEM_LIMITS

    try:
        archs = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        archs = ()
    if not archs or any(a not in SMEM_LIMITS for a in archs):
        raise ValueError(
            f"`--arch` {text!r}: give comma-separated compute capabilities from "
            f"{', '.join(map(str, sorted(SMEM_LIMITS)))}"
        )
    return tuple(dict.fromkeys(archs))


def _check(args: argparse.Namespace) -> int:
    from nif_kernels import aot

    try:
        archs = _parse_archs(args.arch)
    except ValueError as err:
        print(f"nif kernels check: {err}", file=sys.stderr)
        return 2
    if args.save and (problem := folder_problem(args.save, what="--save")):
        print(f"nif kernels check: {problem}", file=sys.stderr)
        return 2
    report = aot.check(archs)
    rows_json = json.dumps([row.to_json() for row in report.rows], indent=1)
    summary = (
        f"cell: registers / spill bytes / shared memory / MMA (worst over dtypes, ranks, "
        f"dropouts); {report.compiles} compiles in {report.seconds:.0f} s, "
        f"triton {report.triton_version}"
    )
    if args.json:
        print(rows_json)
    else:
        print(aot.table(report.rows, archs))
        print(f"\n{summary}")
    if args.save:
        _save(Path(args.save), report, archs, rows_json, summary)
    if report.failures:
        print(f"FAILED: {len(report.failures)} rule(s) broken:", file=sys.stderr)
        for line in report.failures:
            print(f"  {line}", file=sys.stderr)
        return 1
    print("passed", file=sys.stderr)
    return 0


def _save(folder: Path, report, archs, rows_json: str, summary: str) -> None:
    """kernels_check.json (the rows) and kernels_check.md (table, verdict), written atomically."""
    from data_gen.store import write_text_atomic
    from nif_kernels import aot

    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(folder / "kernels_check.json", rows_json + "\n")
    verdict = (
        "**Verdict: passed** (every launch compiles; shared memory within each arch's limit; no "
        "spills at r <= 64; tensor-core MMA for the tl.dot kernels on sm_80+)."
        if not report.failures
        else f"**Verdict: {len(report.failures)} rule(s) broken:**\n\n"
        + "\n".join(f"- {line}" for line in report.failures)
    )
    md = (
        f"# `nif kernels check` ({date.today()}, triton {report.triton_version}, "
        f"{platform.machine()} CPU, no GPU)\n\n"
        f"Archs: {', '.join(f'sm_{a}' for a in archs)}; {summary}.\n\n"
        f"{aot.table(report.rows, archs)}\n\n{verdict}\n"
    )
    write_text_atomic(folder / "kernels_check.md", md)
