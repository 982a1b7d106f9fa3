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
