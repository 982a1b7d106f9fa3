"""`lora_linear` against the plain-torch reference: output and every gradient, fp32 and fp16, odd
and round shapes, ranks 8/16/64, bias or not, dropout with a fixed seed, 2-D/3-D and
non-contiguous inputs, both Triton paths (under TRITON_INTERPRET=1 on the CPU, for real with
`-m gpu`), torch.compile tracing, and a tiny Llama trained with PEFT's layer vs ours."""

from __future__ import annotations

import pytest
import torch

from nif_kernels import lora_linear, lora_reference, use_fused_lora
from nif_kernels import triton_lora as tk

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# Tolerances. fp32: the kernels and torch sum the same products in different orders; with
# K <= 128 terms of size ~1 the rounding difference stays below ~1e-5 absolute. fp16: inputs
# are rounded to 11-bit mantissas (relative 2^-11 ~ 5e-4 per element) before fp32 accumulation
# in both paths, and results are stored in fp16; errors scale with the output magnitude, so the
# check is relative to the reference's largest entry: 1e-2 covers K <= 128 comfortably.
TOL = {torch.float32: 2e-5, torch.float16: 1e-2, torch.bfloat16: 4e-2}


def _case(M, K, N, r, dtype, *, bias=True, batch3d=False, noncontig=False, device=DEVICE):
    g = torch.Generator().manual_seed(M * 1000 + K + N + r)
    shape = (2, M // 2 + 1, K) if batch3d else (M, K)
    x = torch.randn(shape, generator=g)
    if noncontig:  # every other column of a wider tensor: strided rows
        x = torch.randn((*shape[:-1], 2 * K), generator=g)[..., ::2]
    W = torch.randn(N, K, generator=g) / K**0.5
    b = torch.randn(N, generator=g) if bias else None
    A = torch.randn(r, K, generator=g) / K**0.5
    B = torch.randn(N, r, generator=g) / r**0.5
    to = {"device": device}
    return (
        x.to(dtype=dtype, **to),
        W.to(dtype=dtype, **to),
        b.to(dtype=dtype, **to) if b is not None else None,
        A.to(**to),  # LoRA params stay fp32 masters, as in training
        B.to(**to),
    )


def _check(backend, M, K, N, r, dtype, p=0.0, **kw):
    x, W, b, A, B = _case(M, K, N, r, dtype, **kw)
    x1, A1, B1 = (t.clone().requires_grad_() for t in (x, A, B))
    y = lora_linear(x1, W, A1, B1, 2.0, bias=b, dropout_p=p, seed=1234, backend=backend)
    assert y.dtype == dtype and y.shape == (*x.shape[:-1], N)
    dy = torch.randn_like(y)
    y.backward(dy)

    keep = None
    if p > 0:
        keep = tk.keep_mask((x.reshape(-1, K).shape[0], K), 1234, p, x.device).reshape(x.shape)
        assert 0.5 * p < 1 - keep.float().mean().item() < 1.5 * p  # it really drops ~p
    x2, A2, B2 = (t.detach().float().clone().requires_grad_() for t in (x, A, B))
    bf = b.float() if b is not None else None
    y2 = lora_reference(x2, W.float(), A2, B2, 2.0, bf, p, keep=keep)
    y2.backward(dy.float())

    tol = TOL[dtype]
    for got, ref, name in (
        (y, y2, "y"),
        (x1.grad, x2.grad, "dx"),
        (A1.grad, A2.grad, "dA"),
        (B1.grad, B2.grad, "dB"),
    ):
        err = (got.float() - ref).abs().max().item()
        scale = max(1.0, ref.abs().max().item())
        assert err <= tol * scale, f"{name}: max error {err:.3g} (scale {scale:.3g})"
    assert A1.grad.dtype == torch.float32 and B1.grad.dtype == torch.float32


BACKENDS = ["fused", "cublas"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("M, K, N", [(37, 100, 75), (64, 128, 96)])
@pytest.mark.parametrize("r", [8, 16, 64])
def test_matches_reference(backend, dtype, M, K, N, r):
    _check(backend, M, K, N, r, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "kw",
    [
        {"bias": False},
        {"batch3d": True},
        {"noncontig": True},
        {"p": 0.1},
        {"p": 0.3, "batch3d": True, "bias": False},
    ],
    ids=["no-bias", "3d", "non-contiguous", "dropout", "dropout-3d-no-bias"],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_variants(backend, kw, dtype):
    _check(backend, 37, 100, 75, 16, dtype, **kw)


def test_dropout_mask_is_a_function_of_the_seed():
    a = tk.keep_mask((33, 70), 5, 0.25, DEVICE)
    assert torch.equal(a, tk.keep_mask((33, 70), 5, 0.25, DEVICE))
    assert not torch.equal(a, tk.keep_mask((33, 70), 6, 0.25, DEVICE))


def test_frozen_weight_and_bad_shapes_are_clear_errors():
    x, W, b, A, B = _case(8, 32, 16, 8, torch.float32)
    with pytest.raises(ValueError, match="must be frozen"):
        lora_linear(x, W.clone().requires_grad_(), A, B, 1.0)
    with pytest.raises(ValueError, match="shapes do not fit"):
        lora_linear(x, W, A[:, :-1], B, 1.0)
    with pytest.raises(ValueError, match="dropout_p"):
        lora_linear(x, W, A, B, 1.0, dropout_p=1.0)


def test_torch_compile_traces_the_custom_op():
    # aot_eager runs the fake implementations and the registered autograd, without a C++
    # compiler; the result must equal the eager op's.
    x, W, b, A, B = _case(16, 32, 24, 8, torch.float32)
    A1 = A.clone().requires_grad_()

    def f(x, A):
        return lora_linear(x, W, A, B, 0.5, bias=b, backend="fused").square().sum()

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    loss = compiled(x, A1)
    loss.backward()
    A2 = A.clone().requires_grad_()
    eager = f(x, A2)
    eager.backward()
    torch.testing.assert_close(loss, eager)
    torch.testing.assert_close(A1.grad, A2.grad)


@pytest.mark.parametrize("backend", ["fused", "cublas"])
def test_tiny_llama_trains_the_same_with_peft_and_with_ours(backend, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    def build(with_lora=True):
        torch.manual_seed(0)
        cfg = LlamaConfig(
            vocab_size=128,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
        lora = LoraConfig(
            r=8,
            lora_alpha=16,
            lora_dropout=0.0,
            task_type="CAUSAL_LM",
            target_modules=[
                "q_proj",
                "k_proj",
                "v_proj",
                "o_proj",
                "gate_proj",
                "up_proj",
                "down_proj",
            ],
        )
        if not with_lora:
            return LlamaForCausalLM(cfg)
        model = get_peft_model(LlamaForCausalLM(cfg), lora)
        for name, p in model.named_parameters():  # non-zero B: gradients reach A from step 0
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.05)
        return model

    stock, ours = build(), build()
    assert use_fused_lora(ours, backend=backend) == 14
    ids = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(1))
    opts = [
        torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2)
        for m in (stock, ours)
    ]
    for step in range(4):
        losses = []
        for model, opt in zip((stock, ours), opts, strict=True):
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(loss.item())
        assert losses[0] == pytest.approx(losses[1], abs=1e-5), (step, losses)
    # The adapter is still PEFT's: it saves and loads with stock PEFT and gives our logits.
    ours.save_pretrained(tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(build(with_lora=False), tmp_path / "adapter")
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, ours(ids).logits, atol=1e-5, rtol=1e-5)


# ---- the same checks compiled for real on a GPU (`pytest -m gpu`) ----


def _gpu_dtypes():
    out = [torch.float16]
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        out.append(torch.bfloat16)  # the interpreter has no bf16: checked only here
    return out


@pytest.mark.gpu
@pytest.mark.parametrize("backend", BACKENDS)  # cublas = cuBLAS + Triton
@pytest.mark.parametrize("dtype", _gpu_dtypes())
@pytest.mark.parametrize(
    "M, K, N, r", [(37, 100, 75, 8), (1024, 4096, 4096, 16), (513, 4096, 11008, 64)]
)
@pytest.mark.parametrize("p", [0.0, 0.1])
def test_matches_reference_on_gpu(backend, dtype, M, K, N, r, p):
    # K = 4096 sums 4096 products per entry: fp16/bf16 rounding of the inputs grows ~sqrt(K)
    # times the per-element error, still well inside the scaled tolerance.
    _check(backend, M, K, N, r, dtype, p=p, device="cuda")


@pytest.mark.gpu
def test_auto_backend_keeps_cublas():
    from nif_kernels import pick_backend

    assert pick_backend(torch.device("cuda")) == "cublas"  # fused only from measured rows


@pytest.mark.gpu
def test_inductor_compiles_the_op():
    x, W, b, A, B = _case(64, 128, 96, 8, torch.float16, device="cuda")
    A1 = A.clone().requires_grad_()

    def f(x, A):
        return lora_linear(x, W, A, B, 2.0, bias=b).float().square().mean()

    loss = torch.compile(f, fullgraph=True)(x, A1)
    loss.backward()
    A2 = A.clone().requires_grad_()
    f(x, A2).backward()
    torch.testing.assert_close(A1.grad, A2.grad, atol=1e-3, rtol=1e-2)
