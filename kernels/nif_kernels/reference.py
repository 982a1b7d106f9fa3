"""The plain-torch LoRA linear: what the kernels must equal, and the CPU training path.

    y = x W^T + bias + scaling * (dropout(x) A^T) B^T

PEFT's layouts: x (..., K), W (N, K), A (r, K), B (N, r), bias (N,). `keep` is an explicit
dropout keep-mask of x's shape (tests pass the kernels' own mask, so the two can be compared
element for element); with `keep=None` and `dropout_p > 0` torch's dropout draws one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def lora_reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    scaling: float,
    bias: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    keep: torch.Tensor | None = None,
    training: bool = True,
) -> torch.Tensor:
    base = F.linear(x, weight, bias)  # (..., N)
    if keep is not None:
        dropped = x * keep.to(x.dtype) / (1.0 - dropout_p)
    else:
        dropped = F.dropout(x, dropout_p, training) if dropout_p > 0 else x
    return base + scaling * F.linear(F.linear(dropped, lora_a), lora_b)  # (..., N)
