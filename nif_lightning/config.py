"""The whole `nif train` config: typed sections, YAML loading that rejects unknown keys, overrides.

A YAML file has the sections `model`, `lora`, `data`, `optim`, `trainer` and the top-level keys
`out` and `seed`. Every key maps to a dataclass field with a docstring; a misspelt key is an
error naming it (a silently ignored `lora.rank` would train with the default rank). The `data`
section is handed to `nif_lightning.data.DataConfig` (plus `dir`). The sections `gen`, `filter`
and `sample` belong to `nif run` (`nif_lightning.pipeline` checks them); training passes over them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nif_lightning.module import LoraSettings, OptimSettings
from nif_lightning.strategy import StrategyConfig


@dataclass
class ModelSection:
    """The base model."""

    path: str = ""
    """Hub id or local folder of a Hugging Face causal LM (`--model`)."""
    dtype: str = "float32"
    """Backbone weights dtype: float32, float16 or bfloat16 (LoRA params stay fp32)."""
    fused_lora: bool = True
    """Use the Triton fused LoRA kernels when available."""
    packed_attention: bool = True
    """Exact block-diagonal attention for packed batches."""
    tiny: bool = False
    """Offline stand-in: write the tiny random model (`nif tiny-model`) at `path` if missing."""
    gradient_checkpointing: bool | str = "auto"
    """Recompute each decoder layer in backward (non-reentrant): `auto` turns it on exactly when
    the memory plan (`nif plan`) needs it on CUDA; `true` / `false` force it."""

    def __post_init__(self) -> None:
        if self.dtype not in ("float32", "float16", "bfloat16"):
            raise ValueError(
                f"`model.dtype` must be float32, float16 or bfloat16, got {self.dtype!r}"
            )
        if self.gradient_checkpointing not in (True, False, "auto"):
            raise ValueError(
                "`model.gradient_checkpointing` must be auto, true or false, "
                f"got {self.gradient_checkpointing!r}"
            )


@dataclass
class DataSection:
    """The dataset folder plus options for `nif_lightning.data.DataConfig`."""

    dir: str = ""
    """Folder written by `nif gen` / `nif filter` (holds `shards/*.arrow`) (`--data`)."""
    options: dict[str, Any] = field(default_factory=dict)
    """Keys of `DataConfig` (e.g. cutoff_len, packing, micro_batch_tokens); checked there."""


@dataclass
class TrainerSection(StrategyConfig):
    """Lightning Trainer settings (plus the strategy fields of `StrategyConfig`)."""

    max_steps: int = -1
    """Optimizer steps to run, whatever the epochs; -1 = run `max_epochs` (`--max-steps`)."""
    max_epochs: int = 3
    """Epochs (the paper: 3)."""
    accumulate_grad_batches: int = 1
    """Micro-batches per optimizer step (the paper: 4); lives here, not in the DeepSpeed config."""
    val_check_interval: int | float = 1.0
    """Validate every N steps (int) or fraction of an epoch (float)."""
    log_every_n_steps: int = 10
    """Logging interval."""
    gradient_clip_val: float | None = 1.0
    """Gradient-norm clip (None to disable)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_steps == 0 or self.max_steps < -1:
            raise ValueError(f"`trainer.max_steps` must be -1 or > 0, got {self.max_steps}")
        if self.max_epochs < 1:
            raise ValueError(f"`trainer.max_epochs` must be >= 1, got {self.max_epochs}")
        if self.accumulate_grad_batches < 1:
            raise ValueError(
                "`trainer.accumulate_grad_batches` must be >= 1, "
                f"got {self.accumulate_grad_batches}"
            )


@dataclass
class TrainConfig:
    """Everything `nif train` needs."""

    model: ModelSection = field(default_factory=ModelSection)
    lora: LoraSettings = field(default_factory=LoraSettings)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSettings = field(default_factory=OptimSettings)
    trainer: TrainerSection = field(default_factory=TrainerSection)
    out: str = "runs/train"
    """Output folder: adapter/, merged/, checkpoints/, logs/ (`--out`)."""
    seed: int = 0
    """Global seed (data order, LoRA init)."""


# Sections of a `nif run` config that training itself does not read.
RUN_SECTIONS = ("gen", "filter", "sample")

_SECTIONS = {
    "model": ModelSection,
    "lora": LoraSettings,
    "optim": OptimSettings,
    "trainer": TrainerSection,
}


def config_from_dict(raw: dict[str, Any], *, source: str = "config") -> TrainConfig:
    """Build and check a `TrainConfig`; unknown keys are errors naming them."""
    if not isinstance(raw, dict):
        raise ValueError(f"{source}: top level must be a mapping, got {type(raw).__name__}")
    known = {f.name for f in dataclasses.fields(TrainConfig)} | set(RUN_SECTIONS)
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"{source}: unknown key(s) {unknown}; known: {sorted(known)}")
    kwargs: dict[str, Any] = {}
    for name, cls in _SECTIONS.items():
        section = raw.get(name) or {}
        if not isinstance(section, dict):
            raise ValueError(f"{source}: `{name}` must be a mapping")
        fields = {f.name for f in dataclasses.fields(cls)}
        bad = sorted(set(section) - fields)
        if bad:
            raise ValueError(
                f"{source}: unknown key(s) {[f'{name}.{k}' for k in bad]}; "
                f"known in `{name}`: {sorted(fields)}"
            )
        kwargs[name] = cls(**section)
    data = dict(raw.get("data") or {})
    kwargs["data"] = DataSection(dir=str(data.pop("dir", "")), options=data)
    for key in ("out", "seed"):
        if key in raw:
            kwargs[key] = raw[key]
    return TrainConfig(**kwargs)


def load_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read YAML (or nothing: defaults), apply dotted overrides (`{"trainer.max_steps": 5}`)."""
    import yaml

    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"`--config` {p} does not exist")
        raw = yaml.safe_load(p.read_text()) or {}
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        node = raw
        *parents, leaf = dotted.split(".")
        for key in parents:
            if not isinstance(node.get(key), dict):
                node[key] = {}
            node = node[key]
        node[leaf] = value
    return config_from_dict(raw, source=str(path or "config"))
