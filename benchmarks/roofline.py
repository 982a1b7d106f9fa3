"""Roofline times for one LoRA projection (y = x W^T + s x A^T B^T), forward and backward.

    python -m benchmarks.roofline --device H100 --tokens 8192 -K 4096 -N 4096 -r 16

The benchmark reports each measured time next to the least time the device could need: every
kernel costs max(FLOPs / peak, bytes / bandwidth), counting only compulsory HBM traffic (each
operand read once, each result written once), and a variant's time is the sum over its kernels.
The kernel lists follow the review of issue 12 (../shared/reviews/kernels-on-real-gpus.md, §5):

- "floor": the two big GEMMs alone (x W^T forward, dY W backward; W is frozen). No LoRA
  implementation can beat it, so PEFT / floor is the ceiling on any speedup over PEFT.
- "peft": the floor plus what PEFT's LoRA branch adds, all of it memory traffic: forward
  M·K + 6·M·N elements (lora_A re-reads x, lora_B writes U, `* scaling` reads and writes it,
  the add reads two and writes one), backward 4·M·N + 5·M·K (the same in reverse, plus the sum
  of the two dX terms). The unfused torch chain moves the same bytes.
- "ours": the default path, cuBLAS for the GEMMs and Triton for the LoRA side: `_down` reads x
  once, `addmm_` adds the LoRA term into y in place (reads and writes y); backward `_ds_db` reads
  dY once, `addmm_` adds dS A into dX in place, `_da` reads x once.
- "fused": the Triton GEMM with the LoRA term in its epilogue (backend="fused"), plus `_down`,
  `_ds_db` and `_da`.

Triton's `tl.dot` uses tensor cores from sm_80 on; on sm_70 it is fp32 FMA, so the Triton
kernels are costed at the FMA peak there (where `_ds_db` is FLOP-bound, not memory-bound).
Peaks are dense fp16 figures from NVIDIA's datasheets; an unknown device has no roofline.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass


@dataclass(frozen=True)
class Peaks:
    """One device's peaks: HBM bytes/s, dense fp16 tensor-core FLOP/s, fp32 FMA FLOP/s."""

    name: str
    bandwidth: float
    tensor_flops: float
    fma_flops: float
    triton_mma: bool
    """Triton's `tl.dot` compiles to tensor-core MMA (sm_80+), not FMA (sm_70/75)."""


TB, TF = 1e12, 1e12

# Sources (NVIDIA datasheets; dense, i.e. without 2:4 sparsity):
# - V100 SXM2: "NVIDIA Tesla V100 GPU Architecture" whitepaper (2017): 900 GB/s HBM2,
#   125 TFLOPS tensor, 15.7 TFLOPS fp32. V100 PCIe: 900 GB/s, 112 / 14 TFLOPS.
# - A100: "NVIDIA A100 Tensor Core GPU" datasheet (2021): 312 TFLOPS fp16 tensor, 19.5 fp32;
#   40GB 1,555 GB/s, 80GB PCIe 1,935 GB/s, 80GB SXM 2,039 GB/s.
# - H100: "NVIDIA H100 Tensor Core GPU" datasheet (2023): SXM 3.35 TB/s, 989.5 TFLOPS fp16
#   tensor, 67 fp32; PCIe 2.0 TB/s, 756 / 51; NVL 3.9 TB/s, 835.5 / 60.
# - H200: "NVIDIA H200 Tensor Core GPU" datasheet (2024): SXM 4.8 TB/s, 989.5 / 67.
# Matched against torch.cuda.get_device_name(), most specific first.
PEAKS: tuple[tuple[tuple[str, ...], Peaks], ...] = (
    (("V100", "PCIE"), Peaks("V100 PCIe", 0.9 * TB, 112 * TF, 14 * TF, False)),
    (("V100",), Peaks("V100 SXM2", 0.9 * TB, 125 * TF, 15.7 * TF, False)),
    (("A100", "80GB", "PCIE"), Peaks("A100 80GB PCIe", 1.935 * TB, 312 * TF, 19.5 * TF, True)),
    (("A100", "80GB"), Peaks("A100 80GB SXM", 2.039 * TB, 312 * TF, 19.5 * TF, True)),
    (("A100",), Peaks("A100 40GB", 1.555 * TB, 312 * TF, 19.5 * TF, True)),
    (("H100", "PCIE"), Peaks("H100 PCIe", 2.0 * TB, 756 * TF, 51 * TF, True)),
    (("H100", "NVL"), Peaks("H100 NVL", 3.9 * TB, 835 * TF, 60 * TF, True)),
    (("H100",), Peaks("H100 SXM", 3.35 * TB, 990 * TF, 67 * TF, True)),
    (("H200",), Peaks("H200 SXM", 4.8 * TB, 990 * TF, 67 * TF, True)),
)


def device_peaks(device_name: str) -> Peaks | None:
    """The peaks of a device by its name ("Tesla V100-SXM2-32GB", "NVIDIA H100 80GB HBM3",
    or just "H100"); None when the table does not know it (no roofline then)."""
    name = device_name.upper()
    for keys, peaks in PEAKS:
        if all(k in name for k in keys):
            return peaks
    return None


@dataclass(frozen=True)
class Kernel:
    """One launch: its FLOPs, its compulsory HBM bytes, and which units do the math."""

    name: str
    flops: float
    bytes: float
    unit: str  # "tensor" (cuBLAS, or Triton on sm_80+) | "triton" (tensor or FMA by device)

    def ms(self, peaks: Peaks) -> float:
        tensor = self.unit == "tensor" or peaks.triton_mma
        flops_s = peaks.tensor_flops if tensor else peaks.fma_flops
        return 1e3 * max(self.flops / flops_s, self.bytes / peaks.bandwidth)


VARIANTS = ("floor", "peft", "ours", "fused")


def kernels(variant: str, M: int, K: int, N: int, r: int, e: int = 2) -> dict[str, list[Kernel]]:
    """The kernels of one variant, {"fwd": [...], "bwd": [...]}, for x (M, K), W (N, K), rank r,
    `e` bytes per element (2: fp16/bf16). dA/dB are fp32 (4 bytes)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    gemm_fwd = Kernel("x W^T", 2 * M * N * K, e * (M * K + N * K + M * N), "tensor")
    gemm_bwd = Kernel("dY W", 2 * M * N * K, e * (M * N + N * K + M * K), "tensor")
    if variant == "floor":
        return {"fwd": [gemm_fwd], "bwd": [gemm_bwd]}
    lora = r * (K + N)  # elements of A and B
    if variant == "peft":
        side_fwd = Kernel(
            "PEFT LoRA branch", 2 * M * r * (K + N), e * (M * K + 6 * M * N), "tensor"
        )
        side_bwd = Kernel(
            "PEFT LoRA grads", 4 * M * r * (K + N), e * (4 * M * N + 5 * M * K), "tensor"
        )
        return {"fwd": [gemm_fwd, side_fwd], "bwd": [gemm_bwd, side_bwd]}
    down = Kernel("_down", 2 * M * K * r, e * (M * K + M * r + r * K), "triton")
    ds_db = Kernel("_ds_db", 4 * M * N * r, e * (M * N + 2 * M * r + N * r) + 4 * N * r, "triton")
    da = Kernel("_da", 2 * M * K * r, e * (M * K + M * r) + 4 * r * K, "triton")
    if variant == "ours":
        add_y = Kernel("y += s T B^T", 2 * M * N * r, e * (2 * M * N + M * r + N * r), "tensor")
        add_dx = Kernel("dX += dS A", 2 * M * K * r, e * (2 * M * K + M * r + r * K), "tensor")
        return {"fwd": [gemm_fwd, down, add_y], "bwd": [ds_db, gemm_bwd, add_dx, da]}
    fused_fwd = Kernel(
        "_gemm_lora fwd", 2 * M * N * (K + r), gemm_fwd.bytes + e * (M * r + lora), "triton"
    )
    fused_dx = Kernel(
        "_gemm_lora dX", 2 * M * K * (N + r), gemm_bwd.bytes + e * (M * r + lora), "triton"
    )
    return {"fwd": [down, fused_fwd], "bwd": [ds_db, fused_dx, da]}


def roofline_ms(
    variant: str, M: int, K: int, N: int, r: int, peaks: Peaks, e: int = 2
) -> dict[str, float]:
    """{"fwd", "bwd", "fwdbwd"}: the least time in ms of the variant on the device."""
    ks = kernels(variant, M, K, N, r, e)
    fwd = sum(k.ms(peaks) for k in ks["fwd"])
    bwd = sum(k.ms(peaks) for k in ks["bwd"])
    return {"fwd": fwd, "bwd": bwd, "fwdbwd": fwd + bwd}


def ceiling_speedup(M: int, K: int, N: int, r: int, peaks: Peaks, e: int = 2) -> float:
    """PEFT's roofline over the floor's (forward + backward): no LoRA op can beat PEFT by more."""
    peft = roofline_ms("peft", M, K, N, r, peaks, e)["fwdbwd"]
    return peft / roofline_ms("floor", M, K, N, r, peaks, e)["fwdbwd"]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="H100", help="a device name the peak table knows")
    ap.add_argument("--tokens", "-M", type=int, default=8192)
    ap.add_argument("-K", type=int, default=4096)
    ap.add_argument("-N", type=int, default=4096)
    ap.add_argument("-r", type=int, default=16)
    a = ap.parse_args(argv)
    peaks = device_peaks(a.device)
    if peaks is None:
        raise SystemExit(f"no peaks known for {a.device!r}: no roofline")
    print(f"{peaks.name}, M={a.tokens} K={a.K} N={a.N} r={a.r}, fp16 (ms at peak)")
    floor = roofline_ms("floor", a.tokens, a.K, a.N, a.r, peaks)["fwdbwd"]
    peft = roofline_ms("peft", a.tokens, a.K, a.N, a.r, peaks)["fwdbwd"]
    for v in VARIANTS:
        t = roofline_ms(v, a.tokens, a.K, a.N, a.r, peaks)
        print(
            f"{v:6s} fwd {t['fwd']:.3f}  bwd {t['bwd']:.3f}  fwd+bwd {t['fwdbwd']:.3f}"
            f"  (PEFT / this {peft / t['fwdbwd']:.2f}x)"
        )
    print(f"ceiling on the speedup over PEFT: {peft / floor:.2f}x")


if __name__ == "__main__":
    main()
