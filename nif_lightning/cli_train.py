"""`nif tiny-model` and `nif merge`: thin handlers that parse, check, build and call.

Heavy libraries (torch, transformers, peft) are imported inside the handlers so `nif --help`
answers at once.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers) -> None:
    tiny = subparsers.add_parser(
        "tiny-model",
        help="write a tiny random-initialised Llama + local tokenizer (offline base model)",
        description=(
            "Write a tiny random-initialised LlamaForCausalLM (hidden 64, 2 layers) and a "
            "byte-level BPE tokenizer trained on the built-in corpus; it loads with the standard "
            "from_pretrained calls.\n\nexample:\n  nif tiny-model --out runs/tiny"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tiny.add_argument("--out", required=True, help="output folder (created)")
    tiny.add_argument("--seed", type=int, default=0, help="weight-init seed (default 0)")
    tiny.set_defaults(func=_tiny_model)

    merge = subparsers.add_parser(
        "merge",
        help="merge a LoRA adapter into its base ('lora') or another model ('lora-base')",
        description=(
            "Merge a PEFT adapter into a full model saved with save_pretrained (safetensors) "
            "and its tokenizer.\n\nexamples:\n"
            "  nif merge --base runs/tiny --adapter runs/q/adapter --out runs/q/merged\n"
            "  nif merge --base meta-llama/Llama-2-7b-hf --adapter runs/p/adapter \\\n"
            "      --into meta-llama/Llama-2-7b-chat-hf --out runs/p/merged-chat"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    merge.add_argument("--base", required=True, help="model folder the adapter was trained on")
    merge.add_argument("--adapter", required=True, help="PEFT adapter folder")
    merge.add_argument("--out", required=True, help="output folder for the merged model")
    merge.add_argument(
        "--into", default=None, help="merge into this model instead (lora-base: W + scaling*B A)"
    )
    merge.set_defaults(func=_merge)
    register_train(subparsers)


def _tiny_model(args: argparse.Namespace) -> int:
    from nif_lightning.tiny_model import save_tiny_model

    out = save_tiny_model(args.out, seed=args.seed)
    print(f"tiny model written to {out}")
    return 0


def _merge(args: argparse.Namespace) -> int:
    from nif_lightning.merge import merge_adapter

    try:
        out = merge_adapter(Path(args.base), Path(args.adapter), Path(args.out), into=args.into)
    except (FileNotFoundError, ValueError) as err:
        print(f"nif merge: {err}", file=sys.stderr)
        return 2
    print(f"merged model written to {out}")
    return 0


def register_train(subparsers) -> None:
    train = subparsers.add_parser(
        "train",
        help="LoRA-fine-tune a causal LM on nif data; export the adapter and a merged model",
        description=(
            "Train LoRA adapters with Lightning (DeepSpeed ZeRO on CUDA, the default strategy on "
            "CPU), then write OUT/adapter (PEFT) and OUT/merged (safetensors + tokenizer). On "
            "CUDA the run's memory is planned first for this GPU (as `nif plan` does) and a plan "
            "that does not fit is refused unless --force.\n\n"
            "example:\n  nif train --config configs/quickstart.yaml --max-steps 20"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument("--config", default=None, help="YAML config (see configs/)")
    train.add_argument("--model", default=None, help="hub id or local model folder")
    train.add_argument("--data", default=None, help="dataset folder from `nif gen`/`nif filter`")
    train.add_argument("--out", default=None, help="output folder")
    train.add_argument("--max-steps", type=int, default=None, help="optimizer steps")
    train.add_argument("--devices", default=None, help="devices per node ('auto' or a count)")
    train.add_argument("--num-nodes", type=int, default=None, help="nodes (SLURM/torchrun)")
    train.add_argument("--strategy", default=None, help="auto | deepspeed | ddp")
    train.add_argument("--precision", default=None, help="32-true | 16-mixed | bf16-mixed")
    train.add_argument(
        "--resume", action="store_true", help="continue from OUT/checkpoints/last.ckpt"
    )
    train.add_argument(
        "--force",
        action="store_true",
        help="start even when the memory plan (printed first on CUDA; see `nif plan`) does not fit",
    )
    train.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> int:
    from nif_lightning.config import load_config

    devices = args.devices
    if devices is not None and devices != "auto":
        devices = int(devices)
    overrides = {
        "model.path": args.model,
        "data.dir": args.data,
        "out": args.out,
        "trainer.max_steps": args.max_steps,
        "trainer.devices": devices,
        "trainer.num_nodes": args.num_nodes,
        "trainer.strategy": args.strategy,
        "trainer.precision": args.precision,
    }
    try:
        cfg = load_config(args.config, overrides)
        _check_inputs(cfg, resume=args.resume)
    except (FileNotFoundError, ValueError) as err:
        print(f"nif train: {err}", file=sys.stderr)
        return 2
    from nif_lightning.memory import PlanError
    from nif_lightning.training import run_training

    try:
        out = run_training(cfg, resume=args.resume, force=args.force)
    except PlanError as err:  # incl. a plan that does not fit
        print(f"nif train: {err}", file=sys.stderr)
        return 2
    print(f"adapter: {out / 'adapter'}\nmerged model: {out / 'merged'}")
    return 0


def _check_inputs(cfg, *, resume: bool) -> None:
    """Bad input fails here, before any model is loaded."""
    from nif_lightning.hub import check_model

    if not cfg.model.path:
        raise ValueError("no model: pass `--model` or set `model.path` in the config")
    if not (cfg.model.tiny and not Path(cfg.model.path).exists()):  # else run_training writes it
        check_model(cfg.model.path)
    if not cfg.data.dir:
        raise ValueError("no data: pass `--data` or set `data.dir` in the config")
    data = Path(cfg.data.dir)
    if not data.is_dir():
        raise FileNotFoundError(f"`--data` {data} is not a directory")
    if not list((data / "shards").glob("*.arrow")):
        raise ValueError(f"`--data` {data} holds no shards/*.arrow (run `nif gen` first)")
    if resume and not (Path(cfg.out) / "checkpoints" / "last.ckpt").exists():  # DeepSpeed: a folder
        raise FileNotFoundError(f"`--resume`: no {Path(cfg.out) / 'checkpoints' / 'last.ckpt'}")
