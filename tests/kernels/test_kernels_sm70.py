"""`_ds_db` on a V100 (sm_70) does not spill registers at r=64: the launcher's sm_7x tiles
(`FMA_TILES`), compiled ahead of time for GPUTarget("cuda", 70, 32) with Triton's bundled ptxas.
No GPU needed. The compile runs in a subprocess with TRITON_INTERPRET=0 (the tests' interpreter
mode turns `triton.jit` functions into Python functions, which cannot be compiled)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import torch


def _launch_of_ds_db(r: int) -> tuple[tuple, dict]:
    """The (args, kwargs) `ds_db` launches `_ds_db` with on an sm_70 device, captured on CPU."""
    from nif_kernels import triton_lora as tk

    seen = {}

    class Recorder:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: seen.update(args=args, kwargs=kwargs)

    real_kernel, real_cap = tk._ds_db, tk._capability
    tk._ds_db, tk._capability = Recorder(), lambda device: (7, 0)
    try:
        h = torch.float16
        tk.ds_db(
            torch.zeros(256, 256, dtype=h),
            torch.zeros(256, r, dtype=h),
            torch.zeros(256, r, dtype=h),
            0.5,
        )
    finally:
        tk._ds_db, tk._capability = real_kernel, real_cap
    return seen["args"], seen["kwargs"]


def _compile_sm70(r: int) -> dict:
    """regs and spill-store bytes of `_ds_db` compiled for sm_70 (ptxas -v), specialised and
    measured as `nif kernels check` does (nif_kernels/aot.py: Triton's binder, Triton's ptxas
    flags)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from nif_kernels import aot
    from nif_kernels import triton_lora as tk

    args, kwargs = _launch_of_ds_db(r)
    spec = aot._specialise(tk._ds_db, 70, args, kwargs)
    src = ASTSource(tk._ds_db, spec["signature"], spec["constexprs"], spec["attrs"])
    target = GPUTarget("cuda", 70, 32)
    ptx = triton.compile(src, target=target, options=spec["options"]).asm["ptx"]
    regs, spills = aot._ptxas_report(aot._ptxas_v(ptx, 70))
    return {
        "regs": regs,
        "spills": spills,
        "fma": len(re.findall(r"\bfma\.rn\.f32", ptx)),
        "BR": kwargs["BR"],
        "num_warps": spec["options"]["num_warps"],
    }


def test_ds_db_sm70_r64_does_not_spill():
    pytest.importorskip("triton.backends.nvidia.compiler")
    env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_DEFAULT_FP_FUSION": "1"}
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "64"],
        capture_output=True,
        text=True,
        env=env,
        cwd=root,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["BR"] == 64 and got["num_warps"] == 8  # the sm_7x launch, one rank chunk
    assert got["fma"] > 0  # FMA dots (sm_70 has no mma in Triton)
    assert got["spills"] == 0, got


if __name__ == "__main__":
    sys.path.insert(0, os.getcwd())
    print(json.dumps(_compile_sm70(int(sys.argv[1]))))
