"""`nif run`: every stage of the method from one config, resumable; a thin handler."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_CONFIG = Path("configs/quickstart.yaml")


def register(subparsers) -> None:
    run = subparsers.add_parser(
        "run",
        help="the whole method in one command: gen -> filter -> train -> sample, plus a report",
        description=(
            "Run the stages of the method in order from one YAML config — gen (documents ->\n"
            "teacher -> Arrow shards), the optional filter, train (LoRA, adapter export, merge)\n"
            "and sample (base vs fine-tuned answers) — into one run folder, then write\n"
            "report.md, report.json and loss.png there. Re-running after a kill continues where\n"
            "it stopped: finished stages are skipped, interrupted ones resume.\n\n"
            "examples:\n"
            "  nif run                                  # configs/quickstart.yaml: CPU, offline\n"
            "  nif run configs/paper/llama3-8b.yaml     # the paper's recipe on a V100 node"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument(
        "config",
        nargs="?",
        default=str(DEFAULT_CONFIG),
        help=f"run config YAML (default: {DEFAULT_CONFIG})",
    )
    run.add_argument(
        "--force",
        action="store_true",
        help="train even when the memory plan (checked on CUDA before `gen`) does not fit",
    )
    run.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from nif_lightning.pipeline import load_run_config, run_pipeline

    try:
        cfg = load_run_config(args.config)
    except (FileNotFoundError, ValueError, TypeError) as err:
        print(f"nif run: {err}", file=sys.stderr)
        return 2
    from nif_lightning.memory import PlanError

    try:
        report = run_pipeline(cfg, force=args.force)
    except (FileNotFoundError, PlanError) as err:  # before the first stage
        print(f"nif run: {err}", file=sys.stderr)
        return 2
    except (RuntimeError, ValueError) as err:
        print(f"nif run: {err}", file=sys.stderr)
        return 1
    if report is None:
        return 0  # a training process of another GPU: rank 0 reports
    out = report["outputs"]
    print(f"\nrun folder: {cfg.run_dir}")
    print(f"  report:        {cfg.run_dir / 'report.md'} (and report.json, loss.png)")
    print(f"  data:          {cfg.train_data_dir}")
    print(f"  adapter:       {out['adapter']}  (PEFT format)")
    print(f"  merged model:  {out['merged']}")
    if report["samples"]:
        print(f"  samples:       {cfg.run_dir / 'samples.json'}")
    return 0
