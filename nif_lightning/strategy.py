"""Which Lightning strategy trains the model: DeepSpeed ZeRO on CUDA, the default elsewhere.

The paper trained with DeepSpeed fp16 on 8x V100. Lightning's `DeepSpeedStrategy` runs only on
CUDA, so on a CPU (CI, the quickstart) the same module trains with Lightning's default strategy.
The DeepSpeed config is built here as a plain dict so it can be unit-tested without a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

# DeepSpeed's dynamic loss scaling, as in the recipe (DESIGN.md "DeepSpeed under Lightning"):
# start at 2^16, grow after 1000 clean steps, shrink only after 2 overflows in a row, floor 1.
_INITIAL_SCALE_POWER = 16
_LOSS_SCALE_WINDOW = 1000
_HYSTERESIS = 2
_MIN_LOSS_SCALE = 1

_STRATEGIES = ("auto", "deepspeed", "ddp")
_PRECISIONS = ("32-true", "16-mixed", "bf16-mixed", "32")


@dataclass
class StrategyConfig:
    """How to distribute training."""

    strategy: str = "auto"
    """`auto` (DeepSpeed on CUDA, Lightning's default elsewhere), `deepspeed` (CUDA) or `ddp`."""
    zero_stage: int = 2
    """DeepSpeed ZeRO stage: 2 for 7B/8B (params whole on each GPU), 3 for 70B (params sharded)."""
    precision: str = "32-true"
    """Lightning precision; `16-mixed` under DeepSpeed = fp16 with dynamic loss scaling."""
    num_nodes: int = 1
    """Nodes (Lightning launches via SLURM `srun` or `torchrun`)."""
    devices: int | str = "auto"
    """Devices per node (`auto` or a count)."""

    def __post_init__(self) -> None:
        if self.strategy not in _STRATEGIES:
            raise ValueError(
                f"`trainer.strategy` must be one of {_STRATEGIES}, got {self.strategy!r}"
            )
        if self.zero_stage not in (1, 2, 3):
            raise ValueError(f"`trainer.zero_stage` must be 1, 2 or 3, got {self.zero_stage}")
        if self.precision not in _PRECISIONS:
            raise ValueError(
                f"`trainer.precision` must be one of {_PRECISIONS}, got {self.precision!r}"
            )
        if self.num_nodes < 1:
            raise ValueError(f"`trainer.num_nodes` must be >= 1, got {self.num_nodes}")
        if not (self.devices == "auto" or (isinstance(self.devices, int) and self.devices >= 1)):
            raise ValueError(
                f"`trainer.devices` must be 'auto' or an int >= 1, got {self.devices!r}"
            )


def deepspeed_config(zero_stage: int, precision: str) -> dict:
    """The DeepSpeed config dict for Lightning's `DeepSpeedStrategy(config=...)`.

    No `gradient_accumulation_steps` and no batch size: Lightning's Trainer owns accumulation
    (it raises if the DS config sets it) and fills the micro-batch size itself.
    """
    cfg: dict = {
        "zero_optimization": {
            "stage": zero_stage,
            "contiguous_gradients": True,
            "overlap_comm": True,
            "allgather_partitions": True,
            "reduce_scatter": True,
            "allgather_bucket_size": 200_000_000,
            "reduce_bucket_size": 200_000_000,
        },
        # Our AdamW is a plain torch optimizer over the (fp32) LoRA params.
        "zero_allow_untested_optimizer": True,
    }
    if zero_stage == 3:
        # Gather a layer's params before each use; export gathers explicitly (callbacks.py).
        cfg["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] = False
    if precision == "16-mixed":
        cfg["fp16"] = {
            "enabled": True,
            "loss_scale": 0,  # 0 = dynamic
            "initial_scale_power": _INITIAL_SCALE_POWER,
            "loss_scale_window": _LOSS_SCALE_WINDOW,
            "hysteresis": _HYSTERESIS,
            "min_loss_scale": _MIN_LOSS_SCALE,
        }
    elif precision == "bf16-mixed":
        cfg["bf16"] = {"enabled": True}
    return cfg


def uses_deepspeed(cfg: StrategyConfig, *, cuda_available: bool | None = None) -> bool:
    """True when this run trains under DeepSpeed; raises if DeepSpeed is asked for without CUDA."""
    import torch

    cuda = torch.cuda.is_available() if cuda_available is None else cuda_available
    if cfg.strategy == "deepspeed" and not cuda:
        raise ValueError(
            "`--strategy deepspeed` needs CUDA GPUs (Lightning's DeepSpeedStrategy is CUDA-only); "
            "use `--strategy auto` on this machine"
        )
    return cfg.strategy == "deepspeed" or (cfg.strategy == "auto" and cuda)


def build_strategy(cfg: StrategyConfig, *, cuda_available: bool | None = None):
    """A Lightning strategy object or name for `Trainer(strategy=...)`."""
    if not uses_deepspeed(cfg, cuda_available=cuda_available):
        return cfg.strategy  # "auto" or "ddp"
    from lightning.pytorch.strategies import DeepSpeedStrategy

    return DeepSpeedStrategy(
        config=deepspeed_config(cfg.zero_stage, cfg.precision),
        # Checkpoints hold only the LoRA params and their optimizer state (GBs, not 50 GB).
        exclude_frozen_parameters=True,
    )
