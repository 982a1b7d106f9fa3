"""Exact attention for packed rows: every sample attends only to its own earlier tokens.

A packed row holds several samples back to back (`packing.collate_packed`). A dense T x T
block-diagonal mask would be exact but would still compute, then discard, attention across
samples — the padding saving would be lost on long rows. So:

- sm_80+ with flash-attn installed: transformers' `flash_attention_2`, which reads the
  `cu_seq_lens_q/k` + `max_length_q/k` batch keys and calls `flash_attn_varlen_func`;
- otherwise (V100, CPU): `nif_packed_sdpa`, registered here with transformers'
  `AttentionInterface`: one causal SDPA call per sample slice (the memory-efficient / math
  backends; on V100 flash-attn does not exist). Work is sum(L_i^2), not (sum L_i)^2.

Registering under a name transformers has no mask function for makes the model skip building a
4-D mask altogether (`masking_utils`: custom implementations get `attention_mask=None`). Batches
without `cu_seq_lens_q` (padded batches, generation) go to the stock SDPA function unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

PACKED_SDPA = "nif_packed_sdpa"


def packed_sdpa_attention(
    module: torch.nn.Module,
    query: torch.Tensor,  # (B, H, T, D)
    key: torch.Tensor,  # (B, H_kv, T, D)
    value: torch.Tensor,  # (B, H_kv, T, D)
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    cu = kwargs.get("cu_seq_lens_q")
    if cu is None or query.shape[0] != 1 or attention_mask is not None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    bounds = cu.tolist()  # one host sync per layer; the segments drive Python-level slicing
    gqa = query.shape[1] != key.shape[1]
    p = dropout if module.training else 0.0
    outs = [
        F.scaled_dot_product_attention(
            query[:, :, s:e],
            key[:, :, s:e],
            value[:, :, s:e],
            dropout_p=p,
            is_causal=True,
            scale=scaling,
            enable_gqa=gqa,
        )
        for s, e in zip(bounds[:-1], bounds[1:], strict=True)
        if e > s
    ]
    out = torch.cat(outs, dim=2)  # (1, H, T, D)
    return out.transpose(1, 2).contiguous(), None  # (1, T, H, D), as transformers expects


def _flash_varlen_usable() -> bool:
    if not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 8:
        return False
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return False
    return True


def register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(PACKED_SDPA, packed_sdpa_attention)


def use_packed_attention(model) -> str:
    """Switch `model` (a HF model or a PEFT wrapper) to exact packed attention; returns the
    backend name."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if _flash_varlen_usable():
        name = "flash_attention_2"
    else:
        register()
        name = PACKED_SDPA
    base.set_attn_implementation(name)
    return name
