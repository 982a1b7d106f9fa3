"""Which Lightning strategy trains the model: DeepSpeed ZeRO (on CUDA or CPU ranks) or the default.

The paper trained with DeepSpeed fp16 on 8x V100. Lightning's `DeepSpeedStrategy` refuses any
accelerator but CUDA, yet DeepSpeed itself has a CPU accelerator (gloo without oneCCL) that runs
the same engine, ZeRO partitioning, loss scaler and checkpoint format. `NifDeepSpeedStrategy`
lifts exactly Lightning's three CUDA-only spots, so `trainer.strategy: deepspeed` runs on CPU
ranks too: that is how CI proves the DeepSpeed path without a GPU. `auto` still means DeepSpeed
on CUDA and Lightning's default strategy elsewhere.

The DeepSpeed config is built here as a plain dict so it can be unit-tested without a GPU.
"""

from __future__ import annotations

import argparse

from lightning.fabric.utilities.seed import reset_seed
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy
from lightning.pytorch.utilities.rank_zero import rank_zero_info

from nif_lightning.config import StrategyConfig
from nif_lightning.deepspeed_cpu import check_build_lock

# DeepSpeed's dynamic loss scaling, as in the recipe (DESIGN.md "DeepSpeed under Lightning"):
# start at 2^16, grow after 1000 clean steps, shrink only after 2 overflows in a row, floor 1.
_INITIAL_SCALE_POWER = 16
_LOSS_SCALE_WINDOW = 1000
_HYSTERESIS = 2
_MIN_LOSS_SCALE = 1

# Our loaders yield ready (packed) micro-batches, one per step: DeepSpeed's "micro-batch size"
# is 1 batch. Set here, Lightning never guesses it from `loader.batch_sampler` (None for our
# `DataLoader(batch_size=None)`, which crashed every DeepSpeed run at setup).
_MICRO_BATCHES_PER_STEP = 1
# ZeRO-2 keeps two contiguous gradient buckets of this many elements (overlap_comm); LoRA on an 8B
# model has ~2e7 trainable params, so DeepSpeed's 2e8 default would waste ~0.7 GB of fp16 buffers.
_BUCKET_ELEMENTS = 50_000_000


def deepspeed_config(zero_stage: int, precision: str, offload: str = "none") -> dict:
    """The DeepSpeed config dict for Lightning's `DeepSpeedStrategy(config=...)`.

    No `gradient_accumulation_steps`: Lightning's Trainer owns accumulation (it raises if the DS
    config sets it).
    """
    zero: dict = {
        "stage": zero_stage,
        "contiguous_gradients": True,
        "overlap_comm": True,
        "allgather_partitions": True,
        "reduce_scatter": True,
        "allgather_bucket_size": _BUCKET_ELEMENTS,
        "reduce_bucket_size": _BUCKET_ELEMENTS,
    }
    if zero_stage == 3:
        # Gather a layer's params before each use; export gathers explicitly (callbacks.py).
        zero["stage3_gather_16bit_weights_on_model_save"] = False
    if offload in ("optimizer", "both"):
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if offload in ("params", "both"):
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    cfg: dict = {
        "train_micro_batch_size_per_gpu": _MICRO_BATCHES_PER_STEP,
        "zero_optimization": zero,
        # Our AdamW is a plain torch optimizer over the LoRA params (a few hundred MB of state
        # even at 70B), also when offloaded: DeepSpeed's CPU Adam would need a compiled op.
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
    }
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
    """True when this run trains under DeepSpeed: asked for, or `auto` on CUDA."""
    import torch

    cuda = torch.cuda.is_available() if cuda_available is None else cuda_available
    return cfg.strategy == "deepspeed" or (cfg.strategy == "auto" and cuda)


def build_strategy(cfg: StrategyConfig, *, cuda_available: bool | None = None):
    """A Lightning strategy object or name for `Trainer(strategy=...)`."""
    if not uses_deepspeed(cfg, cuda_available=cuda_available):
        return cfg.strategy  # "auto" or "ddp"
    return NifDeepSpeedStrategy(
        config=deepspeed_config(cfg.zero_stage, cfg.precision, cfg.offload),
        # Checkpoints hold only the LoRA params and their optimizer state (GBs, not 50 GB).
        exclude_frozen_parameters=True,
    )


class NifDeepSpeedStrategy(DeepSpeedStrategy):
    """Lightning's `DeepSpeedStrategy`, also on CPU ranks (see the module docstring), with the
    gradient scale of gradient accumulation right."""

    def backward(self, closure_loss, optimizer, *args, **kwargs):
        # Lightning's closure has divided the loss by `accumulate_grad_batches` already, and
        # DeepSpeed's `engine.backward` would divide it by its `gradient_accumulation_steps`
        # (Lightning sets the same N) again: gradients N times too small, so the gradient norm
        # and `gradient_clip_val` N times off. Measured at N=2: norm 0.126 against 0.253.
        kwargs.setdefault("scale_wrt_gas", False)
        return super().backward(closure_loss, optimizer, *args, **kwargs)

    def setup_environment(self) -> None:
        if self.root_device.type == "cuda":
            super().setup_environment()
        else:
            DDPStrategy.setup_environment(self)  # skips only the "CUDA GPUs only" refusal

    def setup_distributed(self) -> None:
        if self.root_device.type == "cuda":
            super().setup_distributed()
            return
        # As Lightning's, minus the check of device indices against CUDA_VISIBLE_DEVICES.
        reset_seed()
        self.set_world_ranks()
        # DeepSpeed's CPU backend builds (or loads) its comm op next, waiting on any build lock
        # with no limit: a lock a killed build left is an error here, not a hang.
        check_build_lock(log=rank_zero_info)
        self._init_deepspeed_distributed()

    def _setup_model_and_optimizer(self, model, optimizer, lr_scheduler=None):
        if self.root_device.type == "cuda":
            return super()._setup_model_and_optimizer(model, optimizer, lr_scheduler)
        import deepspeed

        # Lightning passes `device_rank=root_device.index`, None on CPU, which DeepSpeed
        # compares with 0; the CPU accelerator takes the local rank.
        engine, ds_optimizer, _, _ = deepspeed.initialize(
            args=argparse.Namespace(device_rank=self.local_rank),
            config=self.config,
            model=model,
            model_parameters=[p for p in model.parameters() if p.requires_grad],
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
            dist_init_required=False,
        )
        return engine, ds_optimizer
