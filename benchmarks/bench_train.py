"""Training throughput on the same data: the paper's stack vs ours, padded and packed.

    python -m benchmarks.bench_train                        # CPU, the tiny model
    python -m benchmarks.bench_train --model PATH --dtype float16 --steps 50 --cutoff 1024
                                                            # GPU, e.g. a 1B-class Llama
    python -m benchmarks.bench_train --model synthetic-1b --dtype float16 --steps 20
                                                            # GPU, offline: random 1B weights

(a) HF Transformers + PEFT with padded batches: the stack the paper used (LLaMA-Factory);
(b) ours, padded: `NifLoraModule` (fused LoRA kernels, chunked loss) on the same padded batches;
(c) ours, packed: the same model on packed rows with exact per-sample attention.

The data: prompt + completion lengths drawn log-normal (median ~300 tokens, capped at the
cutoff), as OpenWebText halves are. Each variant runs `--steps` optimizer steps (forward,
backward, AdamW) per round after warm-up; rounds interleave the variants and medians are
reported: real tokens/s, processed tokens/s (padding included), the non-padding share, peak
memory on GPU, and the ratios (c)/(a), (c)/(b). Rows go to benchmarks/results/train.jsonl.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import tempfile
import time

import torch

from benchmarks.common import markdown_table, write_rows
from nif_lightning.packing import collate_packed, collate_padded, pack, tokenize_vanilla

# Llama-3.2-1B's shape. Throughput does not depend on the weights, so random ones let an offline
# GPU machine measure a 1B-class model without the Hub (`--model synthetic-1b`).
SYNTHETIC_1B = {
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "max_position_embeddings": 4096,
    "rope_theta": 500000.0,
    "tie_word_embeddings": True,
}


def synthetic_1b_config(tokenizer):
    from transformers import LlamaConfig

    return LlamaConfig(
        **SYNTHETIC_1B,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )


def save_synthetic_1b(out_dir: str) -> str:
    """A random-initialised Llama of Llama-3.2-1B's shape (fp16 on disk, ~2.5 GB) with the tiny
    tokenizer, whose ids all lie within the model's vocabulary."""
    from transformers import LlamaForCausalLM

    from nif_lightning.tiny_model import build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = LlamaForCausalLM(synthetic_1b_config(tok)).half()
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)
    return out_dir


def make_samples(n: int, cutoff: int, vocab: int, seed: int = 0):
    rng = random.Random(seed)
    samples = []
    for _ in range(n):
        total = min(cutoff, max(16, int(math.exp(rng.gauss(math.log(300), 0.6)))))
        prompt_len = max(1, int(total * rng.uniform(0.25, 0.75)))
        prompt = [rng.randrange(3, vocab) for _ in range(prompt_len)]
        response = [rng.randrange(3, vocab) for _ in range(max(1, total - prompt_len - 1))]
        samples.append(tokenize_vanilla(prompt, response, eos_id=2, cutoff_len=cutoff))
    return samples


def padded_batches(samples, micro_batch: int, pad_id: int, seed: int = 0):
    order = list(range(len(samples)))
    random.Random(seed).shuffle(order)
    groups = [order[i : i + micro_batch] for i in range(0, len(order), micro_batch)]
    return [collate_padded([samples[i] for i in g], pad_id) for g in groups]


def packed_batches(samples, budget: int, seed: int = 0):
    return [
        collate_packed([samples[i] for i in g])
        for g in pack([len(s) for s in samples], budget, seed)
    ]


def _step_fn(model, device, loss_fn=None):
    """One optimizer step on a batch; `loss_fn(inputs)` replaces the model's own loss."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    model.train()

    def step(batch):
        inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch["inputs"].items()}
        loss = loss_fn(inputs) if loss_fn else model(**inputs).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def measure(step, batches, steps: int, device: str) -> dict:
    """One timed round of `steps` optimizer steps."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    tokens = slots = 0
    t0 = time.perf_counter()
    for i in range(steps):
        batch = batches[i % len(batches)]
        step(batch)
        tokens += batch["stats"]["tokens"]
        slots += batch["stats"]["slots"]
    if device == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    out = {"tokens_per_s": tokens / dt, "processed_tokens_per_s": slots / dt}
    out["non_padding_share"] = tokens / slots
    if device == "cuda":
        out["peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def compare(variants: dict, steps: dict, device: str, rounds: int) -> dict:
    """Rounds interleave the variants (a, b, c, a, b, c, ...) so that a noisy neighbour or a
    clock change hits all of them alike; each figure is the median over rounds."""
    for step, batches in variants.values():  # warm-up: kernels compiled, caches settled
        for batch in batches[:2]:
            step(batch)
    per_round = {name: [] for name in variants}
    for _ in range(rounds):
        for name, (step, batches) in variants.items():
            per_round[name].append(measure(step, batches, steps[name], device))
    result = {}
    for name, runs in per_round.items():
        result[name] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        result[name]["rounds"] = rounds
    return result


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--model",
        default=None,
        help="HF model folder/id, or synthetic-1b (random, Llama-3.2-1B's shape); default: tiny",
    )
    ap.add_argument("--dtype", default=None, help="float32 | float16 | bfloat16")
    ap.add_argument("--steps", type=int, default=10, help="padded steps per round")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")
    ap.add_argument("--samples", type=int, default=400)
    ap.add_argument("--cutoff", type=int, default=1024)
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = args.dtype or ("float16" if device == "cuda" else "float32")

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from nif_lightning.config import LORA_TARGETS
    from nif_lightning.module import NifLoraModule

    model_path = args.model
    if model_path is None:
        from nif_lightning.tiny_model import save_tiny_model

        model_path = str(save_tiny_model(tempfile.mkdtemp(prefix="nif-bench-")))
    elif model_path == "synthetic-1b":
        model_path = str(save_synthetic_1b(tempfile.mkdtemp(prefix="nif-bench-1b-")))
    tok = AutoTokenizer.from_pretrained(model_path)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    samples = make_samples(args.samples, args.cutoff, len(tok))
    padded = padded_batches(samples, args.micro_batch, pad)
    packed = packed_batches(samples, args.micro_batch * args.cutoff)
    steps_padded = args.steps
    # Same number of samples seen: a packed row holds more samples than a padded batch.
    steps_packed = max(1, round(args.steps * len(packed) / len(padded)))

    torch_dtype = getattr(torch, dtype)
    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch_dtype).to(device)
    stock = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=list(LORA_TARGETS)))
    ours = NifLoraModule(model_path, dtype=dtype)
    ours.configure_model()
    ours.to(device)
    stock_step = _step_fn(stock, device)
    ours_step = _step_fn(ours.model, device, loss_fn=lambda inputs: ours.lm_loss(inputs)[0])
    variants = {
        "a_hf_peft_padded": (stock_step, padded),
        "b_ours_padded": (ours_step, padded),
        "c_ours_packed": (ours_step, packed),
    }
    steps = {"a_hf_peft_padded": steps_padded, "b_ours_padded": steps_padded}
    steps["c_ours_packed"] = steps_packed
    results = compare(variants, steps, device, args.rounds)
    a, b, c = results["a_hf_peft_padded"], results["b_ours_padded"], results["c_ours_packed"]
    ratios = {
        "c_over_a_tokens_per_s": c["tokens_per_s"] / a["tokens_per_s"],
        "c_real_over_b_processed": c["tokens_per_s"] / b["processed_tokens_per_s"],
        "packed_non_padding_share": c["non_padding_share"],
        "packed_budget_fill": sum(len(s) for s in samples)
        / (len(packed) * args.micro_batch * args.cutoff),
    }
    tag = {"model": args.model or "tiny", "dtype": dtype}
    rows = [{"variant": k, **tag, **v} for k, v in results.items()]
    print(
        markdown_table(
            rows, ["variant", "tokens_per_s", "processed_tokens_per_s", "non_padding_share"]
        )
    )
    for k, v in ratios.items():
        print(f"{k}: {v:.3f}")
    rows.append({"variant": "ratios", **tag, **ratios})
    if not args.no_write:
        print("rows written to", write_rows("train", rows))
    return rows


if __name__ == "__main__":
    main()
