"""kernels: fused LoRA linear in Triton, with a plain-torch reference.

Installed as `nif_lightning.kernels` (a link to this folder), never as a top-level `kernels`:
that import name belongs to Hugging Face's `kernels`, which transformers probes on every model
import. Imports inside the package are relative for the same reason.

lora_linear(x, weight, lora_a, lora_b, scaling, bias=None, dropout_p=0.0)
use_fused_lora(peft_model) -> number of layers switched
lora_reference(...)        -> the plain-torch definition the kernels are tested against

The names load lazily (PEP 562): importing the package registers no custom op and imports no
torch, so a probe that imports it by name (transformers' last resort) has no side effects.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "lora_linear": ".lora",
    "pick_backend": ".lora",
    "use_fused_lora": ".peft_patch",
    "lora_reference": ".reference",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module, __name__), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
