"""`nif tiny-model`, `nif merge` and `nif train`: thin handlers that parse, check, build and call.

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
    tiny.add_argument("--out", required=True, help="output folder (created) (required)")
    tiny.add_argument("--seed", type=int, default=0, help="weight-init seed (default: 0)")
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
    merge.add_argument(
        "--base", required=True, help="model folder the adapter was trained on (required)"
    )
    merge.add_argument("--adapter", required=True, help="PEFT adapter folder (required)")
    merge.add_argument("--out", required=True, help="output folder for the merged model (required)")
    merge.add_argument(
        "--into",
        default=None,
        help="merge into this model instead (lora-base: W + scaling*B A) (default: none, the base)",
    )
    merge.set_defaults(func=_merge)
    register_train(subparsers)


def _tiny_model(args: argparse.Namespace) -> int:
    from data_gen.schema import ConfigError
    from data_gen.store import folder_problem
    from nif_lightning.tiny_model import save_tiny_model

    problem = folder_problem(args.out, what="`--out`")
    if problem:
        raise ConfigError([problem], source="")

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


# Short flags for the options most often changed from the command line.
TRAIN_ALIASES = {
    "model.path": "--model",
    "data.dir": "--data",
    "trainer.max_steps": "--max-steps",
    "trainer.devices": "--devices",
    "trainer.num_nodes": "--num-nodes",
    "trainer.strategy": "--strategy",
    "trainer.precision": "--precision",
}


def register_train(subparsers) -> None:
    from data_gen.schema import add_section_arguments
    from nif_lightning.config import TrainConfig

    train = subparsers.add_parser(
        "train",
        help="LoRA-fine-tune a causal LM on nif data; export the adapter and a merged model",
        description=(
            "Train LoRA adapters with Lightning (DeepSpeed ZeRO on CUDA, the default strategy on "
            "CPU), then write OUT/adapter (PEFT) and OUT/merged (safetensors + tokenizer). On "
            "CUDA the run's memory is planned first for this GPU (as `nif plan` does) and a plan "
            "that does not fit is refused unless --force.\n\n"
            "Every key of the YAML config is also a flag (`lora: {r: 16}` is `--lora.r 16`); a "
            "flag overrides the config file.\n\n"
            "example:\n  nif train --config configs/quickstart.yaml --max-steps 20"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument("--config", default=None, help="YAML config (see configs/; default: none)")
    train.add_argument(
        "--resume",
        action="store_true",
        help="continue from OUT/checkpoints/last.ckpt (default: off)",
    )
    train.add_argument(
        "--force",
        action="store_true",
        help="start even when the memory plan (printed first on CUDA; see `nif plan`) does not "
        "fit (default: off)",
    )
    add_section_arguments(train, TrainConfig, aliases=TRAIN_ALIASES)
    train.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> int:
    from data_gen.schema import ConfigError, dotted_given
    from nif_lightning.config import TrainConfig, check_train_inputs, load_config

    cfg = load_config(args.config, dotted_given(args, TrainConfig))
    problems = check_train_inputs(cfg, flags=True)
    from nif_lightning.recipes.train import checkpoint_to_resume, is_global_zero, run_training

    out = Path(cfg.out)
    # What training would use; asked of global rank 0 alone (see `run_training`).
    if args.resume and is_global_zero() and checkpoint_to_resume(out, resume=True) is None:
        problems.append(
            f"`--resume`: no checkpoint to continue in {out} (checkpoints/last.ckpt or a SLURM "
            "hpc_ckpt_*.ckpt)"
        )
    if problems:
        raise ConfigError(problems, source="")

    out = run_training(cfg, resume=args.resume, force=args.force)
    if is_global_zero():  # the one rank that wrote them
        print(f"adapter: {out / 'adapter'}\nmerged model: {out / 'merged'}")
    return 0
