"""Bytes a step keeps for backward, and every tensor's bytes over a block: the two measurements
the memory plan (`memory.py`) is built from and checked against.

- `saved_tensor_bytes`: what autograd saves (`torch.autograd.graph.saved_tensors_hooks`), each
  storage once, parameters excluded, with non-reentrant checkpointing accounted for.
- `live_tensor_bytes`: every storage an op creates until it is freed (a dispatch mode): the
  CPU's and the `meta` device's `max_memory_allocated`, transients included.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any


@dataclass
class SavedBytes:
    """Bytes kept for backward by one forward, each storage counted once, parameters excluded."""

    outside: int = 0
    """Saved outside the decoder layers (embeddings, final norm, the loss)."""
    layers: list[int] = field(default_factory=list)
    """Per decoder layer: what it saved, or with checkpointing the inputs the checkpoint keeps."""
    recompute: int = 0
    """With checkpointing: what one layer saves again while backward recomputes it."""

    @property
    def total(self) -> int:
        return self.outside + sum(self.layers) + self.recompute


def decoder_layers(model) -> list:
    """The repeated decoder blocks of a HF model (or its PEFT wrapper), in order."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]


@contextlib.contextmanager
def saved_tensor_bytes(model) -> Iterator[SavedBytes]:
    """Measure the bytes the forward inside the block keeps for backward (run backward after
    the block). Counts each storage once (views share it) and never a parameter's.

    Non-reentrant checkpointing hides a checkpointed layer from an outer `saved_tensors_hooks`:
    it saves nothing there and keeps the layer's inputs by closure instead. So a forward
    pre-hook on each decoder layer counts those inputs (`layers[i]`), and on leaving the block
    the last checkpointed layer is replayed once without checkpointing on the same inputs,
    which is what backward's recompute runs (`recompute`). Written against transformers 5.24,
    whose layers checkpoint `forward`, so these hooks stay outside the checkpoint (5.17 ran them
    inside it and counted fewer inputs: the planner itself uses `live_tensor_bytes`).
    """
    import torch

    result = SavedBytes(layers=[0] * len(decoder_layers(model)))
    params = {p.untyped_storage()._cdata for p in model.parameters()}
    seen: dict[int, Any] = {}  # storage key -> storage, kept alive so keys stay unique
    where: list[Any] = [None]  # layer index, "recompute", or None (outside)
    last_checkpointed: list[Any] = []

    def add(t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        key = storage._cdata
        if key in params or key in seen:
            return
        seen[key] = storage
        nbytes = storage.nbytes()
        if where[0] is None:
            result.outside += nbytes
        elif where[0] == "recompute":
            result.recompute += nbytes
        else:
            result.layers[where[0]] += nbytes

    def pack(t: torch.Tensor) -> torch.Tensor:
        add(t)
        return t

    def enter(i: int):
        def hook(layer, args, kwargs):
            where[0] = i
            if getattr(layer, "gradient_checkpointing", False) and layer.training:
                for value in (*args, *kwargs.values()):
                    for t in value if isinstance(value, (tuple, list)) else (value,):
                        if isinstance(t, torch.Tensor):
                            add(t)
                last_checkpointed[:] = [layer, args, kwargs]

        return hook

    def leave(layer, args, kwargs, output):
        where[0] = None

    handles = []
    for i, layer in enumerate(decoder_layers(model)):
        handles.append(layer.register_forward_pre_hook(enter(i), with_kwargs=True))
        handles.append(layer.register_forward_hook(leave, with_kwargs=True))
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            yield result
        for h in handles:
            h.remove()
        handles.clear()
        if last_checkpointed and torch.is_grad_enabled():
            layer, args, kwargs = last_checkpointed
            layer.gradient_checkpointing = False
            where[0] = "recompute"
            try:
                with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                    layer(*args, **kwargs)
            finally:
                layer.gradient_checkpointing = True
    finally:
        for h in handles:
            h.remove()
        seen.clear()


@dataclass
class LiveBytes:
    """Bytes of the tensors created inside a block: alive now, the high-water mark, and what
    was still alive when the block ended."""

    now: int = 0
    peak: int = 0
    end: int = 0

    @property
    def transient(self) -> int:
        """How far above what stays alive the block went (the loss's chunks, say)."""
        return self.peak - self.end


@contextlib.contextmanager
def live_tensor_bytes() -> Iterator[LiveBytes]:
    """Track every storage an op creates inside the block until it is freed: the CPU's
    `max_memory_allocated` (without allocator rounding; on CUDA it agrees with it to 0.1 MB), so
    transients that saved-tensor hooks cannot see are measured too. In-place results and views
    add nothing. For forward code: around a backward that recomputes checkpointed custom ops
    (the fused LoRA op) torch 2.11 fails inside autograd."""
    import weakref

    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    result = LiveBytes()
    alive: dict[int, int] = {}  # storage key -> bytes; a storage's finalizer removes it

    def free(key: int) -> None:
        result.now -= alive.pop(key, 0)

    class _Track(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
            inputs = {t.untyped_storage()._cdata for t in tensors}
            for t in tree_leaves(out):
                if not isinstance(t, torch.Tensor):
                    continue
                storage = t.untyped_storage()
                key = storage._cdata
                if key in alive or key in inputs:
                    continue
                alive[key] = storage.nbytes()
                result.now += alive[key]
                result.peak = max(result.peak, result.now)
                weakref.finalize(storage, free, key)  # storages keep their Python object
            return out

    try:
        with _Track():
            yield result
    finally:
        result.end = result.now
