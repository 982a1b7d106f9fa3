"""The roofline model reproduces the paper estimates of the issue-12 review (§5: Llama-3-8B
shapes, M=8192, K=4096, r=16, fp16), which were worked out by hand from the same peaks."""

from __future__ import annotations

import pytest

from benchmarks.roofline import ceiling_speedup, device_peaks, kernels, roofline_ms

M, K, R = 8192, 4096, 16

# device, N -> PEFT fwd+bwd ms, floor ms, ceiling, cuBLAS GEMMs + Triton LoRA side ms (§5 table)
REVIEW = [
    ("H100", 4096, 0.877, 0.555, 1.58, 0.696),
    ("H100", 1024, 0.310, 0.139, 2.23, 0.234),
    ("H100", 14336, 2.766, 1.944, 1.42, 2.235),
    ("V100", 4096, 5.594, 4.398, 1.27, 4.984),
    ("V100", 1024, 1.736, 1.100, 1.58, 1.471),
    ("V100", 14336, 18.454, 15.393, 1.20, 16.694),
]


@pytest.mark.parametrize("device,N,peft,floor,ceiling,ours", REVIEW)
def test_review_table(device, N, peft, floor, ceiling, ours):
    peaks = device_peaks(device)
    # The review rounds to 3 digits and its PEFT figures carry ~1 us of small terms more.
    assert roofline_ms("peft", M, K, N, R, peaks)["fwdbwd"] == pytest.approx(peft, rel=3e-3)
    assert roofline_ms("floor", M, K, N, R, peaks)["fwdbwd"] == pytest.approx(floor, abs=1e-3)
    assert ceiling_speedup(M, K, N, R, peaks) == pytest.approx(ceiling, abs=5e-3)
    assert roofline_ms("ours", M, K, N, R, peaks)["fwdbwd"] == pytest.approx(ours, abs=1.5e-3)


def test_h100_fused_and_split_ceilings():
    h100 = device_peaks("NVIDIA H100 80GB HBM3")
    assert roofline_ms("fused", M, K, 4096, R, h100)["fwdbwd"] == pytest.approx(0.618, abs=1e-3)
    peft, floor = (roofline_ms(v, M, K, 4096, R, h100) for v in ("peft", "floor"))
    assert peft["fwd"] / floor["fwd"] == pytest.approx(1.51, abs=5e-3)
    assert peft["bwd"] / floor["bwd"] == pytest.approx(1.65, abs=5e-3)


def test_v100_triton_kernels_run_on_fma():
    # On sm_70 tl.dot is fp32 FMA: `_ds_db` (4 M N r FLOPs) is FLOP-bound, not memory-bound.
    v100 = device_peaks("Tesla V100-SXM2-32GB")
    ds_db = next(k for k in kernels("ours", M, K, 14336, R)["bwd"] if k.name == "_ds_db")
    assert ds_db.ms(v100) == pytest.approx(0.479, abs=1e-3)  # the review's "about 0.48 ms"
    assert ds_db.bytes / v100.bandwidth * 1e3 == pytest.approx(0.26, abs=0.01)  # memory floor
    assert ds_db.ms(device_peaks("H100")) < 0.1  # tensor cores: memory-bound again


def test_device_names():
    assert device_peaks("Tesla V100-PCIE-16GB").name == "V100 PCIe"
    assert device_peaks("NVIDIA A100-SXM4-80GB").name == "A100 80GB SXM"
    assert device_peaks("NVIDIA A100-SXM4-40GB").name == "A100 40GB"
    assert device_peaks("NVIDIA H100 PCIe").name == "H100 PCIe"
    assert device_peaks("NVIDIA H200").name == "H200 SXM"
    assert device_peaks("NVIDIA GeForce RTX 4090") is None  # unknown: no roofline
    assert device_peaks("CPU (x86_64, 2 threads)") is None
    with pytest.raises(ValueError):
        kernels("nope", M, K, 4096, R)


def test_benchmark_row_roofline_columns():
    from benchmarks.bench_lora_kernel import _roofline_columns

    row = {"tokens": M, "K": K, "N": 4096, "r": R}
    for name, ms in (("peft", 1.0), ("unfused", 1.1), ("ours", 0.8), ("fused", 0.9)):
        row[f"{name}_fwd_ms"], row[f"{name}_fwdbwd_ms"] = ms / 2, ms
    _roofline_columns(row, device_peaks("H100"), 2)
    assert row["roofline"] == "H100 SXM" and row["ceiling_speedup_vs_peft"] == pytest.approx(
        1.577, abs=1e-3
    )
    assert row["peft_roofline_fraction"] == pytest.approx(0.876, abs=1e-3)  # 0.876 ms of 1.0
    assert row["unfused_roofline_fwdbwd_ms"] == row["peft_roofline_fwdbwd_ms"]
    assert row["ours_roofline_fraction"] == pytest.approx(0.696 / 0.8, abs=2e-3)
    assert 0 < row["fused_roofline_fwd_fraction"] < 1
    cpu = {"tokens": M, "K": K, "N": 4096, "r": R, "peft_fwdbwd_ms": 1.0}
    _roofline_columns(cpu, None, 4)
    assert cpu == {"tokens": M, "K": K, "N": 4096, "r": R, "peft_fwdbwd_ms": 1.0, "roofline": None}
