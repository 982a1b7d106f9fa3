"""`lora_linear`: the fused LoRA projection, with autograd, per GPU generation.

    y = x W^T + bias + scaling * dropout(x) A^T B^T          (PEFT layouts, see reference.py)

Paths (`backend`):

- "cublas" (the default on every CUDA GPU): x W^T and dY W stay on cuBLAS (torch.matmul); Triton
  does the memory-bound LoRA side (dropout + x A^T in one kernel, dS/dB in one pass over dY, dA)
  and adds the LoRA terms into the cuBLAS outputs in place (`addmm_`, or a masked add kernel
  with dropout). On sm_7x, where Triton's dots are FMA, a LoRA-side kernel hands its dots to
  cuBLAS at the ranks where that is faster on paper (`triton_lora.cublas_beats_fma`: r >= 32).
  "sm70" is its former name, still accepted.
- "fused" (opt-in): one autotuned Triton GEMM with the LoRA term in its epilogue for y and dX.
  It replaces cuBLAS for ~98% of the FLOPs, so it becomes a default on an arch only from measured
  rows (see `pick_backend`).
- "torch" (no CUDA): plain autograd ops; this is how CPU training runs. The Triton paths run on
  the CPU under `TRITON_INTERPRET=1`, which is how the tests check them.

The op is registered with `torch.library.custom_op` (with fake implementations), so it works
under `torch.compile`. `weight` and `bias` are frozen: gradients flow to x, A and B only.
Dropout draws one mask from (seed, element index) in the forward kernel and draws it again in
the backward kernels: the mask is never stored.
"""

from __future__ import annotations

import functools

import torch

from .reference import lora_reference

BACKENDS = ("auto", "cublas", "fused", "sm70", "torch")


def pick_backend(device: torch.device) -> str:
    """The default path: "cublas" on every CUDA GPU, "torch" elsewhere. The big GEMMs stay on
    cuBLAS because no measured row shows the Triton GEMM ("fused") winning yet: on an H100 it
    was slower than PEFT in 78 of 84 shapes (benchmarks/results/lora_kernel.jsonl), and on
    paper it must reach 0.60-0.82 of cuBLAS's throughput just to break even. Make "fused" a
    default on an arch only from benchmark rows that show it faster there."""
    return "cublas" if device.type == "cuda" else "torch"


# ---- the custom ops ----


def _profiled(name: str):
    """Name the op's work in profiles as `name.<backend>`: a `record_function` range (PyTorch
    profiler: Chrome trace, op table) and, on CUDA, an NVTX range (Nsight Systems). Inside the
    op's body, which torch.compile never traces, so it costs no graph break."""

    def wrap(fn):
        @functools.wraps(fn)  # custom_op reads the schema through __wrapped__
        def ranged(*args, **kwargs):
            label = f"{name}.{kwargs.get('backend', args[-1])}"  # backend: the last argument
            with torch.autograd.profiler.record_function(label):
                if not torch.cuda.is_available():
                    return fn(*args, **kwargs)
                with torch.cuda.nvtx.range(label):
                    return fn(*args, **kwargs)

        return ranged

    return wrap


@_profiled("nif::lora_fwd")
def _fwd(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    scaling: float,
    dropout_p: float,
    seed: int,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """x (M, K) -> (y (M, N), T (M, r) = dropout(x) A^T, saved for backward)."""
    from . import triton_lora as tk

    if tk.cublas_beats_fma("down", lora_a.shape[0], dropout_p, x.device):
        t = x @ lora_a.t()
    else:
        t = tk.down(x, lora_a, seed, dropout_p)
    if backend == "fused":
        y = torch.empty((x.shape[0], weight.shape[0]), device=x.device, dtype=x.dtype)
        tk.gemm_lora(x, weight, bias, t, lora_b, scaling, y)
    else:  # cublas: cuBLAS GEMM, LoRA expansion added in place by cuBLAS too
        y = torch.addmm(bias, x, weight.t()) if bias is not None else x @ weight.t()
        y.addmm_(t, lora_b.t(), alpha=scaling)
    return y, t


_lora_fwd = torch.library.custom_op("nif::lora_fwd", mutates_args=())(_fwd)


@_lora_fwd.register_fake
def _(x, weight, bias, lora_a, lora_b, scaling, dropout_p, seed, backend):
    return x.new_empty((x.shape[0], weight.shape[0])), x.new_empty((x.shape[0], lora_a.shape[0]))


@_profiled("nif::lora_bwd")
def _bwd(
    dy: torch.Tensor,
    x: torch.Tensor,
    t: torch.Tensor,
    weight: torch.Tensor,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    scaling: float,
    dropout_p: float,
    seed: int,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> (dx (M, K), dA (r, K) fp32, dB (N, r) fp32)."""
    from . import triton_lora as tk

    dy = dy.contiguous()
    r = lora_a.shape[0]
    if tk.cublas_beats_fma("ds_db", r, dropout_p, dy.device):  # sm_7x, r >= 32: two cuBLAS reads
        ds = (dy @ lora_b).mul_(scaling)
        db = (dy.t() @ t).float().mul_(scaling)
    else:
        ds, db = tk.ds_db(dy, lora_b, t, scaling)  # one pass over dY
    if backend == "fused":
        dx = torch.empty_like(x)
        tk.gemm_lora(
            dy, weight.t(), None, ds, lora_a.t(), 1.0, dx, mask_seed=seed, mask_p=dropout_p
        )
    else:
        dx = dy @ weight  # cuBLAS
        if dropout_p > 0:  # the LoRA term is masked: Triton adds it in place
            tk.gemm_lora(
                None,
                None,
                None,
                ds,
                lora_a.t(),
                1.0,
                dx,
                accumulate=True,
                mask_seed=seed,
                mask_p=dropout_p,
            )
        else:
            dx.addmm_(ds, lora_a)
    if tk.cublas_beats_fma("da", r, dropout_p, x.device):
        da = (ds.t() @ x).float()
    else:
        da = tk.da(ds, x, seed, dropout_p)
    return dx, da, db


_lora_bwd = torch.library.custom_op("nif::lora_bwd", mutates_args=())(_bwd)


@_lora_bwd.register_fake
def _(dy, x, t, weight, lora_a, lora_b, scaling, dropout_p, seed, backend):
    f32 = torch.float32
    return (
        torch.empty_like(x),
        lora_a.new_empty(lora_a.shape, dtype=f32),
        lora_b.new_empty(lora_b.shape, dtype=f32),
    )


def _setup_context(ctx, inputs, output):
    x, weight, bias, lora_a, lora_b, scaling, dropout_p, seed, backend = inputs
    ctx.save_for_backward(x, output[1], weight, lora_a, lora_b)
    ctx.args = (scaling, dropout_p, seed, backend)


def _grads(bwd, ctx, dy):
    """The backward through `bwd` (the custom op `_lora_bwd`, or its body `_bwd` in eager mode):
    grads for (x, weight, bias, lora_a, lora_b, scaling, dropout_p, seed, backend)."""
    x, t, weight, lora_a, lora_b = ctx.saved_tensors
    dx, da, db = bwd(dy, x, t, weight, lora_a, lora_b, *ctx.args)
    return dx, None, None, da.to(lora_a.dtype), db.to(lora_b.dtype), None, None, None, None


def _backward(ctx, dy, dt):
    return _grads(_lora_bwd, ctx, dy)


_lora_fwd.register_autograd(_backward, setup_context=_setup_context)


class _LoraFunction(torch.autograd.Function):
    """Eager mode: the custom ops' bodies and backward, without the custom-op dispatch, which
    cost ~0.5 ms of host time a call (torch 2.11, measured on an H200: cProfile's
    `custom_ops.backend_impl`), more than the GPU work of a 4k-token projection. torch.compile
    traces the custom ops instead (`lora_linear`)."""

    @staticmethod
    def forward(ctx, *inputs):  # the custom op's inputs: (x, weight, ..., seed, backend)
        with torch.autograd.profiler.record_function("nif::lora_fwd"):
            y, t = _fwd(*inputs)
        _setup_context(ctx, inputs, (y, t))
        return y

    @staticmethod
    def backward(ctx, dy):
        with torch.autograd.profiler.record_function("nif::lora_bwd"):
            return _grads(_bwd, ctx, dy)


# ---- the public function ----


def lora_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    scaling: float,
    bias: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    *,
    seed: int | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """x (..., K) -> (..., N) = x W^T + bias + scaling * dropout(x) A^T B^T.

    Gradients reach x, lora_a and lora_b; `weight` and `bias` must be frozen. `seed` fixes the
    dropout mask (drawn from torch's generator when None). `backend` forces a path ("cublas",
    "fused", "torch"; "sm70" = "cublas"); "auto" is "cublas" on CUDA, "torch" elsewhere.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if weight.requires_grad or (bias is not None and bias.requires_grad):
        raise ValueError(
            "lora_linear: `weight` and `bias` must be frozen (requires_grad=False); "
            "only x, lora_a and lora_b receive gradients"
        )
    K = x.shape[-1]
    if (
        weight.shape[1] != K
        or lora_a.shape[1] != K
        or lora_b.shape != (weight.shape[0], lora_a.shape[0])
    ):
        raise ValueError(
            f"lora_linear: shapes do not fit: x (..., {K}), weight {tuple(weight.shape)}, "
            f"lora_a {tuple(lora_a.shape)}, lora_b {tuple(lora_b.shape)}"
        )
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"lora_linear: dropout_p must be in [0, 1), got {dropout_p}")
    if backend == "auto":
        backend = pick_backend(x.device)
    if backend == "torch":  # no custom op here: the range alone names it in a profile
        with torch.autograd.profiler.record_function("nif::lora_fwd.torch"):
            return lora_reference(x, weight, lora_a, lora_b, scaling, bias, dropout_p)
    # One compute dtype: x's, or autocast's when it is on (the LoRA params are fp32 masters;
    # the casts are differentiable, so their gradients arrive in fp32).
    dev = x.device.type
    dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype
    lead = x.shape[:-1]
    x2 = x.reshape(-1, K).to(dtype)
    if not x2.is_contiguous():
        x2 = x2.contiguous()
    if seed is None:
        seed = int(torch.randint(0, 2**31 - 1, (1,)).item()) if dropout_p > 0 else 0
    args = (
        x2,
        weight.to(dtype),
        bias.to(dtype) if bias is not None else None,
        lora_a.to(dtype),
        lora_b.to(dtype),
        float(scaling),
        float(dropout_p),
        int(seed),
        backend,
    )
    with torch.autocast(dev, enabled=False):
        if torch.compiler.is_compiling():  # one opaque op in the graph, with its fake impl
            y, _ = _lora_fwd(*args)
        else:  # eager: the same bodies without the custom-op dispatch cost
            y = _LoraFunction.apply(*args)
    return y.reshape(*lead, weight.shape[0])
