"""The memory plan of each paper recipe on each GPU, and the probe behind it checked on real
tensors.

    python -m benchmarks.bench_memory            # every recipe x GPU; probe check at 256 tokens
    python -m benchmarks.bench_memory --quick    # the CPU smoke test: one recipe, 32 tokens

(a) `plan` rows: `nif plan` of configs/paper/*.yaml on 8 of each GPU: the per-GPU GB columns,
    whether it fits, and the gradient checkpointing `auto` chose.
(b) `probe` rows: the plan's activations come from a forward + backward on the `meta` device
    with a stand-in for the attention kernel. The baseline here is the same one-layer model of
    each recipe's shape (hidden, intermediate, heads, kv-heads, LoRA r and targets) run for real
    on this machine through the training path (`kernels.use_fused_lora`, the packed attention
    of `nif_lightning.attention`): the bytes saved for backward and the peak of live tensors over
    forward + backward, measured, next to the meta probe's for the same shape and tokens, and
    their ratios. On a CPU the real layer runs in
    fp32 (CPU fp16 matmuls are ~6x slower and the bytes scale exactly with the dtype); on a GPU
    in the recipe's fp16. Rows go to benchmarks/results/memory.jsonl.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from benchmarks.common import markdown_table, write_rows
from nif_lightning.config import load_config
from nif_lightning.memory import GPUS_GB, load_model_shape, packed_inputs, plan_memory, probe_model
from nif_lightning.tensor_bytes import live_tensor_bytes, saved_tensor_bytes

RECIPES = sorted((Path(__file__).parents[1] / "configs" / "paper").glob("*.yaml"))
_TERMS = ("weights", "trainable_states", "activations", "logits", "overhead", "total")


def plan_rows(recipes: list[Path], gpus: list[str]) -> list[dict]:
    rows = []
    for recipe in recipes:
        cfg = load_config(recipe)
        for gpu in gpus:
            plan = plan_memory(cfg, gpu).to_json()
            row = {"kind": "plan", "recipe": recipe.stem, "gpu": gpu, "devices": plan["devices"]}
            row.update({f"{k}_gb": plan["per_gpu_gb"][k] for k in _TERMS})
            row["capacity_gb"] = plan["capacity_gb"]
            row["fits"] = plan["fits"]
            row["gradient_checkpointing"] = plan["gradient_checkpointing"]
            row["strategy"] = plan["strategy"]
            rows.append(row)
    return rows


def _measure(shape, cfg, tokens: int, dtype: str, device: str) -> tuple[int, int]:
    """(bytes saved for backward, peak live bytes over forward + backward) of one decoder
    layer of `shape` on `device`, built and fed as the planner's probe is."""
    model = probe_model(shape, layers=1, dtype=dtype, lora=cfg.lora, device=device)
    decoder = model.get_base_model().get_decoder()
    inputs = packed_inputs(tokens, max(1, tokens // 2), device)  # two packed samples
    with saved_tensor_bytes(model) as saved:
        decoder(**inputs)
    with live_tensor_bytes() as live:
        hidden = decoder(**inputs).last_hidden_state
        hidden.backward(torch.empty_like(hidden))
    return saved.total, live.peak


def probe_row(recipe: Path, tokens: int, device: str) -> dict:
    """One decoder layer of the recipe's shape: real tensors here vs the `meta` probe."""
    cfg = load_config(recipe)
    dtype = cfg.model.dtype if device == "cuda" else "float32"
    shape = load_model_shape(cfg.model.path)
    shape.tie_word_embeddings = True  # no lm_head copy: the decoder alone is measured
    t0 = time.perf_counter()
    saved, peak = _measure(shape, cfg, tokens, dtype, device)
    seconds = time.perf_counter() - t0
    predicted_saved, predicted_peak = _measure(shape, cfg, tokens, dtype, "meta")
    return {
        "kind": "probe",
        "recipe": recipe.stem,
        "model": cfg.model.path,
        "layers": 1,
        "tokens": tokens,
        "dtype": dtype,
        "measured_saved_mib": saved / 2**20,
        "predicted_saved_mib": predicted_saved / 2**20,
        "saved_ratio": predicted_saved / saved,
        "measured_peak_mib": peak / 2**20,
        "predicted_peak_mib": predicted_peak / 2**20,
        "peak_ratio": predicted_peak / peak,
        "real_layer_s": seconds,
    }


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="one recipe, all GPUs, 32 tokens")
    ap.add_argument("--tokens", type=int, default=256, help="tokens of the real probe")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    recipes = RECIPES[:1] if args.quick else RECIPES
    tokens = 32 if args.quick else args.tokens

    plans = plan_rows(recipes, list(GPUS_GB))
    probes = []
    for recipe in recipes:
        probes.append(probe_row(recipe, tokens, device))
        row = probes[-1]
        print(f"{recipe.stem}: saved {row['saved_ratio']:.4f}, peak {row['peak_ratio']:.4f}")
    cols = ["recipe", "gpu", "gradient_checkpointing"]
    cols += [f"{k}_gb" for k in _TERMS] + ["capacity_gb", "fits"]
    print(markdown_table(plans, cols))
    print()
    cols = ["recipe", "tokens", "dtype", "measured_saved_mib", "predicted_saved_mib"]
    cols += ["saved_ratio", "measured_peak_mib", "predicted_peak_mib", "peak_ratio"]
    print(markdown_table(probes, cols))
    rows = plans + probes
    if not args.no_write:
        print("rows written to", write_rows("memory", rows))
    return rows


if __name__ == "__main__":
    main()
