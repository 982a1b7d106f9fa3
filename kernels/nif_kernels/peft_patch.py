"""Make PEFT's LoRA `Linear` layers compute through `lora_linear`, keeping PEFT's parameters.

Only the forward of each eligible layer instance is replaced; its `lora_A` / `lora_B` modules,
names and state dict are PEFT's own, so adapters save and load in stock PEFT format and
`merge_and_unload` works as before. A layer falls back to PEFT's own forward on every call that
our path does not cover: adapters disabled or merged, several active adapters, mixed-batch
`adapter_names`, a LoRA variant (DoRA and friends), or a `lora_B` bias (`lora_bias=True`, logged
once as a WARNING).
"""

from __future__ import annotations

import logging
import types
from functools import partial

import torch

from .lora import lora_linear

log = logging.getLogger(__name__)
_warned: set[str] = set()  # fallback reasons already logged


def _warn_once(reason: str) -> None:
    if reason not in _warned:
        _warned.add(reason)
        log.warning("use_fused_lora: %s; those layers run PEFT's own forward", reason)


def _fused_forward(self, x: torch.Tensor, *args, backend: str = "auto", **kwargs) -> torch.Tensor:
    active = [a for a in self.active_adapters if a in self.lora_A]
    simple = (
        not self.disable_adapters
        and not self.merged
        and len(active) == 1
        and not args
        and not kwargs
        and active[0] not in getattr(self, "lora_variant", {})
    )
    if not simple:
        return type(self).forward(self, x, *args, **kwargs)  # PEFT's own path
    name = active[0]
    if self.lora_B[name].bias is not None:  # PEFT adds scaling * bias_B: not in our kernels
        _warn_once("lora_bias=True (a lora_B bias) is not fused")
        return type(self).forward(self, x)
    dropout = self.lora_dropout[name]
    p = float(getattr(dropout, "p", 0.0)) if self.training else 0.0
    base = self.base_layer
    return lora_linear(
        x,
        base.weight,
        self.lora_A[name].weight,
        self.lora_B[name].weight,
        self.scaling[name],
        bias=base.bias,
        dropout_p=p,
        backend=backend,
    )


def use_fused_lora(model: torch.nn.Module, backend: str = "auto") -> int:
    """Switch every eligible PEFT LoRA `Linear` in `model` to `lora_linear`; returns the count.
    `backend` forces a path (tests run the Triton paths on the CPU under the interpreter)."""
    from peft.tuners.lora.layer import Linear as LoraLinear

    count = 0
    for module in model.modules():
        if type(module) is LoraLinear and isinstance(module.base_layer, torch.nn.Linear):
            if getattr(module, "fan_in_fan_out", False):
                continue  # transposed (Conv1D-style) weights: leave to PEFT
            module.forward = types.MethodType(partial(_fused_forward, backend=backend), module)
            count += 1
    if count == 0:
        raise ValueError("no PEFT LoRA Linear layers found: call get_peft_model(...) first")
    return count
