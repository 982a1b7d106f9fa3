"""`nif run`: every stage of the method from one config, resumable; a thin handler."""

from __future__ import annotations

import argparse
from importlib import resources
from pathlib import Path


def default_config() -> Path:
    """The embedded quickstart config, shipped inside the package (works from any folder)."""
    return Path(str(resources.files("nif_lightning") / "configs" / "quickstart.yaml"))


def register(subparsers) -> None:
    run = subparsers.add_parser(
        "run",
        help="the whole method in one command: gen -> filter -> train -> preview, plus a report",
        description=(
            "Run the stages of the method in order from one YAML config — gen (documents ->\n"
            "teacher -> Arrow shards), the optional filter, train (LoRA, adapter export, merge)\n"
            "and preview (base vs fine-tuned answers) — into one run folder, then write\n"
            "report.md, report.json and loss.png there. The whole config is checked first and\n"
            "every problem reported at once. Re-running after a kill continues where it\n"
            "stopped: finished stages are skipped, interrupted ones resume.\n\n"
            "The `gen:` and `filter:` sections take `nif gen` / `nif filter` options as keys;\n"
            "the other sections are `nif train`'s (see `nif gen --help`, `nif train --help`).\n\n"
            "examples:\n"
            "  nif run                                  # the embedded quickstart: CPU, offline\n"
            "  nif run configs/paper/llama3-8b.yaml     # the paper's recipe on a V100 node"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument(
        "config",
        nargs="?",
        default=None,
        help="run config YAML (default: the embedded quickstart, "
        "nif_lightning/configs/quickstart.yaml)",
    )
    run.add_argument(
        "--force",
        action="store_true",
        help="train even when the memory plan (checked on CUDA before `gen`) does not fit "
        "(default: off)",
    )
    run.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import sys

    from nif_lightning.config import load_run_config
    from nif_lightning.recipes.run import StageFailed, run_pipeline

    cfg = load_run_config(args.config or default_config())
    try:
        report = run_pipeline(cfg, force=args.force)
    except StageFailed as err:
        print(f"nif run: {err}", file=sys.stderr)
        return 1
    except (FileNotFoundError, ValueError) as err:  # a stage refused its input, as on its own
        print(f"nif run: {err}", file=sys.stderr)
        return 2
    if report is None:
        return 0  # a training process of another GPU: rank 0 reports
    out = report["outputs"]
    print(f"\nrun folder: {cfg.run_dir}")
    print(f"  report:        {cfg.run_dir / 'report.md'} (and report.json, loss.png)")
    print(f"  data:          {cfg.train_data_dir}")
    print(f"  adapter:       {out['adapter']}  (PEFT format)")
    print(f"  merged model:  {out['merged']}")
    if report["previews"]:
        print(f"  previews:      {cfg.run_dir / 'previews.json'}")
    return 0
