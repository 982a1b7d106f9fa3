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
import tempfile

import pytest
import torch


def _launch_of_ds_db(r: int) -> tuple[tuple, dict]:
    """The (args, kwargs) `ds_db` launches `_ds_db` with on an sm_70 device, captured on CPU."""
    from kernels import triton_lora as tk

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


def _signature(fn, args: tuple, consts: dict) -> tuple[dict, dict, dict]:
    """Specialise as the JIT does on a GPU: ints equal to 1 become constexpr, pointers and ints
    divisible by 16 get tt.divisibility=16."""
    types = {torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.float32: "*fp32"}
    sig, cx, attrs = {}, dict(consts), {}
    for i, (name, v) in enumerate(zip(fn.arg_names, args, strict=False)):
        if isinstance(v, int) and v == 1:
            sig[name], cx[name] = "constexpr", 1
            continue
        sig[name] = (
            types[v.dtype]
            if isinstance(v, torch.Tensor)
            else ("fp32" if isinstance(v, float) else "i32")
        )
        if isinstance(v, torch.Tensor) or (isinstance(v, int) and v % 16 == 0):
            attrs[(i,)] = [["tt.divisibility", 16]]
    sig.update({name: "constexpr" for name in consts})
    return sig, cx, attrs


def _compile_sm70(r: int) -> dict:
    """regs and spill-store bytes of `_ds_db` compiled for sm_70 (ptxas -v)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import get_ptxas
    from triton.compiler import ASTSource

    from kernels import triton_lora as tk

    args, kwargs = _launch_of_ds_db(r)
    options = {"num_warps": kwargs.pop("num_warps", 4), "num_stages": kwargs.pop("num_stages", 3)}
    src = ASTSource(tk._ds_db, *_signature(tk._ds_db, args, kwargs))
    ptx = triton.compile(src, target=GPUTarget("cuda", 70, 32), options=options).asm["ptx"]
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        cmd = [get_ptxas(70).path, "-v", "--gpu-name=sm_70", "-o", path + ".o", path]
        log = subprocess.run(cmd, capture_output=True, text=True, check=True).stderr
    return {
        "regs": int(re.search(r"Used (\d+) registers", log).group(1)),
        "spills": int(re.search(r"(\d+) bytes spill stores", log).group(1)),
        "fma": len(re.findall(r"\bfma\.rn\.f32", ptx)),
        "BR": kwargs["BR"],
        "num_warps": options["num_warps"],
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
