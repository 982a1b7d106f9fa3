"""Causal-LM cross-entropy over `lm_head` in token chunks: no full (T, V) fp32 logits.

The model's own loss (transformers `ForCausalLMLoss`) runs `lm_head` over every position, then
upcasts the (T, V) logits to fp32 for the cross-entropy. At the recipe's 8,192 tokens a
micro-batch and Llama-3's 128,256-token vocabulary, 2 bytes of bf16 logits + 4 of their fp32
upcast + 4 of its gradient make 8,192 x 128,256 x 10 bytes = 10.5 GB per GPU; ~6 GB of it (the
returned bf16 logits and the fp32 log-softmax autograd saves) stays alive until backward.

Here the (T, V) logits never exist:

- shift as HF does (`hidden[:, :-1]` predicts `labels[:, 1:]`), then keep only the positions
  whose target is not -100: the prompt is never projected onto the vocabulary, so on
  response-only data most of the work is gone too;
- walk the kept positions in chunks of `chunk_tokens(V)` (CHUNK_BYTES of fp32 logits, 256 MiB:
  523 tokens at V = 128,256). Per chunk: logits in lm_head's dtype, upcast to fp32 (HF's
  numerics), the CE sum, the argmax hits, and at once the gradient of the mean loss with respect
  to the chunk's hidden states, `(softmax - onehot) / n @ W`, written into a (tokens, H) fp32
  buffer;
- `torch.autograd.Function` saves only that buffer and the kept positions' index. Backward is a
  scatter: `grad_output * buffer` into zeros shaped like `hidden`.

Trade-off: the gradient is computed in forward, before anyone knows a backward will follow (so
under grad mode the loss costs two lm_head matmuls per token up front; without grad mode, as in
validation, it is skipped), and backward is only a scatter. The chunk loop makes more passes
over the logits than one fused cross-entropy: at 8,192 tokens, H = 4,096, V = 128,256, bf16 on
an H100, forward + backward take 47 ms against 40 ms for the full-logits loss when every token
counts, 24 against 39 ms when half are prompt. In exchange the loss adds `chunked_loss_bytes`:
0.55 GB there (0.13 GB buffer + one chunk's 0.40 GB of logits; 0.55 GB measured), against
HF's 10.5 GB forward peak (14.7 GB in backward) measured the same way.

`lm_head` must be frozen (LoRA never targets it): no gradient for the weight is computed, and a
weight that requires one is refused. Under DeepSpeed ZeRO-3 the weight is a partitioned
placeholder that `lm_head`'s own forward hooks would gather; we never call that forward, so the
weight is gathered here for the duration of the loss.

All-prompt batches: HF's mean over zero tokens is nan (0 / 0); ours is 0 with a grad_fn (zero
gradients), so one such micro-batch cannot turn a whole step's loss into nan.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

IGNORE = -100

# Bytes of fp32 logits one chunk may hold. A 16-bit lm_head adds a 16-bit copy on the way in
# (the matmul's output) and out (the gradient's matmul input): half as much again at the peak.
CHUNK_BYTES = 256 * 2**20


def chunk_tokens(vocab: int) -> int:
    """Tokens per chunk so one chunk's fp32 logits take at most CHUNK_BYTES."""
    return max(1, CHUNK_BYTES // (4 * vocab))


def chunked_loss_bytes(tokens: int, hidden: int, vocab: int) -> int:
    """Peak bytes the loss adds for `tokens` loss tokens: the fp32 gradient of the hidden states
    kept for backward, plus, while one chunk is computed, its fp32 logits and their 16-bit copy
    (an fp32 lm_head needs no copy: 4 instead of 6 bytes a logit; this is the bound) and its
    rows of hidden states and their gradient (8 bytes a value at most)."""
    c = min(tokens, chunk_tokens(vocab))
    return 4 * tokens * hidden + (4 + 2) * c * vocab + 8 * c * hidden


def chunked_lm_loss(
    hidden: torch.Tensor,  # (B, T, H)
    weight: torch.Tensor,  # (V, H), lm_head
    labels: torch.Tensor,  # (B, T), -100 = ignored
    *,
    bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean loss over counted tokens, counted tokens, correct argmax predictions), with HF's
    shift: position t predicts labels[t + 1]. The loss is fp32 and 0 when nothing is counted;
    the counts are int64 tensors (no host sync needed to log them)."""
    for name, param in (("weight", weight), ("bias", bias)):
        if param is not None and param.requires_grad:
            raise ValueError(
                f"lm_head must be frozen for the chunked loss, but its {name} requires grad: "
                "it computes no gradient for lm_head (set requires_grad=False, or use the "
                "model's own loss)"
            )
    if hidden.dim() != 3 or labels.shape != hidden.shape[:2]:
        raise ValueError(
            f"expected hidden (B, T, H) and labels (B, T), got {tuple(hidden.shape)} and "
            f"{tuple(labels.shape)}"
        )
    with_grad = torch.is_grad_enabled() and hidden.requires_grad
    return _ChunkedLMLoss.apply(hidden, weight, bias, labels, with_grad)


class _ChunkedLMLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, with_grad):
        B, T, H = hidden.shape
        # The target of position t is labels[t + 1]; the last position predicts nothing.
        targets = F.pad(labels[:, 1:], (0, 1), value=IGNORE).reshape(B * T)  # (B*T,)
        index = (targets != IGNORE).nonzero().squeeze(1)  # (n,), CPU-GPU sync point
        n = index.numel()
        targets = targets[index]  # (n,)
        hidden_flat = hidden.reshape(B * T, H)
        # d(mean loss) / d(hidden[index]), the one (n, H) tensor kept for backward
        grad = hidden.new_empty((n if with_grad else 0, H), dtype=torch.float32)
        loss_sum = hidden.new_zeros((), dtype=torch.float32)
        correct = torch.zeros((), dtype=torch.long, device=hidden.device)
        # Entered even when n == 0: under ZeRO-3 the gather is a collective every rank joins.
        with _gathered(weight, bias):
            c = chunk_tokens(weight.shape[0])
            for start in range(0, n, c):
                rows = slice(start, start + c)
                h = hidden_flat.index_select(0, index[rows])  # (c, H)
                y = targets[rows]  # (c,)
                ce, hits, dh = _chunk(h, weight, bias, y, n, with_grad)
                loss_sum += ce
                correct += hits
                if with_grad:
                    grad[rows] = dh
        ctx.save_for_backward(grad, index)
        ctx.hidden_shape, ctx.hidden_dtype, ctx.chunk = hidden.shape, hidden.dtype, c
        n_tokens = torch.tensor(n, device=hidden.device)
        ctx.mark_non_differentiable(n_tokens, correct)
        return loss_sum / max(n, 1), n_tokens, correct

    @staticmethod
    def backward(ctx, grad_loss, _grad_n_tokens, _grad_correct):
        grad, index = ctx.saved_tensors
        B, T, H = ctx.hidden_shape
        grad_hidden = torch.zeros((B * T, H), dtype=ctx.hidden_dtype, device=grad.device)
        # Scale in fp32, round once, in chunks: no second (n, H) fp32 tensor.
        for start in range(0, index.numel(), ctx.chunk):
            rows = slice(start, start + ctx.chunk)
            grad_hidden.index_copy_(0, index[rows], (grad[rows] * grad_loss).to(ctx.hidden_dtype))
        return grad_hidden.view(B, T, H), None, None, None, None


def _chunk(h, weight, bias, y, n, with_grad):
    """(CE sum, argmax hits, d(mean loss)/dh as (c, H) or None) for one chunk of kept
    positions (h (c, H), targets y (c,)) out of n."""
    # lm_head in its own dtype, then the upcast: HF's numerics (and no fp32 copy of the weight,
    # which would be 2.1 GB at V = 128,256, H = 4,096).
    logits = F.linear(h, weight, bias)  # (c, V)
    compute_dtype = logits.dtype  # lm_head's, or autocast's
    logits = logits.float()  # (c, V) fp32; rebinding frees the 16-bit logits
    hits = (logits.argmax(-1) == y).sum()
    target = logits.gather(1, y[:, None]).squeeze(1)  # (c,)
    # Softmax in place (torch.logsumexp would allocate (c, V) temporaries).
    top = logits.amax(-1)  # (c,)
    probs = logits.sub_(top[:, None]).exp_()  # (c, V), unnormalised
    total = probs.sum(-1)  # (c,)
    ce = (top + total.log() - target).sum()
    if not with_grad:
        return ce, hits, None
    # d(sum CE / n)/d logits = (softmax - onehot) / n. The 1/n is applied after the 16-bit
    # matmul, in fp32: before it, an fp16 gradient of ~1e-6 would round into the subnormals
    # (HF's autograd multiplies by the loss scale first; ours is applied in backward).
    probs.div_(total[:, None])  # softmax, in place over the logits
    probs[torch.arange(y.numel(), device=y.device), y] -= 1.0
    dh = (probs.to(compute_dtype) @ weight).float().div_(n)  # (c, H) fp32
    return ce, hits, dh


def _gathered(weight, bias):
    """Under ZeRO-3 the frozen lm_head is a partitioned placeholder (it has `ds_id`): gather the
    full tensors on every rank for the duration of the loss, read-only. A parameter that is
    already whole (a small one ZeRO-3 persists, or an lm_head tied to the input embedding that
    was gathered for the forward) is left alone: re-partitioning it on exit would free it under
    the module that holds it."""
    if not hasattr(weight, "ds_id"):
        return contextlib.nullcontext()
    import deepspeed
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

    params = [p for p in (weight, bias) if p is not None]
    params = [p for p in params if p.ds_status == ZeroParamStatus.NOT_AVAILABLE]
    return deepspeed.zero.GatheredParameters(params, modifier_rank=None)
