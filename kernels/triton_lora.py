"""Triton kernels of the fused LoRA linear. Shapes: x (M, K), W (N, K), A (r, K), B (N, r).

Forward   Y  = x W^T + bias + s * (drop(x) A^T) B^T
Backward  dS = s * dY B                          (M, r)   gradient of T = drop(x) A^T
          dB = s * dY^T T                        (N, r)
          dA = dS'^T drop(x)                     (r, K)   dS' = dS (dropout acts on x)
          dX = dY W + (dS A) * keep / (1 - p)    (M, K)

Four kernels cover both GPU generations (DESIGN.md, "Hardware facts"):

- `_down`:    T = drop(x) A^T. Memory-bound (r FLOP per byte of x): one read of x, the dropout
              mask drawn in registers from (seed, element index) and never stored.
- `_gemm_lora`: C = P Q^T (+ bias) + s * L R^T (+ C) with an optional dropout keep-mask on the
              LoRA term. On sm_80+ it is the forward (P=x, Q=W, L=T, R=B) with the LoRA term in
              the epilogue, and dX (P=dY, Q=W^T, L=dS, R=A^T, masked). On sm_70, where Triton's
              `tl.dot` has no tensor cores, the big GEMMs stay on cuBLAS and this kernel runs
              with HAS_BASE=False / ACCUMULATE=True: it only adds the masked LoRA term into the
              cuBLAS result in place.
- `_ds_db`:   dS and dB in one pass over dY (dB accumulated with fp32 atomics across row blocks).
- `_da`:      dA = dS^T drop(x), the mask drawn again from the same (seed, index).

All accumulate in fp32. LoRA ranks are padded to a power of two >= 16 inside the kernels (masked
loads), since `tl.dot` needs inner dimensions of at least 16.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _keep(seed, rows, cols, ld, p):
    """Dropout keep-mask of the elements (rows, cols) of an (M, ld) tensor: a pure function of
    (seed, row * ld + col), so forward and backward draw the same mask without storing it."""
    r = tl.rand(seed, rows[:, None] * ld + cols[None, :])
    return r >= p


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
    BM: tl.constexpr,
    BK: tl.constexpr,
    BR: tl.constexpr,
):
    pid = tl.program_id(0)
    rm = pid * BM + tl.arange(0, BM)
    rr = tl.arange(0, BR)
    acc = tl.zeros((BM, BR), dtype=tl.float32)
    for k0 in range(0, K, BK):
        rk = k0 + tl.arange(0, BK)
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
        acc += tl.dot(x, a)
    tl.store(
        t_ptr + rm[:, None] * stm + rr[None, :] * str_,
        acc.to(t_ptr.dtype.element_ty),
        mask=(rm[:, None] < M) & (rr[None, :] < R),
    )


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
    BM: tl.constexpr,
    BN: tl.constexpr,
    BK: tl.constexpr,
    BR: tl.constexpr,
):
    pid_m, pid_n = tl.program_id(0), tl.program_id(1)
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    if HAS_BASE:
        for k0 in range(0, K, BK):
            rk = k0 + tl.arange(0, BK)
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
            acc += tl.dot(pt, qt)
    # The LoRA term: one (BM, BR) x (BR, BN) product, in registers.
    rr = tl.arange(0, BR)
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
    lora = tl.dot(lt, rt) * scaling
    if MASK_LORA:
        lora = tl.where(_keep(seed, rm, rn, N, drop_p), lora * inv_keep, 0.0)
    acc += lora
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
    out_mask = (rm[:, None] < M) & (rn[None, :] < N)
    c_ptrs = c_ptr + rm[:, None] * scm + rn[None, :] * scn
    if ACCUMULATE:
        acc += tl.load(c_ptrs, mask=out_mask, other=0.0).to(tl.float32)
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=out_mask)


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
    BM: tl.constexpr,
    BN: tl.constexpr,
    BR: tl.constexpr,
):
    pid = tl.program_id(0)
    rm = pid * BM + tl.arange(0, BM)
    rr = tl.arange(0, BR)
    t = tl.load(  # T rows of this block (BM, BR), read once
        t_ptr + rm[:, None] * stm + rr[None, :] * str_,
        mask=(rm[:, None] < M) & (rr[None, :] < R),
        other=0.0,
    )
    ds = tl.zeros((BM, BR), dtype=tl.float32)
    for n0 in range(0, N, BN):
        rn = n0 + tl.arange(0, BN)
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
        ds += tl.dot(dy, b)
        db = tl.dot(tl.trans(dy), t) * scaling  # this block's share of dB (BN, BR)
        tl.atomic_add(
            db_ptr + rn[:, None] * R + rr[None, :],
            db,
            mask=(rn[:, None] < N) & (rr[None, :] < R),
        )
    tl.store(
        ds_ptr + rm[:, None] * sdsm + rr[None, :] * sdsr,
        (ds * scaling).to(ds_ptr.dtype.element_ty),
        mask=(rm[:, None] < M) & (rr[None, :] < R),
    )


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
    BM: tl.constexpr,
    BK: tl.constexpr,
    BR: tl.constexpr,
):
    pid = tl.program_id(0)
    rk = pid * BK + tl.arange(0, BK)
    rr = tl.arange(0, BR)
    acc = tl.zeros((BR, BK), dtype=tl.float32)
    for m0 in range(0, M, BM):
        rm = m0 + tl.arange(0, BM)
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
        acc += tl.dot(dst, x)
    tl.store(
        da_ptr + rr[:, None] * K + rk[None, :],
        acc,
        mask=(rr[:, None] < R) & (rk[None, :] < K),
    )


@triton.jit
def _mask_kernel(out_ptr, M, K, seed, p, BM: tl.constexpr, BK: tl.constexpr):
    rm = tl.program_id(0) * BM + tl.arange(0, BM)
    rk = tl.program_id(1) * BK + tl.arange(0, BK)
    keep = _keep(seed, rm, rk, K, p)
    tl.store(
        out_ptr + rm[:, None] * K + rk[None, :],
        keep.to(tl.int8),
        mask=(rm[:, None] < M) & (rk[None, :] < K),
    )


# ---- launchers ----


def _blocks(device: torch.device) -> tuple[int, int, int]:
    # Interpreter: few, large programs (each program is a numpy loop). GPU: a common tile.
    return (32, 32, 32) if device.type == "cpu" else (64, 64, 32)


def _rank_block(r: int) -> int:
    return max(16, triton.next_power_of_2(r))


def _dropout_args(p: float) -> tuple[float, float]:
    return p, (1.0 / (1.0 - p) if p > 0 else 1.0)


def down(x: torch.Tensor, a: torch.Tensor, seed: int, p: float) -> torch.Tensor:
    """T = drop(x) A^T, (M, r), in x's dtype."""
    M, K = x.shape
    R = a.shape[0]
    t = torch.empty((M, R), device=x.device, dtype=x.dtype)
    BM, _, BK = _blocks(x.device)
    p, inv = _dropout_args(p)
    _down[(triton.cdiv(M, BM),)](
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
        BM=BM,
        BK=BK,
        BR=_rank_block(R),
    )
    return t


def gemm_lora(
    p_mat: torch.Tensor | None,  # (M, K) or None (LoRA term only)
    q_mat: torch.Tensor | None,  # (N, K)
    bias: torch.Tensor | None,  # (N,)
    left: torch.Tensor,  # (M, r)
    right: torch.Tensor,  # (N, r)
    scaling: float,
    out: torch.Tensor,  # (M, N), written (or added to when accumulate)
    *,
    accumulate: bool = False,
    mask_seed: int = 0,
    mask_p: float = 0.0,
) -> torch.Tensor:
    M, N = out.shape
    R = left.shape[1]
    K = p_mat.shape[1] if p_mat is not None else 0
    BM, BN, BK = _blocks(out.device)
    p, inv = _dropout_args(mask_p)
    dummy = left  # stands in for absent pointers; never read (constexpr flags)
    pm = p_mat if p_mat is not None else dummy
    qm = q_mat if q_mat is not None else dummy
    _gemm_lora[(triton.cdiv(M, BM), triton.cdiv(N, BN))](
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
        *left.stride(),
        *right.stride(),
        *out.stride(),
        scaling,
        mask_seed,
        p,
        inv,
        HAS_BASE=p_mat is not None,
        HAS_BIAS=bias is not None,
        ACCUMULATE=accumulate,
        MASK_LORA=mask_p > 0,
        BM=BM,
        BN=BN,
        BK=BK,
        BR=_rank_block(R),
    )
    return out


def ds_db(
    dy: torch.Tensor, b: torch.Tensor, t: torch.Tensor, scaling: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """dS = s dY B (M, r) in dY's dtype, dB = s dY^T T (N, r) in fp32."""
    M, N = dy.shape
    R = b.shape[1]
    ds = torch.empty((M, R), device=dy.device, dtype=dy.dtype)
    db = torch.zeros((N, R), device=dy.device, dtype=torch.float32)
    BM, BN, _ = _blocks(dy.device)
    _ds_db[(triton.cdiv(M, BM),)](
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
        BM=BM,
        BN=BN,
        BR=_rank_block(R),
    )
    return ds, db


def da(ds: torch.Tensor, x: torch.Tensor, seed: int, p: float) -> torch.Tensor:
    """dA = dS^T drop(x), (r, K) in fp32."""
    M, K = x.shape
    R = ds.shape[1]
    out = torch.empty((R, K), device=x.device, dtype=torch.float32)
    BM, _, BK = _blocks(x.device)
    p, inv = _dropout_args(p)
    _da[(triton.cdiv(K, BK),)](
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
        BM=BM,
        BK=BK,
        BR=_rank_block(R),
    )
    return out


def keep_mask(shape: tuple[int, int], seed: int, p: float, device) -> torch.Tensor:
    """The kernels' dropout keep-mask, materialised (tests and the reference only)."""
    M, K = shape
    out = torch.empty((M, K), device=device, dtype=torch.int8)
    _mask_kernel[(triton.cdiv(M, 32), triton.cdiv(K, 32))](out, M, K, seed, p, BM=32, BK=32)
    return out.bool()
