"""The chunked lm_head cross-entropy against the model's own loss: same loss, same LoRA gradients
(fp32 padded and packed batches, several chunks and a ragged last one), fp16 within fp16's own
error, 0 on all-prompt batches, only the (tokens, H) gradient saved for backward, the ZeRO-3
gather, and a trainable lm_head refused."""

from __future__ import annotations

import enum
import sys
import types

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from transformers.loss.loss_utils import ForCausalLMLoss

from nif_lightning import loss as chunked
from nif_lightning.config import LORA_TARGETS
from nif_lightning.loss import chunk_tokens, chunked_lm_loss, chunked_loss_bytes
from nif_lightning.packing import collate_packed, collate_padded, tokenize_vanilla

CHUNK = 7  # tokens a chunk in the model tests: 36 loss tokens = 5 full chunks + 1 ragged


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of CHUNK tokens at the tiny model's vocabulary (512)."""
    monkeypatch.setattr(chunked, "CHUNK_BYTES", 4 * 512 * CHUNK)
    assert chunk_tokens(512) == CHUNK


def _lora_model(path, dtype=torch.float32):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from nif_lightning.attention import use_packed_attention

    base = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=list(LORA_TARGETS))
    model = get_peft_model(base, config)
    # Seeded (so fp32 and fp16 models match), and lora_B non-zero: PEFT starts it at zero,
    # which would leave every lora_A gradient zero.
    g = torch.Generator().manual_seed(0)
    for name, param in model.named_parameters():
        if "lora_" in name:
            scale = 0.1 if "lora_B" in name else param.shape[1] ** -0.5
            param.data = scale * torch.randn(param.shape, generator=g).to(param.dtype)
    use_packed_attention(model)  # as NifLoraModule does
    return model


def _inputs(layout: str, config) -> dict:
    """4 vanilla samples: prompts of 5, 11, 3, 8 tokens; 9 + 4 + 13 + 6 response tokens plus one
    EOS each, so 36 loss tokens."""
    g = torch.Generator().manual_seed(1)
    samples = [
        tokenize_vanilla(
            torch.randint(2, 500, (p,), generator=g).tolist(),
            torch.randint(2, 500, (r,), generator=g).tolist(),
            config.eos_token_id,
            cutoff_len=64,
        )
        for p, r in [(5, 9), (11, 4), (3, 13), (8, 6)]
    ]
    if layout == "packed":
        return collate_packed(samples)["inputs"]
    return collate_padded(samples, config.pad_token_id)["inputs"]


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def _hf_loss(model, inputs):
    """The model's own loss (HF's ForCausalLMLoss) and the LoRA gradients it gives."""
    model.zero_grad(set_to_none=True)
    out = model(**inputs)
    out.loss.backward()
    return out.loss.detach(), out.logits.detach(), _grads(model)


def _chunked_loss(model, inputs):
    """The decoder's last hidden state through chunked_lm_loss, and the LoRA gradients."""
    model.zero_grad(set_to_none=True)
    base = model.get_base_model()
    kwargs = {k: v for k, v in inputs.items() if k != "labels"}
    hidden = base.model(**kwargs).last_hidden_state  # (B, T, H)
    loss, n, correct = chunked_lm_loss(hidden, base.lm_head.weight, inputs["labels"])
    loss.backward()
    return loss.detach(), n, correct, _grads(model)


@pytest.mark.parametrize("layout", ["padded", "packed"])
def test_matches_the_models_own_loss_and_lora_gradients(tiny, small_chunks, layout):
    model = _lora_model(tiny)
    inputs = _inputs(layout, model.config)
    ref_loss, logits, ref_grads = _hf_loss(model, inputs)
    loss, n, correct, grads = _chunked_loss(model, inputs)

    targets = inputs["labels"][:, 1:]
    mask = targets != -100
    assert int(n) == int(mask.sum()) == 36
    assert int(n) > 2 * CHUNK and int(n) % CHUNK  # several chunks, the last one ragged
    assert int(correct) == int((logits[:, :-1].argmax(-1)[mask] == targets[mask]).sum())
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=0)
    assert len(grads) == 4 * len(LORA_TARGETS)  # lora_A and lora_B on 7 modules x 2 layers
    assert all(g.abs().sum() > 0 for g in ref_grads.values())
    # The same fp32 math, summed in another order (per chunk): a few ulps, amplified through
    # two layers; measured <= 1.3e-6 of each tensor's largest entry. 1e-5 of it leaves margin and
    # is far below what a wrong shift, mean or counted prompt token would give (~1e-1).
    for name, ref in ref_grads.items():
        scale = ref.abs().max().item()
        torch.testing.assert_close(grads[name], ref, rtol=1e-5, atol=1e-5 * scale, msg=name)


def test_fp16_backbone_within_fp16s_own_error(tiny, small_chunks):
    # The fp16 model's loss differs from the fp32 model's by fp16 rounding all the way through
    # the decoder; both losses see the same fp16 hidden states and round lm_head's logits
    # alike, so ours may not stray from fp32 further than HF's fp16 loss does, up to 2x (the
    # repo's rule for reduced precision), for the loss and for every LoRA gradient.
    inputs = _inputs("packed", _lora_model(tiny).config)
    ref_loss, _, ref_grads = _hf_loss(_lora_model(tiny), inputs)
    model = _lora_model(tiny, torch.float16)
    hf_loss, _, hf_grads = _hf_loss(model, inputs)
    loss, _, _, grads = _chunked_loss(model, inputs)

    hf_err = (hf_loss - ref_loss).abs()
    assert 0 < hf_err < 0.05 * ref_loss  # fp16 really is in play, and sane
    assert (loss - ref_loss).abs() <= 2 * hf_err
    for name, ref in ref_grads.items():
        hf_err = (hf_grads[name].float() - ref).abs().max()
        assert (grads[name].float() - ref).abs().max() <= 2 * hf_err, name


def test_fp16_gradient_under_the_loss_scale_keeps_its_precision():
    """DeepSpeed fp16 multiplies the loss by its scale (2^16) before backward. Per token the
    mean loss's gradient is ~|W| / n: ~1e-5 here, in fp16's subnormals, so it must not be
    rounded to fp16 before the scale is applied (it once was: 2% error, 1% of it zeros)."""
    g = torch.Generator().manual_seed(7)
    n, H, V = 2048, 128, 4096
    hidden32 = torch.randn(1, n + 1, H, generator=g)
    weight32 = torch.randn(V, H, generator=g) * 0.02
    labels = torch.randint(0, V, (1, n + 1), generator=g)

    def grad_of(fn, dtype, scale):
        h = hidden32.to(dtype).detach().requires_grad_()
        (scale * fn(h, weight32.to(dtype))).backward()
        return h.grad.float() / scale

    def hf(h, w):  # the model's own loss: fp16 logits, fp32 upcast, scaled backward
        return ForCausalLMLoss(h @ w.T, labels, V)

    def ours(h, w):
        return chunked_lm_loss(h, w, labels)[0]

    ref = grad_of(hf, torch.float32, 1.0)
    hf_err = (grad_of(hf, torch.float16, 2.0**16) - ref).norm() / ref.norm()
    our_err = (grad_of(ours, torch.float16, 2.0**16) - ref).norm() / ref.norm()
    assert our_err <= 2 * hf_err, (our_err, hf_err)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matches_hf_loss_function_with_bias_and_scaled_backward(small_chunks, dtype):
    # Odd shapes, a bias (Llama's lm_head has none), batch > 1, and a backward scaled by 3 as
    # gradient accumulation and loss scaling do.
    g = torch.Generator().manual_seed(2)
    B, T, H, V = 3, 37, 24, 512
    hidden32 = torch.randn(B, T, H, generator=g)
    weight32, bias32 = torch.randn(V, H, generator=g) / H**0.5, torch.randn(V, generator=g)
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[torch.rand(B, T, generator=g) < 0.3] = -100

    def run(fn, dtype):
        hidden = hidden32.to(dtype, copy=True).requires_grad_()
        loss = fn(hidden, weight32.to(dtype), bias32.to(dtype))
        (3 * loss).backward()
        return loss.detach(), hidden.grad.float()

    reference = lambda h, w, b: ForCausalLMLoss(F.linear(h, w, b), labels, V)
    ours = lambda h, w, b: chunked_lm_loss(h, w, labels, bias=b)[0]
    loss, grad = run(ours, dtype)
    if dtype == torch.float32:  # summation order only, as in the model test
        ref_loss, ref_grad = run(reference, dtype)
        torch.testing.assert_close(loss, ref_loss, rtol=0, atol=1e-5)
        torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-5 * ref_grad.abs().max())
    else:  # within 2x bf16's own error against fp32, like the fp16 model test
        ref_loss, ref_grad = run(reference, torch.float32)
        hf_loss, hf_grad = run(reference, dtype)
        assert (loss - ref_loss).abs() <= 2 * (hf_loss - ref_loss).abs()
        assert (grad - ref_grad).abs().max() <= 2 * (hf_grad - ref_grad).abs().max()


def test_counts_tokens_and_argmax_hits(small_chunks):
    # A random model almost never predicts a random token; here about half the targets are the
    # model's own argmax, so a wrong count (argmin, a chunk left out, the unshifted position)
    # shows up.
    g = torch.Generator().manual_seed(5)
    B, T, H, V = 2, 30, 16, 512
    hidden, weight = torch.randn(B, T, H, generator=g), torch.randn(V, H, generator=g)
    argmax = (hidden @ weight.T).argmax(-1)  # (B, T)
    labels = torch.randint(0, V, (B, T), generator=g)
    hit = torch.rand(B, T - 1, generator=g) < 0.5
    labels[:, 1:] = torch.where(hit, argmax[:, :-1], labels[:, 1:])
    labels[torch.rand(B, T, generator=g) < 0.2] = -100
    counted = labels[:, 1:] != -100
    expected = int((hit & counted).sum())
    assert 0 < expected < int(counted.sum())

    _, n, correct = chunked_lm_loss(hidden, weight, labels)
    assert n.dtype == correct.dtype == torch.int64
    assert int(n) == int(counted.sum()) and int(correct) == expected


def test_all_prompt_batch_gives_zero_with_zero_gradients(tiny):
    model = _lora_model(tiny)
    inputs = _inputs("packed", model.config)
    inputs["labels"] = torch.full_like(inputs["labels"], -100)
    # HF's mean over no tokens is 0 / 0; ours is 0 by choice (see the module docstring).
    assert torch.isnan(model(**inputs).loss)
    loss, n, correct, grads = _chunked_loss(model, inputs)
    assert loss.item() == 0.0 and int(n) == 0 and int(correct) == 0
    assert all(torch.count_nonzero(g) == 0 for g in grads.values())


def test_saves_only_the_hidden_gradient_and_never_builds_full_logits():
    g = torch.Generator().manual_seed(3)
    T, H, V = 4096, 64, 32000
    hidden = torch.randn(1, T, H, generator=g, requires_grad=True)
    weight = torch.randn(V, H, generator=g) / H**0.5
    labels = torch.randint(0, V, (1, T), generator=g)
    labels[:, : T // 3] = -100  # a prompt
    n = int((labels[:, 1:] != -100).sum())
    assert n > chunk_tokens(V)  # more than one chunk

    full = _saved_bytes(lambda: ForCausalLMLoss(hidden @ weight.T, labels, V))
    assert full >= T * V * 4  # the fp32 log-softmax
    with _LargestTensor() as largest:
        ours = _saved_bytes(lambda: chunked_lm_loss(hidden, weight, labels)[0])
    assert ours == n * H * 4 + n * 8  # the fp32 gradient and the int64 index of kept rows
    assert largest.nbytes == chunk_tokens(V) * V * 4  # one chunk's fp32 logits, at most

    # The figures: Llama-3 vocabulary, 8,192 tokens a micro-batch, H = 4,096.
    assert chunked_loss_bytes(8192, 4096, 128256) < 1e9
    assert 8192 * 128256 * (2 + 4 + 4) > 6e9  # bf16 logits + fp32 upcast + its gradient
    assert chunk_tokens(128256) * 128256 * 4 <= chunked.CHUNK_BYTES
    assert chunk_tokens(10**12) == 1  # a vocabulary past CHUNK_BYTES still makes progress


def test_zero3_gathers_the_partitioned_lm_head(monkeypatch):
    g = torch.Generator().manual_seed(4)
    hidden = torch.randn(2, 9, 16, generator=g, requires_grad=True)
    full = torch.randn(40, 16, generator=g)
    labels = torch.randint(0, 40, (2, 9), generator=g)
    expected = ForCausalLMLoss(hidden @ full.T, labels, 40)

    status = enum.Enum("ZeroParamStatus", "AVAILABLE NOT_AVAILABLE INFLIGHT")
    weight = torch.nn.Parameter(torch.empty(0), requires_grad=False)  # ZeRO-3's placeholder
    weight.ds_id, weight.ds_status = 0, status.NOT_AVAILABLE
    calls = []

    class _Gathered:
        def __init__(self, params, modifier_rank=None):
            calls.append(modifier_rank)
            self.params = params

        def __enter__(self):
            for p in self.params:
                p.data = full

        def __exit__(self, *exc):
            for p in self.params:
                p.data = torch.empty(0)

    fake = types.SimpleNamespace(zero=types.SimpleNamespace(GatheredParameters=_Gathered))
    monkeypatch.setitem(sys.modules, "deepspeed", fake)
    zero = types.SimpleNamespace(ZeroParamStatus=status)
    monkeypatch.setitem(sys.modules, "deepspeed.runtime.zero.partition_parameters", zero)
    loss, _, _ = chunked_lm_loss(hidden, weight, labels)
    torch.testing.assert_close(loss, expected, atol=1e-6, rtol=1e-6)
    assert calls == [None] and weight.numel() == 0  # read-only gather, released after
    loss.backward()  # backward needs no weight: no second gather
    assert calls == [None]
    # A rank with no loss tokens still joins the collective gather.
    chunked_lm_loss(hidden, weight, torch.full_like(labels, -100))
    assert calls == [None, None]
    # Already whole (persisted, or tied to the embedding and gathered for the forward): used as
    # it is, never re-partitioned under the module holding it.
    weight.data, weight.ds_status = full, status.AVAILABLE
    loss, _, _ = chunked_lm_loss(hidden, weight, labels)
    torch.testing.assert_close(loss, expected, atol=1e-6, rtol=1e-6)
    assert weight.numel() == full.numel()


def test_trainable_lm_head_is_refused():
    hidden = torch.randn(1, 4, 8, requires_grad=True)
    weight = torch.randn(16, 8, requires_grad=True)
    with pytest.raises(ValueError, match="lm_head must be frozen for the chunked loss"):
        chunked_lm_loss(hidden, weight, torch.zeros(1, 4, dtype=torch.long))


def _saved_bytes(fn) -> int:
    """Bytes autograd saves for backward while `fn` builds its graph (kept alive until return)."""
    sizes: list[int] = []

    def pack(t):
        sizes.append(t.nbytes)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return sum(sizes)


class _LargestTensor(TorchDispatchMode):
    """The largest tensor any op returns while the mode is on."""

    nbytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.nbytes = max(self.nbytes, t.nbytes)
        return out
