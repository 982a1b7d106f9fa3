"""Our LoRA linear vs PEFT's LoRA `Linear` vs an unfused torch chain, per projection shape,
each against its roofline.

    python -m benchmarks.bench_lora_kernel            # GPU: the full grid, fp16
    python -m benchmarks.bench_lora_kernel --quick    # small grid (what CPU runs use)

Shapes: the q/k/v/o/gate/up/down projections of Llama-2-7B and Llama-3-8B, with 4096-16384
tokens and r in {8, 16, 64}. For each: forward and forward+backward time (median and 20/80
percentiles, `triton.testing.do_bench` on a GPU), peak memory of forward+backward, and the
ratios ours/PEFT. Variants on a GPU: "peft", "unfused", "ours" (the default path: cuBLAS GEMMs
and Triton LoRA side) and "fused" (the Triton GEMM with the LoRA epilogue).

Every variant runs the way training runs it, under fp16 autocast: PEFT keeps its adapters in
fp32 (`autocast_adapter_dtype`), and without autocast its LoRA branch would run in fp32 with
fp32 M x N intermediates, inflating the baseline 1.5-1.9x.

On a known GPU each row carries the roofline of every variant (`benchmarks/roofline.py`: the
least time from bytes and FLOPs at the device's peaks), the measured fraction of it, and the
ceiling on any speedup over PEFT (PEFT's roofline over the two GEMMs'). An unknown GPU gets no
roofline, and says so. On a CPU "ours" is the torch path (the Triton kernels only run
interpreted there, which says nothing about speed), so the ratios are ~1 by construction and
there is no roofline; the run keeps the benchmark from rotting. Rows go to
benchmarks/results/lora_kernel.jsonl.
"""

from __future__ import annotations

import argparse

import torch

from benchmarks import roofline
from benchmarks.common import markdown_table, time_fn, write_rows

# (model, projection) -> (K in, N out)
SHAPES = {
    "llama2-7b": {
        "q": (4096, 4096),
        "k": (4096, 4096),
        "v": (4096, 4096),
        "o": (4096, 4096),
        "gate": (4096, 11008),
        "up": (4096, 11008),
        "down": (11008, 4096),
    },
    "llama3-8b": {
        "q": (4096, 4096),
        "k": (4096, 1024),
        "v": (4096, 1024),
        "o": (4096, 4096),
        "gate": (4096, 14336),
        "up": (4096, 14336),
        "down": (14336, 4096),
    },
}


def _peft_layer(K, N, r, dtype, device):
    """PEFT's own LoRA `Linear` around a frozen projection, built the way users build it."""
    from peft import LoraConfig, get_peft_model

    holder = torch.nn.Module()
    holder.proj = torch.nn.Linear(K, N, bias=False, device=device, dtype=dtype)
    model = get_peft_model(holder, LoraConfig(r=r, lora_alpha=2 * r, target_modules=["proj"]))
    layer = model.base_model.model.proj
    torch.nn.init.normal_(layer.lora_B["default"].weight, std=0.02)  # PEFT inits B to zero
    return layer


# variant -> its roofline model (the unfused chain moves PEFT's bytes)
MODELS = {"peft": "peft", "unfused": "peft", "ours": "ours", "fused": "fused"}


def _variants(layer, backend, device):
    from nif_kernels import lora_linear

    W = layer.base_layer.weight
    A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    s = layer.scaling["default"]

    def unfused(x):  # the chain PEFT's forward amounts to, written out (autocast casts A, B)
        return x @ W.t() + (x @ A.t()) @ B.t() * s

    out = {
        "peft": layer,
        "unfused": unfused,
        "ours": lambda x: lora_linear(x, W, A, B, s, backend=backend),
    }
    if device == "cuda":  # on a CPU the Triton GEMM only runs interpreted
        out["fused"] = lambda x: lora_linear(x, W, A, B, s, backend="fused")
    return out


def bench(K, N, r, tokens, dtype, device, backend):
    layer = _peft_layer(K, N, r, dtype, device)
    x = torch.randn(tokens, K, device=device, dtype=dtype, requires_grad=True)
    dy = torch.randn(tokens, N, device=device, dtype=dtype)
    # Training's 16-mixed: fp16 autocast on a GPU (fp32 adapters cast per call, as in training).
    amp = dict(device_type=device, dtype=torch.float16, enabled=device == "cuda")
    out = {}
    for name, fn in _variants(layer, backend, device).items():

        def fwd(fn=fn):
            with torch.no_grad(), torch.autocast(**amp):
                fn(x)

        def fwd_bwd(fn=fn):
            with torch.autocast(**amp):
                y = fn(x)
            y.backward(dy)

        f, fb = time_fn(fwd), time_fn(fwd_bwd)
        mem = None
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            fwd_bwd()
            torch.cuda.synchronize()
            mem = (torch.cuda.max_memory_allocated() - before) / 2**20
        out[name] = (f, fb, mem)
    return out


def _roofline_columns(row: dict, peaks: roofline.Peaks | None, elem_bytes: int) -> None:
    """Each variant's roofline, its measured fraction of it, and the ceiling over PEFT."""
    if peaks is None:
        row["roofline"] = None
        return
    M, K, N, r = row["tokens"], row["K"], row["N"], row["r"]
    row["roofline"] = peaks.name
    floor = roofline.roofline_ms("floor", M, K, N, r, peaks, elem_bytes)
    row["floor_fwd_ms"], row["floor_fwdbwd_ms"] = floor["fwd"], floor["fwdbwd"]
    row["ceiling_speedup_vs_peft"] = roofline.ceiling_speedup(M, K, N, r, peaks, elem_bytes)
    for name, model in MODELS.items():
        if f"{name}_fwdbwd_ms" not in row:
            continue
        t = roofline.roofline_ms(model, M, K, N, r, peaks, elem_bytes)
        row[f"{name}_roofline_fwd_ms"] = t["fwd"]
        row[f"{name}_roofline_fwdbwd_ms"] = t["fwdbwd"]
        row[f"{name}_roofline_fwd_fraction"] = t["fwd"] / row[f"{name}_fwd_ms"]
        row[f"{name}_roofline_fraction"] = t["fwdbwd"] / row[f"{name}_fwdbwd_ms"]


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="a small grid (CPU)")
    ap.add_argument("--no-write", action="store_true", help="print only")
    ap.add_argument(
        "--model", choices=sorted(SHAPES), help="only this model's projections (default: all)"
    )
    args = ap.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    quick = args.quick or device == "cpu"
    dtype = torch.float16 if device == "cuda" else torch.float32
    backend = "auto" if device == "cuda" else "torch"
    peaks = roofline.device_peaks(torch.cuda.get_device_name()) if device == "cuda" else None
    if peaks is None:
        where = torch.cuda.get_device_name() if device == "cuda" else "a CPU"
        print(f"no roofline: the peak table (benchmarks/roofline.py) does not cover {where}")
    models = {"llama2-7b": {"q": (512, 512), "gate": (512, 1376)}} if quick else SHAPES
    if args.model and not quick:
        models = {args.model: SHAPES[args.model]}
    token_grid = [256] if quick else [4096, 16384]
    ranks = [8, 64] if quick else [8, 16, 64]
    rows = []
    for model, projs in models.items():
        for proj, (K, N) in projs.items():
            for tokens in token_grid:
                for r in ranks:
                    res = bench(K, N, r, tokens, dtype, device, backend)
                    row = {
                        "model": model,
                        "proj": proj,
                        "K": K,
                        "N": N,
                        "tokens": tokens,
                        "r": r,
                        "dtype": str(dtype).removeprefix("torch."),
                        "autocast": device == "cuda",
                        "ours_path": backend,
                    }
                    for name, (f, fb, mem) in res.items():
                        row[f"{name}_fwd_ms"] = f["median_ms"]
                        row[f"{name}_fwdbwd_ms"] = fb["median_ms"]
                        row[f"{name}_fwdbwd_p20_ms"] = fb["p20_ms"]
                        row[f"{name}_fwdbwd_p80_ms"] = fb["p80_ms"]
                        if mem is not None:
                            row[f"{name}_peak_mib"] = mem
                    row["speedup_fwd_vs_peft"] = row["peft_fwd_ms"] / row["ours_fwd_ms"]
                    row["speedup_fwdbwd_vs_peft"] = row["peft_fwdbwd_ms"] / row["ours_fwdbwd_ms"]
                    if "fused_fwdbwd_ms" in row:
                        row["fused_speedup_fwdbwd_vs_peft"] = (
                            row["peft_fwdbwd_ms"] / row["fused_fwdbwd_ms"]
                        )
                    _roofline_columns(row, peaks, dtype.itemsize)
                    rows.append(row)
                    line = (
                        f"{model:10s} {proj:5s} tokens={tokens:6d} r={r:3d}  "
                        f"fwd+bwd ours {row['ours_fwdbwd_ms']:.3f} ms, "
                        f"PEFT {row['peft_fwdbwd_ms']:.3f} ms -> "
                        f"{row['speedup_fwdbwd_vs_peft']:.2f}x"
                    )
                    if peaks is not None:
                        line += (
                            f" (ceiling {row['ceiling_speedup_vs_peft']:.2f}x; of roofline: "
                            f"ours {row['ours_roofline_fraction']:.2f}, "
                            f"PEFT {row['peft_roofline_fraction']:.2f})"
                        )
                    print(line, flush=True)
    cols = [
        "model",
        "proj",
        "tokens",
        "r",
        "peft_fwdbwd_ms",
        "ours_fwdbwd_ms",
        "speedup_fwd_vs_peft",
        "speedup_fwdbwd_vs_peft",
    ]
    if device == "cuda":
        cols += ["fused_fwdbwd_ms", "fused_speedup_fwdbwd_vs_peft"]
    if peaks is not None:
        cols += [
            "ceiling_speedup_vs_peft",
            "peft_roofline_fraction",
            "ours_roofline_fraction",
            "fused_roofline_fraction",
        ]
    print(markdown_table(rows, cols))
    if not args.no_write:
        print("rows written to", write_rows("lora_kernel", rows))
    return rows


if __name__ == "__main__":
    main()
