"""`nif kernels check`: the launches traced and compiled for real GPUs on this CPU, the rows it
reports, its JSON and its verdict, and the full default matrix through the CLI, as CI runs it."""

from __future__ import annotations

import json
import re
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import pytest

from nif_kernels import aot
from nif_kernels import triton_lora as tk
from nif_lightning.cli import main

_KEYS = {
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
}


@pytest.fixture(scope="module")
def down_sm80():
    """One kernel, sm_80 fp16, r=16, p=0: a single compile (a few seconds)."""
    return aot.check(
        (80,),
        dtypes=("fp16",),
        ranks=(16,),
        dropouts=(0.0,),
        backends=("cublas",),
        kernels=("_down",),
    )


def test_one_compile_gives_a_full_row(down_sm80):
    assert down_sm80.compiles == 1 and down_sm80.passed
    (row,) = down_sm80.rows
    assert row.kernel == "_down [cublas fwd]"
    assert (row.arch, row.dtype, row.rank, row.dropout) == (80, "fp16", 16, 0.0)
    assert row.compiled and row.error is None
    assert 0 < row.regs <= 255 and row.spills_bytes == 0
    assert 0 < row.smem_bytes <= aot.SMEM_LIMITS[80]
    assert row.uses_dot and row.mma == "mma.sync"  # tensor cores on sm_80
    assert set(row.to_json()) == _KEYS


def test_the_launchers_choose_the_gpu_tiles(tmp_path):
    """Traced as on the GPU, not with the CPU/interpreter tiles: on sm_7x `_ds_db` takes its
    FMA tile (8 warps), on sm_80 the common one (4 warps). Traced in a spawned process, as
    `check` does: this one runs the kernels under the interpreter."""
    spawn = get_context("spawn")
    init = dict(mp_context=spawn, initializer=aot._init_worker, initargs=(str(tmp_path),))
    with ProcessPoolExecutor(1, **init) as pool:
        for arch, warps in ((70, 8), (80, 4)):
            job = (arch, ("fp16",), (16,), (0.0,), ("cublas",), (256, 128, 128))
            launches = pool.submit(aot._trace_job, job).result()
            (spec,) = [s for _, s in launches if s["name"] == "_ds_db"]
            assert spec["options"]["num_warps"] == warps, arch
            assert spec["constexprs"], arch


def _row(**kw) -> aot.Row:
    base = dict(kernel="_k [cublas fwd]", arch=80, dtype="fp16", rank=16, dropout=0.0, regs=64)
    base.update(spills_bytes=0, smem_bytes=16384, mma="mma.sync", compiled=True, uses_dot=True)
    return aot.Row(**{**base, **kw})


def test_verdict_rules():
    assert aot.verdict([_row()]) == []
    assert "does not compile" in aot.verdict([_row(compiled=False, error="boom")])[0]
    over = aot.verdict([_row(arch=70, smem_bytes=aot.SMEM_LIMITS[70] + 1, mma=None)])
    assert len(over) == 1 and "shared memory" in over[0]
    assert aot.verdict([_row(arch=90, smem_bytes=aot.SMEM_LIMITS[80] + 1, mma="wgmma")]) == []
    assert "spills" in aot.verdict([_row(rank=64, spills_bytes=8)])[0]
    assert aot.verdict([_row(rank=128, spills_bytes=8)]) == []  # spills allowed above r=64
    assert "MMA" in aot.verdict([_row(mma=None)])[0]
    assert aot.verdict([_row(arch=70, mma=None)]) == []  # no tensor cores for tl.dot on sm_70
    assert aot.verdict([_row(mma=None, uses_dot=False)]) == []


def test_json_rows_have_the_issue_keys(monkeypatch, capsys, down_sm80):
    monkeypatch.setattr(aot, "check", lambda archs: down_sm80)
    assert main(["kernels", "check", "--arch", "80", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [set(r) for r in rows] == [_KEYS]
    assert rows[0]["mma"] == "mma.sync" and rows[0]["arch"] == 80


def test_table_and_exit_1_on_a_broken_rule(monkeypatch, capsys, down_sm80):
    broken = aot.Report(
        rows=[_row(spills_bytes=8)],
        failures=aot.verdict([_row(spills_bytes=8)]),
        seconds=1.0,
        compiles=1,
        triton_version="x",
    )
    monkeypatch.setattr(aot, "check", lambda archs: broken)
    assert main(["kernels", "check", "--arch", "80"]) == 1
    out, err = capsys.readouterr()
    assert "| `_k [cublas fwd]` | 64 / 8 / 16 KB / mma.sync |" in out
    assert "spills 8 B" in err


@pytest.mark.parametrize("arch", ["71", "sm_80", "", "80,x"])
def test_bad_arch_is_exit_2(arch, capsys):
    assert main(["kernels", "check", "--arch", arch]) == 2
    assert "--arch" in capsys.readouterr().err


@pytest.mark.timeout(1200)  # ~3-4 min alone on 2 cores; more on a shared machine
def test_full_default_matrix_passes_every_rule(tmp_path, capsys):
    """`nif kernels check` as CI runs it: the whole default matrix (sm_70/80/90, both backends,
    every autotune config) compiles and passes every rule; --save writes the rows and the table."""
    assert main(["kernels", "check", "--save", str(tmp_path)]) == 0, capsys.readouterr().err
    rows = json.loads((tmp_path / "kernels_check.json").read_text())
    assert rows and all(row["compiled"] for row in rows)
    seen = {(row["arch"], row["dtype"], row["rank"], row["dropout"]) for row in rows}
    for arch in (80, 90):
        for dtype in ("fp16", "bf16"):
            assert {(arch, dtype, r, p) for r in aot.RANKS for p in aot.DROPOUTS} <= seen
    # sm_70: from r = 32 without dropout every LoRA-side dot is cuBLAS's (cublas_beats_fma), so
    # nothing is launched there; with dropout `_down`/`_da` and the masked add stay in Triton.
    small = {r for r in aot.RANKS if r < 32}
    assert {(70, "fp16", r, p) for r in aot.RANKS for p in aot.DROPOUTS if r in small or p} <= seen
    assert not {(70, "fp16", r, 0.0) for r in aot.RANKS if r not in small} & seen
    # Every autotune config of the fused GEMM is compiled, forward and backward.
    for where in ("fused fwd", "fused bwd"):
        tiles = {
            re.search(r"BM=(\d+),BN=(\d+),BK=(\d+)", row["kernel"]).groups()
            for row in rows
            if where in row["kernel"] and "{" in row["kernel"]
        }
        want = {tuple(str(c.kwargs[k]) for k in ("BM", "BN", "BK")) for c in tk.GEMM_CONFIGS}
        assert tiles == want, where
    assert "**Verdict: passed**" in (tmp_path / "kernels_check.md").read_text()


def test_save_into_a_file_is_exit_2(tmp_path, capsys):
    (tmp_path / "f").write_text("")
    assert main(["kernels", "check", "--save", str(tmp_path / "f")]) == 2
    assert "--save" in capsys.readouterr().err
