"""Triton kernels of the fused LoRA linear. Shapes: x (M, K), W (N, K), A (r, K), B (N, r).

Forward   Y  = x W^T + bias + s * (drop(x) A^T) B^T
Backward  dS = s * dY B                          (M, r)   gradient of T = drop(x) A^T
          dB = s * dY^T T                        (N, r)
          dA = dS'^T drop(x)                     (r, K)   dS' = dS (dropout acts on x)
          dX = dY W + (dS A) * keep / (1 - p)    (M, K)

The memory-bound LoRA side (lora.py's default "cublas" path keeps x W^T and dY W on cuBLAS):

- `_down`:    T = drop(x) A^T. r FLOP per byte of x: one read of x, the dropout mask drawn in
              registers from (seed, element index) and never stored.
- `_ds_db`:   dS and dB in one pass over dY. dB is reduced deterministically in two passes: each
              row block writes its partial dB to its own slice of an fp32 scratch (n_splits, N, r)
              and torch sums the slices in a fixed order. Cost: n_splits * N * r * 4 extra bytes
              written and read once more (n_splits = cdiv(M, BM)); e.g. M=8192, BM=64, N=4096,
              r=16: 33.5 MB each way against dY's 67 MB (fp16). `deterministic=False` uses
              relaxed fp32 atomics instead (no fences; run-to-run bits vary).
- `_da`:      dA = dS^T drop(x), the mask drawn again from the same (seed, index).
- `_gemm_lora`: C = P Q^T (+ bias) + s * L R^T (+ C), with an optional dropout keep-mask on the
              LoRA term. With HAS_BASE=False / ACCUMULATE=True it only adds the masked LoRA term
              into a cuBLAS result in place (dX with dropout). `_gemm_lora_tuned` is the same
              kernel autotuned over `GEMM_CONFIGS` (the "fused" backend: forward P=x, Q=W, L=T,
              R=B; dX with P=dY, Q=W^T, L=dS, R=A^T), launched in GROUP_M-swizzled order.

Correctness on real GPUs: every launch runs under the tensors' device (`_device_guard`); fp32
inputs use IEEE dots (TF32 otherwise changes results by ~1e-3); row and column offsets are int64
(`_span`), since row * stride passes 2^31 at e.g. 16,744 tokens of a 128,256-wide lm_head; the
dropout's Philox counter stays 32-bit (it wraps the same way forward and backward).

Ranks: `_rank_block` caps the rank tile at 64 and the kernels loop (or the grid splits) over rank
chunks, so shared memory and registers do not grow with r. Where r is an output dimension of a
dot (`_down`, `_ds_db`, `_da`) it is padded only to a power of two >= 8; it stays padded to >= 16
only where it is the reduction dimension (`_gemm_lora`'s L R^T), since tl.dot needs K >= 16 for
16-bit inputs. All accumulate in fp32.
"""

from __future__ import annotations

import contextlib
import os

import torch
import triton
import triton.language as tl

RANK_CHUNK = 64  # largest rank tile: r=256 at BR=256 needs 112-128 KB of smem in `_ds_db`


@triton.jit
def _span(start, B: tl.constexpr):
    """start + arange(B) in int64, so that index * stride cannot wrap at 2^31."""
    return tl.arange(0, B).to(tl.int64) + start


@triton.jit
def _keep(seed, rows, cols, ld, p):
    """Dropout keep-mask of the elements (rows, cols) of an (M, ld) tensor: a pure function of
    (seed, row * ld + col), so forward and backward draw the same mask without storing it. The
    Philox counter is 32-bit: past 2^31 elements it wraps, identically in every kernel."""
    r = tl.rand(seed, (rows[:, None] * ld + cols[None, :]).to(tl.int32))
    return r >= p


# V100 roofline (M=8192 rows, K=N=4096, fp16; 0.9 TB/s, 15.7 TF/s fp32 FMA: no HFMA2 in the PTX).
# bytes 2MK + 2rK + 2Mr = 67.3 / 67.5 / 68.7 MB at r = 8 / 16 / 64: floor 75 / 75 / 76 us;
# FLOPs 2MKr = 0.54 / 1.07 / 4.29 G: FMA 34 / 68 / 274 us -> 1.00 / 1.00 / 3.58x the floor
# (r=32: 1.81x). FMA-bound from r ~ 17 (17 FLOP/B ridge): 1.3x holds at r <= 16 only.
# sm_70 regs/spill bytes, p=0 | p=0.1, common 64x32 4 warps -> FMA_TILES (BM 64, BK 16, 8 warps):
# r=8 124/0|128/0 -> 48/0|64/0; r=16 168/0|212/0 -> 64/0|80/0; r=64 255/496|255/516 -> 128/0|128/0.
@triton.jit
def _down(
    x_ptr,
    a_ptr,
    t_ptr,
    M,
    K,
    R,
    sxm,
    sxk,
    sar,
    sak,
    stm,
    str_,
    seed,
    p,
    inv_keep,
    HAS_DROPOUT: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BM: tl.constexpr,
    BK: tl.constexpr,
    BR: tl.constexpr,
):
    rm = _span(tl.program_id(0) * BM, BM)
    rr = tl.program_id(1) * BR + tl.arange(0, BR)  # this program's rank chunk
    acc = tl.zeros((BM, BR), dtype=tl.float32)
    for k0 in range(0, K, BK):
        rk = _span(k0, BK)
        x = tl.load(
            x_ptr + rm[:, None] * sxm + rk[None, :] * sxk,
            mask=(rm[:, None] < M) & (rk[None, :] < K),
            other=0.0,
        )
        if HAS_DROPOUT:
            x = tl.where(_keep(seed, rm, rk, K, p), x * inv_keep, 0.0).to(x.dtype)
        a = tl.load(  # A^T tile (BK, BR)
            a_ptr + rr[None, :] * sar + rk[:, None] * sak,
            mask=(rr[None, :] < R) & (rk[:, None] < K),
            other=0.0,
        )
        acc += tl.dot(x, a, input_precision=DOT_PRECISION)
    tl.store(
        t_ptr + rm[:, None] * stm + rr[None, :] * str_,
        acc.to(t_ptr.dtype.element_ty),
        mask=(rm[:, None] < M) & (rr[None, :] < R),
    )


# V100 roofline (M=8192 rows, K=N=4096, fp16; 0.9 TB/s, 15.7 TF/s fp32 FMA: no HFMA2 in the PTX).
# LoRA-only add (the cublas path's dX with dropout; p=0.1): bytes 4MK + 2Mr + 2Kr = 134.4 / 134.6 /
# 135.8 MB at r = 8 / 16 / 64: floor 149 / 150 / 151 us; FLOPs 2MKr: FMA 34 / 68 / 274 us ->
# 1.00 / 1.00 / 1.81x (r=32: 1.00x). sm_70 regs/spill bytes, 64x64 4 warps BR=r -> FMA_TILES
# (64x64, BR 16, 8 warps): r=8 233/0 -> 128/0; r=16 233/0 -> 128/0; r=32 255/624 -> 128/0;
# r=64 32/10608 -> 128/0. (The fused GEMM with HAS_BASE is not run on sm_7x.)
@triton.jit
def _gemm_lora(
    p_ptr,
    q_ptr,
    bias_ptr,
    l_ptr,
    r_ptr,
    c_ptr,
    M,
    N,
    K,
    R,
    spm,
    spk,
    sqn,
    sqk,
    sbias,
    slm,
    slr,
    srn,
    srr,
    scm,
    scn,
    scaling,
    seed,
    drop_p,
    inv_keep,
    HAS_BASE: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    ACCUMULATE: tl.constexpr,
    MASK_LORA: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BR: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BK: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    # Grouped launch order: GROUP_M row blocks share each column block while it is in L2.
    pid = tl.program_id(0)
    num_m, num_n = tl.cdiv(M, BM), tl.cdiv(N, BN)
    first_m = (pid // (GROUP_M * num_n)) * GROUP_M
    size_m = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % (GROUP_M * num_n)) % size_m
    pid_n = (pid % (GROUP_M * num_n)) // size_m
    rm = _span(pid_m * BM, BM)
    rn = _span(pid_n * BN, BN)
    # The LoRA term first: (BM, r) x (r, BN) in rank chunks of BR (r is the reduction dim here),
    # scaled and masked, then the main loop accumulates onto it, so one (BM, BN) fp32 tile is live
    # in registers (computing it after the loop kept two and spilled 8-22 KB at 128x128 and up).
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for r0 in range(0, R, BR):
        rr = r0 + tl.arange(0, BR)
        lt = tl.load(
            l_ptr + rm[:, None] * slm + rr[None, :] * slr,
            mask=(rm[:, None] < M) & (rr[None, :] < R),
            other=0.0,
        )
        rt = tl.load(
            r_ptr + rn[None, :] * srn + rr[:, None] * srr,
            mask=(rn[None, :] < N) & (rr[:, None] < R),
            other=0.0,
        )
        acc += tl.dot(lt, rt, input_precision=DOT_PRECISION)
    acc = acc * scaling
    if MASK_LORA:
        acc = tl.where(_keep(seed, rm, rn, N, drop_p), acc * inv_keep, 0.0)
    if HAS_BASE:
        for k0 in range(0, K, BK):
            rk = _span(k0, BK)
            pt = tl.load(
                p_ptr + rm[:, None] * spm + rk[None, :] * spk,
                mask=(rm[:, None] < M) & (rk[None, :] < K),
                other=0.0,
            )
            qt = tl.load(  # Q^T tile (BK, BN)
                q_ptr + rn[None, :] * sqn + rk[:, None] * sqk,
                mask=(rn[None, :] < N) & (rk[:, None] < K),
                other=0.0,
            )
            acc += tl.dot(pt, qt, input_precision=DOT_PRECISION)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + rn * sbias, mask=rn < N, other=0.0)
        acc += bias.to(tl.float32)[None, :]
    out_mask = (rm[:, None] < M) & (rn[None, :] < N)
    c_ptrs = c_ptr + rm[:, None] * scm + rn[None, :] * scn
    if ACCUMULATE:
        acc += tl.load(c_ptrs, mask=out_mask, other=0.0).to(tl.float32)
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=out_mask)


# Autotune space of the fused GEMM, (BM, BN, BK, warps, stages, fits the dropout mask), kept to the
# configs that `nif kernels check` compiles without spills at r <= 64 on sm_80 and sm_90 (fp16,
# bf16, r = 8/16/64) with each Triton setup.py allows (3.7: PyPI's CUDA torch 2.13 pins 3.7.1;
# 3.9). Dropped there: 128x128 on 4 warps (36 B at r=8, 64 B at BK 64), 128x256x64, 256x128x64,
# 256x64 and 64x256 (8-212 B at r=64 on sm_80), and 128x256x32 (12 B at r=64 on sm_80 with 3.7).
# The last column: with the dropout mask in the epilogue (dX with p > 0) the Philox draw for the
# whole tile is live too, and only these fit (128x256x32 spilled 5.8 KB, 64x128x64 16 B; 64x128x32
# 8 B at r=8 on sm_80 with 3.7).
_GEMM_TILES = (
    (128, 128, 64, 8, 3, True),
    (128, 64, 32, 4, 4, True),
    (64, 128, 32, 4, 4, False),
    (64, 128, 64, 4, 3, False),
    (64, 64, 32, 4, 4, True),
)


def _gemm_configs(interpreting: bool) -> list[triton.Config]:
    """Autotune space of the fused GEMM (`_GEMM_TILES`), all GROUP_M=8; a config's `fits_mask`
    attribute says whether it may run with the dropout mask. The interpreter does not benchmark:
    one small config there."""
    tiles = [(32, 32, 32, 4, 1, True)] if interpreting else _GEMM_TILES
    configs = []
    for bm, bn, bk, warps, stages, fits_mask in tiles:
        cfg = triton.Config(
            {"BM": bm, "BN": bn, "BK": bk, "GROUP_M": 8}, num_warps=warps, num_stages=stages
        )
        cfg.fits_mask = fits_mask
        configs.append(cfg)
    return configs


def prune_gemm_configs(configs, named_args, **kwargs) -> list[triton.Config]:
    """The autotuner's `early_config_prune`: with the dropout mask (MASK_LORA) only the configs
    whose registers it fits in."""
    if kwargs.get("MASK_LORA"):
        return [c for c in configs if c.fits_mask]
    return list(configs)


GEMM_CONFIGS = _gemm_configs(interpreting=False)
_gemm_lora_tuned = triton.autotune(
    configs=_gemm_configs(interpreting=os.environ.get("TRITON_INTERPRET", "0") == "1"),
    key=["M", "N", "K", "MASK_LORA"],
    prune_configs_by={"early_config_prune": prune_gemm_configs},
)(_gemm_lora)


# V100 roofline (M=8192 rows, K=N=4096, fp16; 0.9 TB/s, 15.7 TF/s fp32 FMA: no HFMA2 in the PTX).
# bytes 2MN + 2Nr + 4Mr + 4Nr = 67.6 / 68.0 / 70.8 MB at r = 8 / 16 / 64: floor 75 / 76 / 79 us,
# plus the deterministic scratch 2 * (M/BM) * N * r * 4 = 34 / 67 / 268 MB (BM 64; write + sum);
# FLOPs 4MNr = 1.07 / 2.15 / 8.59 G: FMA 68 / 137 / 547 us -> 1.50 / 1.99 / 6.96x the floor
# (r=32: 3.57x). r=8 is bound by the scratch (atomics: 1.0x), r >= 16 by FMA (two dots per dY
# element: ridge at r ~ 9), so 1.3x is out of reach on FMA; only tensor cores (cuBLAS) reach it.
# sm_70 regs/spill bytes (p does not apply), common 64x64 4 warps -> FMA_TILES (BM 64, BN 16, 8 w):
# r=8 255/76 -> 48/0; r=16 255/412 -> 64/0; r=32 255/484 -> 128/0; r=64 32/13144 -> 128/0.
@triton.jit
def _ds_db(
    dy_ptr,
    b_ptr,
    t_ptr,
    ds_ptr,
    db_ptr,
    M,
    N,
    R,
    sdym,
    sdyn,
    sbn,
    sbr,
    stm,
    str_,
    sdsm,
    sdsr,
    scaling,
    SPLIT_DB: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BR: tl.constexpr,
):
    pid_m = tl.program_id(0)
    rm = _span(pid_m * BM, BM)
    rr = tl.program_id(1) * BR + tl.arange(0, BR)  # this program's rank chunk
    t = tl.load(  # T rows of this block (BM, BR), read once
        t_ptr + rm[:, None] * stm + rr[None, :] * str_,
        mask=(rm[:, None] < M) & (rr[None, :] < R),
        other=0.0,
    )
    # Partial dB of this row block: its own (N, R) slice of the scratch, or atomics into dB.
    db_base = db_ptr + pid_m.to(tl.int64) * N * R if SPLIT_DB else db_ptr
    ds = tl.zeros((BM, BR), dtype=tl.float32)
    for n0 in range(0, N, BN):
        rn = _span(n0, BN)
        dy = tl.load(
            dy_ptr + rm[:, None] * sdym + rn[None, :] * sdyn,
            mask=(rm[:, None] < M) & (rn[None, :] < N),
            other=0.0,
        )
        b = tl.load(
            b_ptr + rn[:, None] * sbn + rr[None, :] * sbr,
            mask=(rn[:, None] < N) & (rr[None, :] < R),
            other=0.0,
        )
        ds += tl.dot(dy, b, input_precision=DOT_PRECISION)
        db = tl.dot(tl.trans(dy), t, input_precision=DOT_PRECISION) * scaling  # (BN, BR)
        db_ptrs = db_base + rn[:, None] * R + rr[None, :]
        db_mask = (rn[:, None] < N) & (rr[None, :] < R)
        if SPLIT_DB:
            tl.store(db_ptrs, db, mask=db_mask)
        else:  # no ordering needed: dB is read only after the kernel ends
            tl.atomic_add(db_ptrs, db, mask=db_mask, sem="relaxed")
    tl.store(
        ds_ptr + rm[:, None] * sdsm + rr[None, :] * sdsr,
        (ds * scaling).to(ds_ptr.dtype.element_ty),
        mask=(rm[:, None] < M) & (rr[None, :] < R),
    )


# V100 roofline (M=8192 rows, K=N=4096, fp16; 0.9 TB/s, 15.7 TF/s fp32 FMA: no HFMA2 in the PTX).
# bytes 2MK + 2Mr + 4rK = 67.4 / 67.6 / 69.2 MB at r = 8 / 16 / 64: floor 75 / 75 / 77 us;
# FLOPs 2MKr = 0.54 / 1.07 / 4.29 G: FMA 34 / 68 / 274 us -> 1.00 / 1.00 / 3.56x (r=32: 1.81x).
# sm_70 regs/spill bytes, p=0 | p=0.1, common 64x32 4 warps -> FMA_TILES (BM 32, BK 16, 4 warps;
# 256 programs at K=4096): r=8 168/0|202/0 -> 64/0|91/0; r=16 168/0|212/0 -> 96/0|121/0;
# r=32 255/204|255/232 -> 96/0|126/0; r=64 255/324|255/332 -> 168/0|168/0.
@triton.jit
def _da(
    ds_ptr,
    x_ptr,
    da_ptr,
    M,
    K,
    R,
    sdsm,
    sdsr,
    sxm,
    sxk,
    seed,
    p,
    inv_keep,
    HAS_DROPOUT: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BM: tl.constexpr,
    BK: tl.constexpr,
    BR: tl.constexpr,
):
    rk = _span(tl.program_id(0) * BK, BK)
    rr = tl.program_id(1) * BR + tl.arange(0, BR)  # this program's rank chunk
    acc = tl.zeros((BR, BK), dtype=tl.float32)
    for m0 in range(0, M, BM):
        rm = _span(m0, BM)
        dst = tl.load(  # dS^T tile (BR, BM)
            ds_ptr + rm[None, :] * sdsm + rr[:, None] * sdsr,
            mask=(rm[None, :] < M) & (rr[:, None] < R),
            other=0.0,
        )
        x = tl.load(
            x_ptr + rm[:, None] * sxm + rk[None, :] * sxk,
            mask=(rm[:, None] < M) & (rk[None, :] < K),
            other=0.0,
        )
        if HAS_DROPOUT:
            x = tl.where(_keep(seed, rm, rk, K, p), x * inv_keep, 0.0).to(x.dtype)
        acc += tl.dot(dst, x, input_precision=DOT_PRECISION)
    tl.store(
        da_ptr + rr[:, None] * K + rk[None, :],
        acc,
        mask=(rr[:, None] < R) & (rk[None, :] < K),
    )


@triton.jit
def _mask_kernel(out_ptr, M, K, seed, p, BM: tl.constexpr, BK: tl.constexpr):
    rm = _span(tl.program_id(0) * BM, BM)
    rk = _span(tl.program_id(1) * BK, BK)
    keep = _keep(seed, rm, rk, K, p)
    tl.store(
        out_ptr + rm[:, None] * K + rk[None, :],
        keep.to(tl.int8),
        mask=(rm[:, None] < M) & (rk[None, :] < K),
    )


# ---- launchers ----


def _device_guard(device: torch.device):
    """Triton launches on the *current* CUDA device: make it the tensors' (several GPUs in one
    process, e.g. a `device_map` model, would otherwise run layers on cuda:0)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _dot_precision(dtype: torch.dtype) -> str:
    """IEEE for fp32 (TF32 would differ from torch's fp32 matmul by ~1e-3); fp16/bf16 dots
    ignore it ("tf32" is Triton's default)."""
    return "ieee" if dtype == torch.float32 else "tf32"


def _blocks(device: torch.device) -> tuple[int, int, int]:
    # Interpreter: few, large programs (each program is a numpy loop). GPU: a common tile.
    return (32, 32, 32) if device.type == "cpu" else (64, 64, 32)


def _rank_block(r: int, *, reduction: bool = False) -> int:
    """Rank tile: a power of two, at most RANK_CHUNK (larger ranks loop or split the grid), at
    least 8 where r is an output dim of the dot, 16 where it is the reduction dim (K >= 16)."""
    return min(RANK_CHUNK, max(16 if reduction else 8, triton.next_power_of_2(r)))


# sm_7x (V100, T4): Triton has no mma there, every tl.dot is fp32 FMA (fma.rn.f32 in the PTX,
# no HFMA2) with both operand tiles held in registers. The common tiles spill there at r >= 16
# (`_ds_db` 255 regs / 412 B at r=16, 13 KB at r=64); these do not spill at r <= 64, fp16,
# dropout 0 or 0.1 (tests/kernels/test_kernels_sm70.py). The roofline block above each kernel
# gives the numbers. Keys: BM/BN/BK/BR override the launcher's tile, num_warps the launch's.
FMA_TILES = {
    "down": {"BM": 64, "BK": 16, "num_warps": 8},
    "ds_db": {"BM": 64, "BN": 16, "num_warps": 8},
    "da": {"BM": 32, "BK": 16, "num_warps": 4},
    "lora_add": {"BM": 64, "BN": 64, "BR": 16, "num_warps": 8},
}


def _capability(device: torch.device) -> tuple[int, int] | None:
    """The CUDA compute capability the launch compiles for; None off CUDA (CPU, interpreter)."""
    return torch.cuda.get_device_capability(device) if device.type == "cuda" else None


def _fma_tiles(kernel: str, device: torch.device) -> dict:
    """FMA_TILES[kernel] where tl.dot is FMA (capability < 8.0), else {} (the common tiles)."""
    cap = _capability(device)
    return dict(FMA_TILES[kernel]) if cap is not None and cap < (8, 0) else {}


# sm_7x: where cuBLAS (tensor cores) beats the FMA kernel on paper. Per element of the big operand
# (x for `down` and `da`, dY for `ds_db`; fp16, 2 bytes), on a V100 (0.9 TB/s, 15.7 TF/s FMA):
# each of the kernel's dots costs 2r FMA FLOPs, 2r / 15.7e12 s, against one cuBLAS read of the
# operand, 2 / 0.9e12 s (tensor cores stay memory-bound to r ~ 139). FMA loses from r ~ 17.4:
# r <= 16 stays in Triton (one pass over dY for both of `ds_db`'s dots), r >= 32 goes to cuBLAS,
# at 1.0x the memory floor for `down`/`da` and 2.0x for `ds_db` (dY read twice), where FMA is at
# 1.81-3.58x and 3.57-6.96x. With dropout, cuBLAS would need drop(x) written and read back (3x the
# floor), so `down`/`da` keep the Triton kernel then (1.81x at r=32, 3.58x at r=64).
V100_BYTES_PER_S = 0.9e12
V100_FMA_PER_S = 15.7e12


def cublas_beats_fma(kernel: str, r: int, dropout_p: float, device: torch.device) -> bool:
    """On sm_7x, whether `kernel` ("down", "ds_db", "da") at rank r is faster, on paper, as
    cuBLAS GEMMs than as its FMA Triton kernel (see above). False on sm_80+ and off CUDA."""
    cap = _capability(device)
    if cap is None or cap >= (8, 0):
        return False
    if kernel != "ds_db" and dropout_p > 0:
        return False
    return 2 * r / V100_FMA_PER_S > 2 / V100_BYTES_PER_S


def _dropout_args(p: float) -> tuple[float, float]:
    return p, (1.0 / (1.0 - p) if p > 0 else 1.0)


def down(x: torch.Tensor, a: torch.Tensor, seed: int, p: float) -> torch.Tensor:
    """T = drop(x) A^T, (M, r), in x's dtype."""
    M, K = x.shape
    R = a.shape[0]
    t = torch.empty((M, R), device=x.device, dtype=x.dtype)
    BM, _, BK = _blocks(x.device)
    tile = {"BM": BM, "BK": BK, "BR": _rank_block(R), **_fma_tiles("down", x.device)}
    p, inv = _dropout_args(p)
    with _device_guard(x.device):
        _down[(triton.cdiv(M, tile["BM"]), triton.cdiv(R, tile["BR"]))](
            x,
            a,
            t,
            M,
            K,
            R,
            *x.stride(),
            *a.stride(),
            *t.stride(),
            seed,
            p,
            inv,
            HAS_DROPOUT=p > 0,
            DOT_PRECISION=_dot_precision(x.dtype),
            **tile,
        )
    return t


def gemm_lora(
    p_mat: torch.Tensor | None,  # (M, K) or None (LoRA term only)
    q_mat: torch.Tensor | None,  # (N, K)
    bias: torch.Tensor | None,  # (N,), any stride
    left: torch.Tensor,  # (M, r)
    right: torch.Tensor,  # (N, r)
    scaling: float,
    out: torch.Tensor,  # (M, N), written (or added to when accumulate)
    *,
    accumulate: bool = False,
    mask_seed: int = 0,
    mask_p: float = 0.0,
) -> torch.Tensor:
    """With p_mat: the autotuned GEMM + LoRA epilogue; without: the LoRA term alone, fixed tile."""
    M, N = out.shape
    R = left.shape[1]
    K = p_mat.shape[1] if p_mat is not None else 0
    p, inv = _dropout_args(mask_p)
    dummy = left  # stands in for absent pointers; never read (constexpr flags)
    pm = p_mat if p_mat is not None else dummy
    qm = q_mat if q_mat is not None else dummy
    args = (
        pm,
        qm,
        bias if bias is not None else dummy,
        left,
        right,
        out,
        M,
        N,
        K,
        R,
        *(pm.stride() if p_mat is not None else (0, 0)),
        *(qm.stride() if q_mat is not None else (0, 0)),
        bias.stride(0) if bias is not None else 0,
        *left.stride(),
        *right.stride(),
        *out.stride(),
        scaling,
        mask_seed,
        p,
        inv,
    )
    flags = {
        "HAS_BASE": p_mat is not None,
        "HAS_BIAS": bias is not None,
        "ACCUMULATE": accumulate,
        "MASK_LORA": mask_p > 0,
        "DOT_PRECISION": _dot_precision(left.dtype),
        "BR": _rank_block(R, reduction=True),
    }
    with _device_guard(out.device):
        if p_mat is not None:
            # Autotuning reruns the kernel: only valid when it overwrites `out`.
            assert not accumulate, "the tuned GEMM writes out; it cannot accumulate"
            grid = lambda meta: (triton.cdiv(M, meta["BM"]) * triton.cdiv(N, meta["BN"]),)  # noqa: E731
            _gemm_lora_tuned[grid](*args, **flags)
        else:
            BM, BN, _ = _blocks(out.device)
            tile = {**flags, "BM": BM, "BN": BN, **_fma_tiles("lora_add", out.device)}
            grid = (triton.cdiv(M, tile["BM"]) * triton.cdiv(N, tile["BN"]),)
            _gemm_lora[grid](*args, **tile, BK=32, GROUP_M=8)
    return out


def ds_db(
    dy: torch.Tensor, b: torch.Tensor, t: torch.Tensor, scaling: float, *, deterministic=True
) -> tuple[torch.Tensor, torch.Tensor]:
    """dS = s dY B (M, r) in dY's dtype, dB = s dY^T T (N, r) in fp32. `deterministic`: dB summed
    from per-row-block partials in a fixed order (cdiv(M, BM) * N * r * 4 bytes of scratch);
    otherwise relaxed atomics (no scratch, bits vary run to run)."""
    M, N = dy.shape
    R = b.shape[1]
    BM, BN, _ = _blocks(dy.device)
    tile = {"BM": BM, "BN": BN, "BR": _rank_block(R), **_fma_tiles("ds_db", dy.device)}
    n_split = triton.cdiv(M, tile["BM"])
    ds = torch.empty((M, R), device=dy.device, dtype=dy.dtype)
    shape = (n_split, N, R) if deterministic else (N, R)
    make = torch.empty if deterministic else torch.zeros  # every scratch element is written
    db = make(shape, device=dy.device, dtype=torch.float32)
    with _device_guard(dy.device):
        _ds_db[(n_split, triton.cdiv(R, tile["BR"]))](
            dy,
            b,
            t,
            ds,
            db,
            M,
            N,
            R,
            *dy.stride(),
            *b.stride(),
            *t.stride(),
            *ds.stride(),
            scaling,
            SPLIT_DB=deterministic,
            DOT_PRECISION=_dot_precision(dy.dtype),
            **tile,
        )
    return ds, (db.sum(0) if deterministic else db)


def da(ds: torch.Tensor, x: torch.Tensor, seed: int, p: float) -> torch.Tensor:
    """dA = dS^T drop(x), (r, K) in fp32."""
    M, K = x.shape
    R = ds.shape[1]
    out = torch.empty((R, K), device=x.device, dtype=torch.float32)
    BM, _, BK = _blocks(x.device)
    tile = {"BM": BM, "BK": BK, "BR": _rank_block(R), **_fma_tiles("da", x.device)}
    p, inv = _dropout_args(p)
    with _device_guard(x.device):
        _da[(triton.cdiv(K, tile["BK"]), triton.cdiv(R, tile["BR"]))](
            ds,
            x,
            out,
            M,
            K,
            R,
            *ds.stride(),
            *x.stride(),
            seed,
            p,
            inv,
            HAS_DROPOUT=p > 0,
            DOT_PRECISION=_dot_precision(x.dtype),
            **tile,
        )
    return out


def keep_mask(shape: tuple[int, int], seed: int, p: float, device) -> torch.Tensor:
    """The kernels' dropout keep-mask, materialised (tests and the reference only)."""
    M, K = shape
    out = torch.empty((M, K), device=device, dtype=torch.int8)
    with _device_guard(torch.device(device)):
        _mask_kernel[(triton.cdiv(M, 32), triton.cdiv(K, 32))](out, M, K, seed, p, BM=32, BK=32)
    return out.bool()
