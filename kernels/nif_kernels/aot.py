"""Ahead-of-time compile check of every Triton launch `lora_linear` makes, for real GPUs, on a CPU.

No GPU is needed: Triton compiles to PTX and cubin for any `GPUTarget` with the ptxas bundled in
its wheel. The check is binder-based, so signatures cannot drift from the code:

1. Trace (`_trace`): run `lora_linear` forward and backward for each backend on CPU tensors of
   the real shapes, with the launchers believing the tensors sit on a GPU of the target
   capability (`_as_gpu`: the `_blocks` / `_capability` seams of triton_lora.py), so they pick
   the tiles they would pick there. Every `kernel[grid](...)` is intercepted (never run), an
   autotuned kernel expands into one launch per config, and the arguments are specialised with
   Triton's own binder for the target, exactly as `JITFunction.run` does on a GPU (ints equal
   to 1 become constexpr, multiples of 16 get `tt.divisibility`). The big GEMMs, which stay on
   cuBLAS, are skipped (`_NoGemm`): on a CPU they would take minutes and launch nothing.
2. Compile (`_compile`): each distinct specialisation once, in a pool of spawned processes
   (spawned so that they import the kernels un-interpreted whatever TRITON_INTERPRET says), into
   a temporary Triton cache, so that every compile runs ptxas and its `-v` report (registers,
   spill bytes) is read; shared memory from the kernel metadata, the MMA kind from the PTX.
3. Judge (`verdict`): every launch compiles; shared memory within the arch's per-block limit;
   no spills at r <= 64; kernels with a `tt.dot` use tensor-core MMA on sm_80+.

`create_function_from_signature` and `JITFunction._pack_args` are private Triton APIs: setup.py
pins the Triton range this is tested with.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context

ARCHS = (70, 80, 90)
RANKS = (8, 16, 64, 128)
DROPOUTS = (0.0, 0.1)
SHAPE = (8192, 4096, 4096)  # (M tokens, K in, N out): a Llama-3-8B projection at 8k tokens
SPILL_FREE_RANK = 64  # no spills allowed at r <= this

# Maximum shared memory per thread block (dynamic, opt-in; Triton opts in at load), in bytes:
# CUDA C++ Programming Guide, "Technical Specifications per Compute Capability", row "Maximum
# amount of shared memory per thread block": 96 KB (7.0), 64 KB (7.5), 163 KB (8.0),
# 99 KB (8.6, 8.9), 227 KB (9.0).
SMEM_LIMITS = {70: 96 << 10, 75: 64 << 10, 80: 163 << 10, 86: 99 << 10, 89: 99 << 10, 90: 227 << 10}

_DTYPES = {"fp16": "float16", "bf16": "bfloat16"}
_JSON_KEYS = (
    "kernel",
    "arch",
    "dtype",
    "rank",
    "dropout",
    "regs",
    "spills_bytes",
    "smem_bytes",
    "mma",
    "compiled",
    "error",
)


def dtypes_for(arch: int) -> tuple[str, ...]:
    """fp16 everywhere; bf16 where the hardware has it (sm_80+)."""
    return ("fp16", "bf16") if arch >= 80 else ("fp16",)


def backends_for(arch: int) -> tuple[str, ...]:
    """The Triton backends that run there: "cublas" (the default, LoRA side in Triton) everywhere;
    "fused" (the Triton GEMM) only with tensor cores: it is never run on sm_7x (triton_lora.py)."""
    return ("cublas", "fused") if arch >= 80 else ("cublas",)


@dataclass
class Row:
    """One distinct compile for one (arch, dtype, rank, dropout); `kernel` names the JIT function,
    where `lora_linear` launches it ("fused fwd", ...) and, if autotuned, the config."""

    kernel: str
    arch: int
    dtype: str
    rank: int
    dropout: float
    regs: int | None = None
    spills_bytes: int | None = None
    smem_bytes: int | None = None
    mma: str | None = None
    compiled: bool = False
    error: str | None = None
    uses_dot: bool = False  # the TTIR has a tt.dot: it must become MMA on sm_80+
    seconds: float = 0.0

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k in _JSON_KEYS}


@dataclass
class Report:
    rows: list[Row]
    failures: list[str]
    seconds: float
    compiles: int
    triton_version: str
    archs: tuple[int, ...] = field(default=ARCHS)

    @property
    def passed(self) -> bool:
        return not self.failures


# ---- the verdict ----


def verdict(rows: list[Row]) -> list[str]:
    """The rules the check enforces; one line per broken rule and row (empty: it passes)."""
    failures = []
    for row in rows:
        where = f"{row.kernel} sm_{row.arch} {row.dtype} r={row.rank} p={row.dropout}"
        if not row.compiled:
            failures.append(f"{where}: does not compile: {row.error}")
            continue
        limit = SMEM_LIMITS.get(row.arch)
        if limit is not None and (row.smem_bytes or 0) > limit:
            failures.append(
                f"{where}: {row.smem_bytes} B of shared memory > the sm_{row.arch} limit {limit} B"
            )
        if row.rank <= SPILL_FREE_RANK and (row.spills_bytes or 0) > 0:
            failures.append(f"{where}: spills {row.spills_bytes} B at r <= {SPILL_FREE_RANK}")
        if row.arch >= 80 and row.uses_dot and row.mma is None:
            failures.append(f"{where}: tl.dot without tensor-core MMA")
    return failures


# ---- tracing: the launches lora_linear makes on a GPU of capability `arch` ----


@contextlib.contextmanager
def _as_gpu(tk, arch: int):
    """Make the launchers choose what they choose on sm_`arch` for CPU tensors. The seams are
    triton_lora's `_blocks(device)` (common tiles) and `_capability(device)` (per-arch tiles);
    fail loudly if they are renamed, rather than silently checking the CPU tiles."""
    import torch

    missing = [name for name in ("_blocks", "_capability") if not hasattr(tk, name)]
    if missing:
        raise RuntimeError(f"nif_kernels.aot: triton_lora has no {missing}; update `_as_gpu`")
    cap = (arch // 10, arch % 10)
    gpu = torch.device("cuda", 0)
    saved = (tk._blocks, tk._capability, torch.cuda.get_device_capability)
    blocks = tk._blocks
    tk._blocks = lambda device, *a, **k: blocks(gpu, *a, **k)
    tk._capability = lambda device=None: cap
    torch.cuda.get_device_capability = lambda device=None: cap
    try:
        yield
    finally:
        tk._blocks, tk._capability, torch.cuda.get_device_capability = saved


def _no_gemm_mode():
    """A dispatch mode that answers the big matmuls (cuBLAS on a GPU) with empty tensors of the
    right shape: tracing runs the real op bodies but launches no kernel through them."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    heavy = {"mm", "addmm", "addmm_", "bmm", "baddbmm", "matmul", "linear"}
    cpu_keys = torch._C.DispatchKeySet(torch._C.DispatchKey.CPU)

    class _NoGemm(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            name = func._schema.name.split("::")[-1]
            if func.namespace == "aten" and name in heavy:
                if func._schema.is_mutable:  # addmm_: the in-place add of the LoRA term
                    return args[0]
                meta = [a.to("meta") if isinstance(a, torch.Tensor) else a for a in args]
                out = func(*meta, **kwargs)
                return torch.empty(out.shape, dtype=out.dtype)
            if func.namespace not in ("aten", "prims"):  # our custom ops: run their bodies here
                with self:
                    return func.redispatch(cpu_keys, *args, **kwargs)
            return func(*args, **kwargs)

    return _NoGemm()


def _expand(kernel, args, kwargs):
    """(JITFunction, kwargs, config label) per launch an outer kernel object would make."""
    from triton.runtime.autotuner import Autotuner, Heuristics

    if isinstance(kernel, Autotuner):
        configs = kernel.configs
        if kernel.early_config_prune:  # as Autotuner.prune_configs does at launch
            configs = kernel.early_config_prune(
                configs, dict(zip(kernel.arg_names, args, strict=False)), **kwargs
            )
        for cfg in configs:
            kw = {**kwargs, **cfg.all_kwargs()}
            label = ",".join(f"{k}={v}" for k, v in cfg.kwargs.items())
            label += f",warps={cfg.num_warps},stages={cfg.num_stages}"
            for fn, kw2, _ in _expand(kernel.fn, args, kw):
                yield fn, kw2, label
    elif isinstance(kernel, Heuristics):
        kw = dict(kwargs)
        for name, heur in kernel.values.items():
            kw[name] = heur({**dict(zip(kernel.arg_names, args, strict=False)), **kw})
        yield from _expand(kernel.fn, args, kw)
    else:
        yield kernel, kwargs, ""


def _specialise(fn, arch: int, args, kwargs) -> dict:
    """What JITFunction.run hands to the compiler on a GPU of capability `arch`."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    backend = make_backend(GPUTarget("cuda", arch, 32))
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    kwargs = {**kwargs, "debug": False}
    bound, spec, opts = binder(*args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, spec, opts)
    return {
        "module": fn.module,
        "name": fn.fn.__name__,
        "arch": arch,
        "signature": signature,
        "constexprs": constexprs,
        "attrs": attrs,
        "options": options.__dict__,
    }


def _spec_key(spec: dict) -> str:
    return repr(
        (
            spec["module"],
            spec["name"],
            spec["arch"],
            sorted(spec["signature"].items()),
            sorted(spec["constexprs"].items(), key=repr),
            sorted(spec["attrs"].items(), key=repr),
            sorted(spec["options"].items(), key=repr),
        )
    )


def _trace(arch: int, dtypes, ranks, dropouts, backends, shape) -> list[tuple[dict, dict]]:
    """[(case, spec)] for every launch of lora_linear forward + backward; case: the row's arch,
    dtype, rank and dropout, where it was launched ("fused bwd") and the autotune config."""
    import torch
    from triton.runtime.jit import KernelInterface

    from . import triton_lora as tk
    from .lora import lora_linear

    M, K, N = shape
    out, site = [], {}

    def record(kernel, grid):
        def launch(*args, **kwargs):
            for fn, kw, config in _expand(kernel, args, kwargs):
                case = {**site["case"], "at": site["at"], "config": config}
                out.append((case, _specialise(fn, arch, args, kw)))

        return launch

    getitem = KernelInterface.__getitem__
    KernelInterface.__getitem__ = record
    try:
        with _as_gpu(tk, arch), _no_gemm_mode():
            for dtype in dtypes:
                dt = getattr(torch, _DTYPES[dtype])
                for rank in ranks:
                    for p in dropouts:
                        for backend in backends:
                            site["case"] = dict(arch=arch, dtype=dtype, rank=rank, dropout=p)
                            x = torch.empty(M, K, dtype=dt, requires_grad=True)
                            w, bias = torch.empty(N, K, dtype=dt), torch.empty(N, dtype=dt)
                            a = torch.empty(rank, K, dtype=dt, requires_grad=True)
                            b = torch.empty(N, rank, dtype=dt, requires_grad=True)
                            site["at"] = f"{backend} fwd"
                            y = lora_linear(x, w, a, b, 2.0, bias, p, seed=1, backend=backend)
                            site["at"] = f"{backend} bwd"
                            y.backward(torch.empty_like(y))
    finally:
        KernelInterface.__getitem__ = getitem
    return out


# ---- compiling ----

_MMA_KINDS = (
    ("tcgen05.mma", "tcgen05.mma"),
    ("wgmma.mma_async", "wgmma"),
    ("mma.sync", "mma.sync"),
)


def _ptxas_report(log: str) -> tuple[int | None, int | None]:
    regs = [int(n) for n in re.findall(r"Used (\d+) registers", log)]
    spills = [int(n) for n in re.findall(r"(\d+) bytes spill stores", log)]
    return (max(regs) if regs else None), (max(spills) if spills else None)


def _ptxas_v(ptx: str, arch: int) -> str:
    """`ptxas -v` on the PTX with Triton's own ptxas, when the compile did not run it (cache)."""
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability

    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        cmd = [get_ptxas(arch).path, "-v", "--regAllocOptLevel=2"]
        cmd += [f"--gpu-name={sm_arch_from_capability(arch)}", src, "-o", src + ".o"]
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stderr


def _compile(spec: dict) -> dict:
    """Compile one specialisation for its arch; regs/spills/smem/mma or the error."""
    import importlib

    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.jit import JITFunction

    fn = getattr(importlib.import_module(spec["module"]), spec["name"])
    while not isinstance(fn, JITFunction):  # an autotuned / heuristics wrapper
        fn = fn.fn
    arch = spec["arch"]
    src = ASTSource(fn, spec["signature"], spec["constexprs"], spec["attrs"])
    start, log = time.perf_counter(), io.StringIO()
    try:
        knobs.nvidia.dump_ptxas_log = True  # make_cubin prints ptxas -v; we read it
        with contextlib.redirect_stdout(log):
            ck = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=spec["options"])
    except Exception as err:  # a compile error is a row, not a crash
        lines = [ln for ln in str(err).strip().splitlines() if ln.strip()]
        error = f"{type(err).__name__}: {lines[0] if lines else ''}"[:300]
        return {"compiled": False, "error": error, "seconds": time.perf_counter() - start}
    ptx = ck.asm["ptx"]
    regs, spills = _ptxas_report(log.getvalue())
    if regs is None:
        regs, spills = _ptxas_report(_ptxas_v(ptx, arch))
    mma = next((name for needle, name in _MMA_KINDS if needle in ptx), None)
    return {
        "compiled": True,
        "regs": regs,
        "spills_bytes": spills,
        "smem_bytes": ck.metadata.shared,
        "mma": mma,
        "uses_dot": "tt.dot" in ck.asm["ttir"],
        "seconds": time.perf_counter() - start,
    }


def _init_worker(cache_dir: str) -> None:
    # Before the kernels are imported in this (spawned) process: real JIT functions, and a
    # cache of our own so that every compile runs ptxas (its -v report is the spill count).
    os.environ["TRITON_INTERPRET"] = "0"
    os.environ["TRITON_CACHE_DIR"] = cache_dir
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # 3.9's runtime default, unwarned


def _trace_job(job) -> list[tuple[dict, dict]]:
    return _trace(*job)


# ---- the check ----


def check(
    archs=ARCHS,
    *,
    ranks=RANKS,
    dropouts=DROPOUTS,
    dtypes=None,
    backends=None,
    kernels=None,
    shape=SHAPE,
    workers: int = 2,
) -> Report:
    """Trace and compile every launch for `archs`; `dtypes`/`backends` default to what each arch
    runs (`dtypes_for`, `backends_for`); `kernels` (JIT function names) narrows the compiles."""
    import triton

    for arch in archs:
        if arch not in SMEM_LIMITS:
            raise ValueError(f"arch {arch} unknown; choose from {sorted(SMEM_LIMITS)}")
    start = time.perf_counter()
    jobs = [
        (
            arch,
            tuple(d for d in (dtypes or dtypes_for(arch)) if d in dtypes_for(arch)),
            tuple(ranks),
            tuple(dropouts),
            tuple(backends or backends_for(arch)),
            tuple(shape),
        )
        for arch in archs
    ]
    with tempfile.TemporaryDirectory(prefix="nif-aot-") as cache:
        pool = ProcessPoolExecutor(
            max_workers=max(1, min(workers, os.cpu_count() or 1)),
            mp_context=get_context("spawn"),
            initializer=_init_worker,
            initargs=(cache,),
        )
        with pool:
            launches = [item for traced in pool.map(_trace_job, jobs) for item in traced]
            if kernels:
                launches = [(c, s) for c, s in launches if s["name"] in kernels]
            unique = {}
            for _, spec in launches:
                unique.setdefault(_spec_key(spec), spec)
            keys = list(unique)
            results = dict(zip(keys, pool.map(_compile, [unique[k] for k in keys]), strict=True))
    rows = _rows(launches, results)
    return Report(
        rows=rows,
        failures=verdict(rows),
        seconds=time.perf_counter() - start,
        compiles=len(results),
        triton_version=triton.__version__,
        archs=tuple(archs),
    )


def _rows(launches, results) -> list[Row]:
    """One row per distinct compile per (arch, dtype, rank, dropout); a specialisation launched
    from several places (the same `_down` in both backends) is one row naming all of them."""
    merged: dict[tuple, tuple[dict, set[str]]] = {}
    for case, spec in launches:
        key = (case["arch"], case["dtype"], case["rank"], case["dropout"], _spec_key(spec))
        merged.setdefault(key, (dict(case, name=spec["name"]), set()))[1].add(case["at"])
    rows = []
    for key, (case, places) in merged.items():
        label = f"{case['name']} [{', '.join(sorted(places))}]"
        label += f" {{{case['config']}}}" if case["config"] else ""
        fields = {k: case[k] for k in ("arch", "dtype", "rank", "dropout")}
        rows.append(Row(kernel=label, **fields, **results[key[-1]]))
    rows.sort(key=lambda r: (r.kernel, r.arch, r.dtype, r.rank, r.dropout))
    return rows


# ---- output ----


def _kb(n: int | None) -> str:
    return "-" if n is None else f"{n / 1024:.0f} KB"


def table(rows: list[Row], archs=None) -> str:
    """Markdown, kernel x arch: worst registers / spill bytes / shared memory over the dtypes,
    ranks and dropouts checked, and the MMA kinds ("-" none; "FAIL" where one does not compile)."""
    archs = archs or sorted({r.arch for r in rows})
    kernels = sorted({r.kernel for r in rows})
    lines = [
        "| kernel [launched by] | " + " | ".join(f"sm_{a}" for a in archs) + " |",
        "|---" * (len(archs) + 1) + "|",
    ]
    for kernel in kernels:
        cells = []
        for arch in archs:
            cell = [r for r in rows if r.kernel == kernel and r.arch == arch]
            if not cell:
                cells.append("")
            elif not all(r.compiled for r in cell):
                cells.append("FAIL")
            else:
                regs = max(r.regs or 0 for r in cell)
                spills = max(r.spills_bytes or 0 for r in cell)
                smem = max(r.smem_bytes or 0 for r in cell)
                mma = "+".join(sorted({r.mma or "-" for r in cell}))
                cells.append(f"{regs} / {spills} / {_kb(smem)} / {mma}")
        lines.append(f"| `{kernel}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)
