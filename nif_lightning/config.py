"""The typed configs of training and `nif run`: one schema for the YAML, the flags and the checks.

A train config has the sections `model`, `lora`, `data`, `optim`, `trainer` and the top-level keys
`out` and `seed`; a run config (`RunConfig`) adds `gen`, `filter` and `preview`, whose options are
`nif gen`'s and `nif filter`'s own (`data_gen.config`). Every key is a dataclass field with a
docstring, and `data_gen.schema` derives from these classes the `nif train` flags
(`--lora.r 16`, with short aliases such as `--max-steps`), the YAML reading (unknown keys and
wrong types at any depth are reported together with their key paths, as one `ConfigError`) and
the CLI help with its defaults.

This module is pure: it imports neither torch nor lightning, and building a config touches no
file, environment variable or Hub: `check_inputs()` methods do that, in one `validate` step
before any stage runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from data_gen.config import FilterConfig, GenConfig
from data_gen.schema import ConfigError, build, option, section, validate

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
DTYPES = ("float32", "float16", "bfloat16")
STRATEGIES = ("auto", "deepspeed", "ddp")
PRECISIONS = ("32-true", "16-mixed", "bf16-mixed", "32")
OFFLOADS = ("none", "optimizer", "params", "both")

Dtype = Literal["float32", "float16", "bfloat16"]


@dataclass
class ModelConfig:
    """The base model."""

    path: str = ""
    """Hub id or local folder of a Hugging Face causal LM."""
    dtype: Dtype = "float32"
    """Backbone weights dtype (LoRA params stay fp32)."""
    fused_lora: bool = True
    """Use the Triton fused LoRA kernels when available."""
    packed_attention: bool = True
    """Exact block-diagonal attention for packed batches."""
    tiny: bool = False
    """Offline stand-in: write the tiny random model (`nif tiny-model`) at `path` if missing."""
    gradient_checkpointing: bool | Literal["auto"] = "auto"
    """Recompute each decoder layer in backward (non-reentrant): `auto` turns it on exactly when
    the memory plan (`nif plan`) needs it on CUDA; `true` / `false` force it."""

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(
                f"`model.dtype` must be one of {', '.join(DTYPES)}, got {self.dtype!r}"
            )
        if self.gradient_checkpointing not in (True, False, "auto"):
            raise ValueError(
                "`model.gradient_checkpointing` must be auto, true or false, "
                f"got {self.gradient_checkpointing!r}"
            )


@dataclass
class LoraConfig:
    """LoRA hyper-parameters (the paper: r 8, alpha 16, dropout 0, all linear but lm_head)."""

    r: int = 8
    """Rank of the update B @ A."""
    alpha: float = 16.0
    """Scale numerator: the update is multiplied by alpha / r."""
    dropout: float = 0.0
    """Dropout on the LoRA input."""
    targets: list[str] = option(default_factory=lambda: list(LORA_TARGETS))
    """Module names to adapt."""

    def __post_init__(self) -> None:
        if self.r <= 0:
            raise ValueError(f"`lora.r` must be > 0, got {self.r}")
        if self.alpha <= 0:
            raise ValueError(f"`lora.alpha` must be > 0, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"`lora.dropout` must be in [0, 1), got {self.dropout}")
        if not self.targets or "lm_head" in self.targets:
            raise ValueError(
                f"`lora.targets` must be non-empty and exclude lm_head, got {self.targets}"
            )

    def peft_config(self, dropout: float | None = None):
        """PEFT's `LoraConfig` for a causal LM with these settings (`dropout` overrides)."""
        from peft import LoraConfig as PeftLoraConfig

        return PeftLoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout if dropout is None else dropout,
            target_modules=list(self.targets),
            task_type="CAUSAL_LM",
        )


@dataclass
class DataConfig:
    """The training data: the dataset folder, tokenization, batching and the validation split."""

    dir: str = ""
    """Folder written by `nif gen` / `nif filter` (holds `shards/*.arrow`)."""
    cutoff_len: int = 1024
    """Max tokens per example, prompt + response + EOS (the paper: 1024)."""
    micro_batch_size: int = 8
    """Examples per padded batch; packed batches hold micro_batch_size * cutoff_len tokens."""
    packing: bool = True
    """Pack examples into token-budget rows (no padding computed) instead of padding."""
    max_tokens_per_batch: int | None = None
    """Packed token budget per batch; default micro_batch_size * cutoff_len."""
    val_fraction: float = 0.02
    """Share of rows held out for validation (by id hash); at least one row when > 0."""
    seed: int = 0
    """Shuffle and bin-order seed (epoch e uses seed + e)."""

    def __post_init__(self) -> None:
        if self.cutoff_len < 2:
            raise ValueError(f"`data.cutoff_len` must be >= 2, got {self.cutoff_len}")
        if self.micro_batch_size < 1:
            raise ValueError(f"`data.micro_batch_size` must be >= 1, got {self.micro_batch_size}")
        if self.max_tokens_per_batch is not None and self.max_tokens_per_batch < self.cutoff_len:
            raise ValueError(
                f"`data.max_tokens_per_batch` ({self.max_tokens_per_batch}) must be >= "
                f"`data.cutoff_len` ({self.cutoff_len}): a full-length example must fit"
            )
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"`data.val_fraction` must be in [0, 1), got {self.val_fraction}")

    @property
    def token_budget(self) -> int:
        return self.max_tokens_per_batch or self.micro_batch_size * self.cutoff_len


@dataclass
class OptimConfig:
    """AdamW with linear warmup then cosine decay to zero (the paper: lr 5e-5 cosine)."""

    lr: float = 5e-5
    """Peak learning rate."""
    weight_decay: float = 0.0
    """AdamW weight decay on LoRA params."""
    warmup_ratio: float = 0.03
    """Share of the total steps spent warming up linearly from 0."""

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"`optim.lr` must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"`optim.weight_decay` must be >= 0, got {self.weight_decay}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"`optim.warmup_ratio` must be in [0, 1), got {self.warmup_ratio}")


@dataclass
class StrategyConfig:
    """How to distribute training."""

    strategy: Literal["auto", "deepspeed", "ddp"] = "auto"
    """`auto` (DeepSpeed on CUDA, Lightning's default elsewhere), `deepspeed` (CUDA or CPU ranks)
    or `ddp`."""
    zero_stage: Literal[1, 2, 3] = 2
    """DeepSpeed ZeRO stage: 2 for 7B/8B (params whole on each GPU), 3 for 70B (params sharded)."""
    precision: Literal["32-true", "16-mixed", "bf16-mixed", "32"] = "32-true"
    """Lightning precision; `16-mixed` under DeepSpeed = fp16 with dynamic loss scaling."""
    num_nodes: int = 1
    """Nodes (Lightning launches via SLURM `srun` or `torchrun`)."""
    devices: int | Literal["auto"] = "auto"
    """Devices per node (`auto` or a count)."""
    offload: Literal["none", "optimizer", "params", "both"] = "none"
    """DeepSpeed CPU offload: `none`, `optimizer` (ZeRO >= 1), `params` (ZeRO-3: frozen weights
    live in host memory and stream in per layer) or `both`."""

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(
                f"`trainer.strategy` must be one of {STRATEGIES}, got {self.strategy!r}"
            )
        if self.zero_stage not in (1, 2, 3):
            raise ValueError(f"`trainer.zero_stage` must be 1, 2 or 3, got {self.zero_stage}")
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"`trainer.precision` must be one of {PRECISIONS}, got {self.precision!r}"
            )
        if self.num_nodes < 1:
            raise ValueError(f"`trainer.num_nodes` must be >= 1, got {self.num_nodes}")
        if self.offload not in OFFLOADS:
            raise ValueError(f"`trainer.offload` must be one of {OFFLOADS}, got {self.offload!r}")
        if self.offload != "none" and self.strategy == "ddp":
            raise ValueError(
                f"`trainer.offload: {self.offload}` needs DeepSpeed (`trainer.strategy: deepspeed` "
                "or `auto` on CUDA); DDP offloads nothing"
            )
        if self.offload in ("params", "both") and self.zero_stage != 3:
            raise ValueError(
                f"`trainer.offload: {self.offload}` needs `trainer.zero_stage: 3` "
                f"(got {self.zero_stage}): only ZeRO-3 partitions and offloads parameters"
            )
        ok_devices = self.devices == "auto" or (
            isinstance(self.devices, int)
            and not isinstance(self.devices, bool)
            and self.devices >= 1
        )
        if not ok_devices:
            raise ValueError(
                f"`trainer.devices` must be 'auto' or an int >= 1, got {self.devices!r}"
            )


@dataclass
class TrainerConfig(StrategyConfig):
    """Lightning Trainer settings (plus the strategy fields of `StrategyConfig`)."""

    max_steps: int = -1
    """Optimizer steps to run, whatever the epochs; -1 = run `max_epochs`."""
    max_epochs: int = 3
    """Epochs (the paper: 3)."""
    accumulate_grad_batches: int = 1
    """Micro-batches per optimizer step (the paper: 4); lives here, not in the DeepSpeed config."""
    val_check_interval: int | float = 1.0
    """Validate every N steps (int) or fraction of an epoch (float)."""
    log_every_n_steps: int = 10
    """Logging interval."""
    gradient_clip_val: float | None = 1.0
    """Gradient-norm clip (null to disable)."""
    checkpoint_every_n_steps: int | None = None
    """Also write `checkpoints/last.ckpt` every N optimizer steps (null: on time only)."""
    checkpoint_every_minutes: float = 10.0
    """Write `checkpoints/last.ckpt` when this many minutes passed since the last one, whatever
    validation does: a kill loses at most about this much training."""
    profiler: Literal["none", "simple", "pytorch"] = "none"
    """Profile the run into OUT/profile/: "simple" times Lightning's hooks; "pytorch" records a
    few steps with the PyTorch profiler (a Chrome trace and an op table; our LoRA op shows as
    `nif::lora_*`)."""
    logger: str | dict[str, Any] = "csv"
    """Where metrics go besides OUT/logs/*/metrics.csv (always written: the report reads it):
    `csv` (only that), `tensorboard` (OUT/tensorboard), `wandb` (`WANDB_MODE=offline` works
    without a network), `mlflow` (a local file store, OUT/mlruns), or any Lightning logger as a
    class path (`lightning.pytorch.loggers.CometLogger`) or a mapping `{class_path, init_args}`."""

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_logger(self.logger)
        if self.max_steps == 0 or self.max_steps < -1:
            raise ValueError(f"`trainer.max_steps` must be -1 or > 0, got {self.max_steps}")
        if self.max_epochs < 1:
            raise ValueError(f"`trainer.max_epochs` must be >= 1, got {self.max_epochs}")
        if self.accumulate_grad_batches < 1:
            raise ValueError(
                "`trainer.accumulate_grad_batches` must be >= 1, "
                f"got {self.accumulate_grad_batches}"
            )
        if self.checkpoint_every_n_steps is not None and self.checkpoint_every_n_steps < 1:
            raise ValueError(
                "`trainer.checkpoint_every_n_steps` must be >= 1 or null, "
                f"got {self.checkpoint_every_n_steps}"
            )
        if not self.checkpoint_every_minutes > 0:
            raise ValueError(
                "`trainer.checkpoint_every_minutes` must be > 0, "
                f"got {self.checkpoint_every_minutes}"
            )


LOGGERS = ("csv", "tensorboard", "wandb", "mlflow")


def _check_logger(logger: str | dict[str, Any]) -> None:
    """`trainer.logger` is a known name, a dotted class path, or `{class_path, init_args}`."""
    if isinstance(logger, str):
        if logger in LOGGERS or ("." in logger.strip(".") and " " not in logger):
            return
        raise ValueError(
            f"`trainer.logger` must be one of {', '.join(LOGGERS)} or a logger's class path "
            f"(package.module.Class), got {logger!r}"
        )
    class_path = logger.get("class_path")
    extra = sorted(set(logger) - {"class_path", "init_args"})
    if not isinstance(class_path, str) or "." not in class_path or extra:
        raise ValueError(
            "`trainer.logger` as a mapping needs `class_path` (package.module.Class) and "
            f"optionally `init_args` (a mapping), got {logger!r}"
        )
    if not isinstance(logger.get("init_args", {}), dict):
        raise ValueError(f"`trainer.logger.init_args` must be a mapping, got {logger!r}")


@dataclass
class TrainConfig:
    """Everything `nif train` needs."""

    model: ModelConfig = section(ModelConfig)
    lora: LoraConfig = section(LoraConfig)
    data: DataConfig = section(DataConfig)
    optim: OptimConfig = section(OptimConfig)
    trainer: TrainerConfig = section(TrainerConfig)
    out: str = "runs/train"
    """Output folder: adapter/, merged/, checkpoints/, logs/."""
    seed: int = 0
    """Global seed: LoRA initialisation, dropout, the tiny model's weights (the data order has
    its own, `data.seed`)."""


# Written for this project, in the spirit of the paper's Appendix D: everyday instructions of
# different kinds (advice, explanation, writing, comparison, summary, planning).
DEFAULT_PROMPTS = (
    "Give me three practical tips for keeping a houseplant alive in a dark apartment.",
    "Explain to a ten-year-old why the sky is blue.",
    "Write a four-line poem about a train arriving late at night.",
    "What is the difference between a list and a tuple in Python?",
    "Summarize in two sentences why regular exercise is good for sleep.",
    "Plan a one-day itinerary for a first visit to a city by the sea.",
)


@dataclass
class PreviewConfig:
    """The `preview` stage of `nif run`: base and fine-tuned answers to a few instructions."""

    prompts: list[str] = option(default_factory=lambda: list(DEFAULT_PROMPTS))
    """Instructions to answer; an empty list skips the stage."""
    max_new_tokens: int = 128
    """Reply length cap (greedy decoding)."""

    def __post_init__(self) -> None:
        if not isinstance(self.prompts, list) or not all(
            isinstance(p, str) and p.strip() for p in self.prompts
        ):
            raise ValueError("`preview.prompts` must be a list of non-empty strings")
        if self.max_new_tokens < 1:
            raise ValueError(f"`preview.max_new_tokens` must be >= 1, got {self.max_new_tokens}")


# ---------------------------------------------------------------------------------------------
# Reading YAML


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping; a missing file or a non-mapping is a `ConfigError` naming the file."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError([f"config file {p} does not exist"], source="")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(err, "problem", None) or "cannot be parsed"
        raise ConfigError([f"not valid YAML{where}: {problem}"], source=str(p)) from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError([f"top level must be a mapping, got {type(raw).__name__}"], str(p))
    return raw


def set_dotted(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`raw` with `{"trainer.max_steps": 5}` applied (None values skipped)."""
    for dotted, value in overrides.items():
        if value is None:
            continue
        node = raw
        *parents, leaf = dotted.split(".")
        for key in parents:
            if not isinstance(node.get(key), dict):
                node[key] = {}
            node = node[key]
        node[leaf] = value
    return raw


def train_config(raw: dict[str, Any], *, source: str = "config") -> TrainConfig:
    """A checked `TrainConfig` from a mapping; every problem in one `ConfigError`."""
    return build(TrainConfig, raw, source=source)


def load_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read YAML (or nothing: defaults) and apply dotted overrides (`{"trainer.max_steps": 5}`).
    A run config (with `gen`/`filter`/`preview`) is read as its training part."""
    raw = read_yaml(path) if path is not None else {}
    raw = {k: v for k, v in raw.items() if k not in RUN_SECTIONS}
    return train_config(set_dotted(raw, overrides or {}), source=str(path or ""))


# ---------------------------------------------------------------------------------------------
# `nif run`

RUN_SECTIONS = ("gen", "filter", "preview")


@dataclass
class RunConfig:
    """A checked run config: the train config plus the sections only `nif run` reads."""

    train: TrainConfig
    gen: GenConfig
    filter: FilterConfig | None
    """None: no filter stage."""
    preview: PreviewConfig
    raw: dict[str, Any]
    """The YAML as read (for the report)."""

    @property
    def run_dir(self) -> Path:
        return Path(self.train.out)

    @property
    def data_dir(self) -> Path:
        return self.run_dir / "data"

    @property
    def filter_dir(self) -> Path | None:
        return self.run_dir / "data-filtered" if self.filter is not None else None

    @property
    def train_data_dir(self) -> Path:
        return self.filter_dir or self.data_dir


def run_config(raw: dict[str, Any], *, source: str = "config") -> RunConfig:
    """Build every stage's config from one mapping; all problems at once, with key paths."""
    problems: list[str] = []
    out = raw.get("out")
    if not out or str(out) == ".":
        problems.append("`out` (the run folder) is required")
    run_dir = Path(str(out or "."))
    has_filter = raw.get("filter") is not None
    expected = run_dir / ("data-filtered" if has_filter else "data")

    train_raw = {k: v for k, v in raw.items() if k not in RUN_SECTIONS}
    data = train_raw.get("data")
    if isinstance(data, dict):
        data = dict(data)
        if data.get("dir") and Path(str(data["dir"])) != expected:
            problems.append(
                f"`data.dir` is {data['dir']!r}, but this run trains on {str(expected)!r} "
                "(what its gen/filter stage writes); remove `data.dir` or set it to that"
            )
        data["dir"] = str(expected)
        train_raw["data"] = data
    elif data is None:
        train_raw["data"] = {"dir": str(expected)}

    gen_raw = raw.get("gen")
    if gen_raw is None:
        problems.append("`gen` section is required (at least `corpus`)")
    fixed_gen = {"out": str(run_dir / "data")}
    fixed_filter = {"src": str(run_dir / "data"), "out": str(run_dir / "data-filtered")}
    gen = _stage(GenConfig, gen_raw, "gen", fixed_gen, problems)
    if gen is not None and gen.dry_run:
        problems.append("`gen.dry_run`: not for `nif run` (use `nif gen --dry-run`)")
    flt = _stage(FilterConfig, raw.get("filter"), "filter", fixed_filter, problems)
    train = _collect(lambda: build(TrainConfig, train_raw, source=""), problems)
    preview = _collect(
        lambda: build(PreviewConfig, raw.get("preview"), source="", path="preview"), problems
    )
    if problems:
        raise ConfigError(sorted(set(problems), key=problems.index), source)
    return RunConfig(train, gen, flt if has_filter else None, preview, raw)


def _stage(cls, section_raw, name, fixed, problems):
    if section_raw is None:
        return None
    if not isinstance(section_raw, dict):
        problems.append(f"`{name}` must be a mapping of `nif {name}` options")
        return None
    for key in fixed:
        if key in section_raw:
            problems.append(f"`{name}.{key}` is set by the run (it is {fixed[key]})")
    merged = {**section_raw, **fixed}
    return _collect(lambda: build(cls, merged, source="", path=name), problems)


def _collect(make, problems: list[str]):
    try:
        return make()
    except ConfigError as err:
        problems.extend(err.problems)
        return None


def load_run_config(path: str | Path) -> RunConfig:
    """Read and check a run config completely (every stage's keys, types and values)."""
    return run_config(read_yaml(path), source=str(path))


def validate_run(cfg: RunConfig, *, source: str = "config") -> None:
    """The checks that touch the world (files, environment, the Hub), all at once."""
    problems: list[str] = []
    # The filter's source is the run's own data/, which the gen stage writes: only its own
    # sections (the judge's key) and its output folder can be checked before gen has run.
    checks = [("gen", cfg.gen)]
    if cfg.filter is not None:
        checks.append(("filter", cfg.filter.judge))
        problems += [f"filter: {p}" for p in cfg.filter.check_inputs(src_written_later=True)]
    for name, part in checks:
        try:
            validate(part, source="", paths=(name,))
        except ConfigError as err:
            problems += err.problems
    if problems:
        raise ConfigError(problems, source)


def check_train_inputs(
    cfg: TrainConfig, *, data_written_later: bool = False, flags: bool = False
) -> list[str]:
    """The model is reachable and the data folder holds shards (unless a stage writes it).
    `flags`: name the `nif train` flags beside the keys."""
    from data_gen.store import folder_problem
    from nif_lightning.hub import check_model

    out = folder_problem(cfg.out, what="`out`" + (" (`--out`)" if flags else ""))
    problems = [out] if out else []
    if not cfg.model.path:
        problems.append("no model: pass `--model` or set `model.path`")
    elif not (cfg.model.tiny and not (Path(cfg.model.path) / "config.json").is_file()):
        # (a tiny model that is not there, or half written by a killed run, training writes)
        try:
            check_model(cfg.model.path, what="`model.path`" + (" (`--model`)" if flags else ""))
        except (ValueError, FileNotFoundError) as err:
            problems.append(str(err))
    if not data_written_later:
        from data_gen.store import check_dataset_dir

        if not cfg.data.dir:
            problems.append("no data: pass `--data` or set `data.dir`")
        else:
            try:
                check_dataset_dir(
                    cfg.data.dir, what="`data.dir`" + (" (`--data`)" if flags else "")
                )
            except (ValueError, FileNotFoundError) as err:
                problems.append(str(err))
    return problems + _device_problems(cfg.trainer, flags)


def _device_problems(t: TrainerConfig, flags: bool) -> list[str]:
    """More devices than this node has, or DeepSpeed without its package: one line each, before
    Lightning starts a process per device (each would fail with its own traceback)."""
    import os

    import torch

    from nif_lightning.strategy import uses_deepspeed

    problems = []
    key = "`trainer.devices`" + (" (`--devices`)" if flags else "")
    if isinstance(t.devices, int):
        if torch.cuda.is_available():
            have, what = torch.cuda.device_count(), "CUDA GPUs"
        else:  # CPU ranks: one process each, on a core of its own
            cores = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
            have = len(cores) if cores else os.cpu_count() or 1
            what = "CPU cores (no CUDA GPU)"
        if t.devices > have:
            problems.append(f"{key} is {t.devices}, but this machine has {have} {what}")
    if uses_deepspeed(t):
        try:
            import deepspeed  # noqa: F401
        except ImportError as err:
            problems.append(
                "`trainer.strategy: deepspeed` needs the deepspeed package "
                f"(pip install deepspeed): {err}"
            )
    return problems
