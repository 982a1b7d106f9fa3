"""nif_kernels: fused LoRA linear in Triton, with a plain-torch reference.

The checkout's top-level folder `kernels/` holds this package (`kernels/nif_kernels/`) and has
no `__init__.py` of its own: the import name `kernels` is Hugging Face's (transformers imports it on
every model import), and a top-level package `kernels` in the checkout would shadow it wherever
the checkout root is on `sys.path` (`python -m pytest`, `python -c`). This package imports
nothing of ours; its imports inside are relative.

lora_linear(x, weight, lora_a, lora_b, scaling, bias=None, dropout_p=0.0)
use_fused_lora(peft_model) -> number of layers switched
lora_reference(...)        -> the plain-torch definition the kernels are tested against

The names load lazily (PEP 562): importing the package registers no custom op and imports no
torch until a name is used.
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
