"""Load a Hugging Face causal LM whole, or partitioned under DeepSpeed ZeRO-3 slice by slice.

Whole (every other case): `from_pretrained`, safetensors, weights only.

Partitioned: when `deepspeed.zero.Init` is active (Lightning enters it around
`LightningModule.configure_model` under ZeRO-3), the model is built from its config inside it, so
each parameter is split across the ranks the moment its module is created, with no random init
(the weights are read next). Then every rank reads from the safetensors files only the flat range
of each tensor that its partition holds: a file is memory-mapped (shared, file-backed pages), and
`get_slice` copies just the rows covering that range. A rank's anonymous memory grows by about
its 1/world share of the weights, not by the whole model as with `from_pretrained` on each rank
(70B in fp16: 17.6 GB per rank on 8 ranks instead of 140 GB).
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import torch


def zero3_init_active() -> bool:
    """True inside `deepspeed.zero.Init` (parameters are partitioned as they are created)."""
    zero = sys.modules.get("deepspeed.runtime.zero.partition_parameters")
    return zero is not None and zero.zero_init_context > 0


def outside_zero3_init():
    """Suspend `deepspeed.zero.Init`'s partition-on-create for a block (no-op outside it), as
    `deepspeed.initialize` does for itself: modules made in the block keep whole parameters."""
    if not zero3_init_active():
        return contextlib.nullcontext()
    from deepspeed.runtime.zero import partition_parameters as zero

    @contextlib.contextmanager
    def _suspended():
        zero.shutdown_init_context()
        try:
            yield
        finally:
            zero.restore_init_context()

    return _suspended()


def load_causal_lm(name_or_path: str, dtype: torch.dtype) -> torch.nn.Module:
    """The model of `name_or_path` (local folder or Hub id) in `dtype`, partitioned when built
    inside `deepspeed.zero.Init`."""
    from transformers import AutoModelForCausalLM

    if not zero3_init_active():
        return AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype)
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(name_or_path)
    with _no_weight_init():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    load_partitioned(model, checkpoint_files(name_or_path))
    return model


def checkpoint_files(name_or_path: str) -> list[Path]:
    """The safetensors files of a local folder or a Hub model (downloaded to the cache)."""
    folder = Path(name_or_path)
    if not folder.is_dir():
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(name_or_path, allow_patterns=["*.safetensors", "*.json"]))
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [folder / n for n in names]
    single = folder / "model.safetensors"
    if single.is_file():
        return [single]
    raise FileNotFoundError(
        f"{name_or_path} has no safetensors weights (model.safetensors or an index); "
        "ZeRO-3 loading reads safetensors only"
    )


@torch.no_grad()
def load_partitioned(model: torch.nn.Module, files: list[Path]) -> None:
    """Copy into each ZeRO-3 partition its flat range of the checkpoint tensor of that name."""
    import deepspeed.comm as dist
    from safetensors import safe_open

    params = dict(model.named_parameters())
    missing = set(params)
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open is not iterable
                param = params.get(name)
                if param is None:
                    continue  # e.g. rotary buffers saved by old checkpoints
                shape = tuple(getattr(param, "ds_shape", param.shape))
                if tuple(f.get_slice(name).get_shape()) != shape:
                    raise ValueError(
                        f"{path.name}: {name} has shape {f.get_slice(name).get_shape()}, "
                        f"the model expects {list(shape)}"
                    )
                part = param.ds_tensor  # (partition,) flat, the last one padded
                start = part.ds_numel * dist.get_rank(group=param.ds_process_group)
                end = min(start + part.ds_numel, param.ds_numel)
                if start < end:
                    part[: end - start].copy_(_flat_range(f.get_slice(name), shape, start, end))
                missing.discard(name)
    if missing:  # a tied lm_head is no separate parameter, so it is never missing
        raise ValueError(f"checkpoint lacks weights for {sorted(missing)[:5]}")


def _flat_range(tensor_slice, shape: tuple[int, ...], start: int, end: int) -> torch.Tensor:
    """Elements [start, end) of the row-major flattened tensor, reading only the rows (along
    the first dimension) that hold them."""
    if len(shape) <= 1:
        return tensor_slice[start:end]
    row = 1
    for dim in shape[1:]:
        row *= dim
    first, last = start // row, -(-end // row)
    rows = tensor_slice[first:last].reshape(-1)
    return rows[start - first * row : end - first * row]


def _no_weight_init():
    """Skip random init while building (the checkpoint overwrites every weight)."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # transformers 4.x
        try:
            from transformers.modeling_utils import no_init_weights
        except ImportError:
            return contextlib.nullcontext()
    return no_init_weights()
