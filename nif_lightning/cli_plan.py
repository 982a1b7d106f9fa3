"""`nif plan`: per-GPU memory of a training config, predicted before anything is launched.

A thin handler: parse, load the config, call `nif_lightning.memory.plan_memory`, print.
"""

from __future__ import annotations

import argparse
import json
import sys

from nif_lightning.memory import GPUS_GB  # memory.py imports torch only inside functions

_GPUS = tuple(GPUS_GB)


def register(subparsers) -> None:
    plan = subparsers.add_parser(
        "plan",
        help="predict per-GPU memory of `nif train` with a config; say whether it fits",
        description=(
            "Predict per-GPU memory of `nif train --config FILE` before launching it: frozen "
            "weights, LoRA params + grads + Adam states, activations (every tensor of a forward "
            "and backward of 1- and 2-layer meta-device copies of the model, tracked), the "
            "chunked loss, and framework overhead. Works offline for the paper's models and "
            "local model folders.\n\n"
            "exit status: 0 it fits, 1 it does not (the output lists the knobs that would make "
            "it fit), 2 bad input.\n\n"
            "example:\n  nif plan --config configs/paper/llama3-8b.yaml --gpu v100-32gb"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    plan.add_argument("--config", required=True, help="training YAML (see configs/) (required)")
    plan.add_argument(
        "--gpu", default="v100-32gb", help=f"one of {', '.join(_GPUS)} (default: v100-32gb)"
    )
    plan.add_argument(
        "--devices", type=int, default=None, help="GPUs per node (default: trainer.devices)"
    )
    plan.add_argument(
        "--json", action="store_true", help="print one JSON object (default: off, a table)"
    )
    plan.set_defaults(func=_plan)


def _plan(args: argparse.Namespace) -> int:
    from nif_lightning.config import load_config
    from nif_lightning.memory import plan_memory

    try:
        if args.gpu.lower() not in _GPUS:
            raise ValueError(f"`--gpu` {args.gpu!r} is unknown; choose one of {list(_GPUS)}")
        if args.devices is not None and args.devices < 1:
            raise ValueError(f"`--devices` must be >= 1, got {args.devices}")
        cfg = load_config(args.config)
        plan = plan_memory(cfg, args.gpu, devices=args.devices)
    except (FileNotFoundError, ValueError) as err:  # PlanError is a ValueError
        print(f"nif plan: {err}", file=sys.stderr)
        return 2
    print(json.dumps(plan.to_json(), indent=2) if args.json else plan.table())
    return 0 if plan.fits else 1
