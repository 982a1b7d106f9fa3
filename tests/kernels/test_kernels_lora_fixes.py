"""The real-GPU fixes of issue 12, each checked on the CPU (Triton interpreter): a deterministic
dB reduction, launches under the tensors' device, IEEE fp32 dots, 64-bit offsets, rank blocks
(r=8 unpadded where it is not the reduction dim, large ranks chunked), PEFT's `lora_bias`, a
non-contiguous bias, and the default backend keeping the big GEMMs on cuBLAS."""

from __future__ import annotations

import contextlib
import logging

import pytest
import torch
import triton
import triton.language as tl

from nif_kernels import lora as lora_mod
from nif_kernels import lora_linear, lora_reference, peft_patch, use_fused_lora
from nif_kernels import triton_lora as tk

from .test_kernels_lora import _case, _check

KERNELS = ("_down", "_gemm_lora", "_gemm_lora_tuned", "_ds_db", "_da")


@pytest.fixture
def launches(monkeypatch):
    """Records every kernel launch (name, kwargs) and the device guard active around it."""
    log: list[dict] = []
    guard: list[torch.device] = []

    @contextlib.contextmanager
    def fake_guard(device):
        guard.append(device)
        try:
            yield
        finally:
            guard.pop()

    class Spy:
        def __init__(self, name, fn):
            self.name, self.fn = name, fn

        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                log.append({"name": self.name, "kwargs": kwargs, "guard": list(guard)})
                return self.fn[grid](*args, **kwargs)

            return launch

    monkeypatch.setattr(tk, "_device_guard", fake_guard)
    for name in KERNELS:
        monkeypatch.setattr(tk, name, Spy(name, getattr(tk, name)))
    return log


def _fwd_bwd(backend, dtype, r=16, p=0.0):
    x, W, b, A, B = _case(37, 100, 75, r, dtype)
    A1 = A.clone().requires_grad_()
    y = lora_linear(x, W, A1, B, 2.0, bias=b, dropout_p=p, seed=3, backend=backend)
    y.float().sum().backward()
    return x


# ---- 1. dB: a deterministic two-pass reduction ----


@pytest.mark.parametrize("deterministic", [True, False])
def test_ds_db_is_deterministic_and_matches_the_reference(deterministic):
    g = torch.Generator().manual_seed(0)
    dy, b, t = torch.randn(150, 75, generator=g), torch.randn(75, 16), torch.randn(150, 16)
    ds1, db1 = tk.ds_db(dy, b, t, 0.5, deterministic=deterministic)
    ds2, db2 = tk.ds_db(dy, b, t, 0.5, deterministic=deterministic)
    assert torch.equal(db1, db2) and torch.equal(ds1, ds2)
    ref_db = 0.5 * dy.double().t() @ t.double()
    torch.testing.assert_close(db1.double(), ref_db, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ds1.double(), 0.5 * dy.double() @ b.double(), atol=1e-5, rtol=1e-5)


def test_the_op_uses_the_deterministic_reduction(launches):
    _fwd_bwd("cublas", torch.float32)
    (ds_db,) = [launch for launch in launches if launch["name"] == "_ds_db"]
    assert ds_db["kwargs"]["SPLIT_DB"] is True


# ---- 2. launches under the tensors' device ----


def test_device_guard_picks_the_tensors_device():
    guard = tk._device_guard(torch.device("cuda", 1))
    assert isinstance(guard, torch.cuda.device) and guard.idx == 1
    assert isinstance(tk._device_guard(torch.device("cpu")), contextlib.nullcontext)


@pytest.mark.parametrize("backend", ["fused", "cublas"])
def test_every_launch_runs_under_the_tensors_device(launches, backend):
    x = _fwd_bwd(backend, torch.float32, p=0.1)
    assert launches, "no kernel launched"
    for launch in launches:
        assert launch["guard"] == [x.device], launch["name"]


# ---- 3. fp32 dots in IEEE precision, not TF32 ----


@pytest.mark.parametrize("backend", ["fused", "cublas"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_fp32_dots_are_specialised_ieee(launches, backend, dtype):
    _fwd_bwd(backend, dtype, p=0.1)
    want = "ieee" if dtype == torch.float32 else "tf32"
    assert launches, "no kernel launched"
    for launch in launches:
        assert launch["kwargs"]["DOT_PRECISION"] == want, launch["name"]


# ---- 4. 64-bit offsets ----


@triton.jit
def _probe_offsets(out_ptr, start, stride, B: tl.constexpr):
    rows = tk._span(start, B)
    tl.store(out_ptr + tl.arange(0, B), rows * stride)


def test_offsets_are_int64_past_2_31():
    out = torch.empty(16, dtype=torch.int64)
    _probe_offsets[(1,)](out, 4096, 2**20, B=16)
    want = (4096 + torch.arange(16, dtype=torch.int64)) * 2**20
    assert want.max() > 2**31 and torch.equal(out, want)


# ---- 5. rank blocks ----


def test_rank_blocks():
    assert tk._rank_block(8) == 8  # r is an output dim of every dot but one: no padding
    assert tk._rank_block(8, reduction=True) == 16  # tl.dot needs K >= 16 for 16-bit inputs
    assert tk._rank_block(16) == 16 and tk._rank_block(40) == 64
    assert tk._rank_block(128) == tk._rank_block(256) == 64  # chunked: smem/registers in budget
    assert tk._rank_block(256, reduction=True) == 64


@pytest.mark.parametrize("backend", ["fused", "cublas"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("r", [128, 256])
def test_large_ranks_match_the_reference(backend, dtype, r):
    _check(backend, 37, 100, 75, r, dtype)


@pytest.mark.parametrize("backend", ["fused", "cublas"])
def test_large_rank_with_dropout(backend):
    _check(backend, 37, 100, 75, 100, torch.float32, p=0.2)


# ---- 6. PEFT's lora_bias ----


def _peft_model(lora_bias: bool):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(24, 32), torch.nn.ReLU(), torch.nn.Linear(32, 16))
    cfg = LoraConfig(r=8, lora_alpha=16, target_modules=["0", "2"], lora_bias=lora_bias)
    model = get_peft_model(base, cfg)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.5)
    return model


def test_lora_bias_layers_give_peft_output(caplog, monkeypatch):
    monkeypatch.setattr(peft_patch, "_warned", set())
    stock, ours = _peft_model(True), _peft_model(True)
    use_fused_lora(ours, backend="cublas")
    x = torch.randn(5, 24)
    with caplog.at_level(logging.WARNING, logger=peft_patch.__name__):
        got = ours(x)
        ours(x)
    torch.testing.assert_close(got, stock(x), atol=1e-6, rtol=1e-6)
    warnings = [rec for rec in caplog.records if "lora_bias" in rec.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING


# ---- 7. a non-contiguous bias ----


@pytest.mark.parametrize("backend", ["fused", "cublas"])
def test_non_contiguous_bias(backend):
    x, W, _, A, B = _case(37, 100, 75, 16, torch.float32)
    bias = torch.randn(150)[::2]
    assert not bias.is_contiguous()
    y = lora_linear(x, W, A, B, 2.0, bias=bias, backend=backend)
    torch.testing.assert_close(y, lora_reference(x, W, A, B, 2.0, bias), atol=2e-5, rtol=1e-5)


# ---- 8. the default keeps the big GEMMs on cuBLAS ----


def test_default_backend_keeps_cublas_on_every_arch(monkeypatch):
    for major in (7, 8, 9, 10):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d, m=major: (m, 0))
        assert lora_mod.pick_backend(torch.device("cuda", 0)) == "cublas"
    assert lora_mod.pick_backend(torch.device("cpu")) == "torch"


def test_fused_gemm_is_autotuned_with_one_config_under_the_interpreter():
    assert isinstance(tk._gemm_lora_tuned, triton.runtime.Autotuner)
    assert len(tk._gemm_lora_tuned.configs) == 1  # TRITON_INTERPRET=1 in the tests
    sizes = {(c.kwargs["BM"], c.kwargs["BN"], c.kwargs["BK"]) for c in tk.GEMM_CONFIGS}
    assert len(tk.GEMM_CONFIGS) >= 4 and {64, 128} <= {s for bs in sizes for s in bs[:2]}
    assert {c.kwargs["GROUP_M"] for c in tk.GEMM_CONFIGS} == {8}


def test_dropout_mask_launches_only_the_configs_it_fits_in():
    masked = tk.prune_gemm_configs(tk.GEMM_CONFIGS, {}, MASK_LORA=True)
    assert 0 < len(masked) < len(tk.GEMM_CONFIGS) and all(c.fits_mask for c in masked)
    # At most 64 fp32 accumulator elements per thread beside the Philox draw.
    assert all(c.kwargs["BM"] * c.kwargs["BN"] // (32 * c.num_warps) <= 64 for c in masked)
    assert tk.prune_gemm_configs(tk.GEMM_CONFIGS, {}, MASK_LORA=False) == tk.GEMM_CONFIGS
    assert tk._gemm_lora_tuned.early_config_prune is tk.prune_gemm_configs


def test_sm70_is_still_accepted_as_the_cublas_path():
    x, W, b, A, B = _case(9, 32, 24, 8, torch.float32)
    torch.testing.assert_close(
        lora_linear(x, W, A, B, 2.0, bias=b, backend="sm70"),
        lora_linear(x, W, A, B, 2.0, bias=b, backend="cublas"),
    )


# ---- sm_7x: cuBLAS where the FMA kernel loses on paper ----


def test_cublas_beats_fma_only_on_sm7x_from_rank_32(monkeypatch):
    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(tk, "_capability", lambda device: (7, 0))
    decide = tk.cublas_beats_fma
    assert [decide("ds_db", r, 0.0, cuda) for r in (8, 16, 32, 64)] == [False, False, True, True]
    assert [decide("down", r, 0.0, cuda) for r in (8, 16, 32, 64)] == [False, False, True, True]
    # With dropout cuBLAS would need drop(x) materialised: down/da stay in Triton, ds_db does not
    # see the mask.
    assert not decide("down", 64, 0.1, cuda) and not decide("da", 64, 0.1, cuda)
    assert decide("ds_db", 64, 0.1, cuda)
    monkeypatch.setattr(tk, "_capability", lambda device: (8, 0))
    assert not any(decide(k, 128, 0.0, cuda) for k in ("down", "ds_db", "da"))
    assert not decide("ds_db", 128, 0.0, torch.device("cpu"))


@pytest.mark.parametrize(
    ("r", "p", "triton_kernels"),
    [
        (16, 0.0, {"_down", "_ds_db", "_da"}),
        (32, 0.0, set()),
        (32, 0.1, {"_down", "_da", "_gemm_lora"}),  # dropout: masked dX add stays in Triton
    ],
)
def test_sm7x_lora_side_takes_the_cheaper_path_and_stays_exact(
    monkeypatch, launches, r, p, triton_kernels
):
    """On a (pretended) V100 the op launches Triton only where FMA wins on paper, and the
    gradients match the reference either way."""
    monkeypatch.setattr(tk, "_capability", lambda device: (7, 0))
    _check("cublas", 40, 48, 56, r, torch.float32, p=p)
    assert {launch["name"] for launch in launches} == triton_kernels
