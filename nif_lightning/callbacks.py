"""Callbacks: `last.ckpt` on a schedule and on SIGTERM, PEFT adapter export, an fp16 loss-scale /
NaN guard, and throughput with MFU.

Export writes the stock PEFT format (`adapter_config.json` + `adapter_model.safetensors`) on
rank 0 at every checkpoint and at the end, so `PeftModel.from_pretrained` and `nif merge` read
it directly. Under ZeRO-3 the params are sharded (PEFT would save empty tensors), so they are
gathered with `deepspeed.zero.GatheredParameters` first; under ZeRO-2 they are whole already.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import time
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.utilities.distributed import ReduceOp

# Dense fp16/bf16 tensor-core peak TFLOP/s by compute capability (major, minor).
_PEAK_TFLOPS = {(7, 0): 125.0, (8, 0): 312.0, (9, 0): 989.0}


def peak_tflops(device: torch.device) -> float | None:
    """The device's fp16/bf16 peak, or None (CPU, or a GPU not in the table)."""
    if device.type != "cuda":
        return None
    return _PEAK_TFLOPS.get(torch.cuda.get_device_capability(device))


def flops_per_token(frozen: int, trainable: int) -> float:
    """Training FLOPs per token with a frozen base: forward 2N + input-grad 2N, plus 6P for LoRA."""
    return 4.0 * frozen + 6.0 * trainable


class LastCheckpoint(L.Callback):
    """Write `path` (`last.ckpt`) every `every_n_steps` optimizer steps or `every_minutes`,
    whichever comes first, after each validation, at the end of training, and when SIGTERM asks
    the run to stop; `terminated` then says so (the caller exits without merging).

    Saves happen only at optimizer-step boundaries, so a resumed run never restarts inside an
    accumulation. Every rank decides together (a boolean all-reduce each step: any rank's clock,
    any rank's SIGTERM), since a DeepSpeed save is collective and a lone saver would hang.
    Lightning's own SIGTERM handling (it sets `trainer.received_sigterm`, forwards the signal
    to the ranks it launched, keeps SLURM's requeue handler) raises `SIGTERMException` at the end
    of any micro-batch; the flag is taken over here and acted on at the step boundary instead.
    """

    def __init__(
        self, path: str | Path, every_n_steps: int | None = None, every_minutes: float = 10.0
    ) -> None:
        self.path = Path(path)
        self.every_n_steps = every_n_steps
        self.every_seconds = every_minutes * 60.0
        self.terminated = False
        self._sigterm = False
        self._saved_step = -1
        self._last_save = time.monotonic()
        self._seen_step = 0

    def on_train_start(self, trainer, pl_module) -> None:
        self._saved_step = self._seen_step = trainer.global_step  # a resumed run's is on disk
        self._last_save = time.monotonic()

    def save(self, trainer: L.Trainer) -> None:
        """Write next to `path`, then swap it in: a kill while writing leaves the last one whole."""
        if trainer.global_step != self._saved_step:
            partial = self.path.with_name(f".partial-{self.path.name}")
            trainer.save_checkpoint(partial)
            trainer.strategy.barrier("last-checkpoint-written")  # DeepSpeed: every rank's part
            if trainer.is_global_zero:
                _swap_in(partial, self.path)
            trainer.strategy.barrier("last-checkpoint-swapped")
            self._saved_step = trainer.global_step
        self._last_save = time.monotonic()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        connector = trainer._signal_connector  # Lightning's flag, set by its SIGTERM handler
        if connector.received_sigterm:
            connector.received_sigterm = False  # ours to act on at the step boundary
            self._sigterm = True
        stepped = trainer.global_step != self._seen_step
        self._seen_step = trainer.global_step
        if not stepped:
            return  # inside an accumulation
        due = time.monotonic() - self._last_save >= self.every_seconds
        if self.every_n_steps and trainer.global_step % self.every_n_steps == 0:
            due = True
        # One all-reduce a step for both decisions (any rank's SIGTERM or clock counts): a save
        # under DeepSpeed is collective, so every rank must take the same branch.
        strategy = trainer.strategy
        flags = torch.tensor([int(self._sigterm), int(due)], device=strategy.root_device)
        sigterm, due = (bool(v) for v in strategy.reduce(flags, reduce_op=ReduceOp.SUM).tolist())
        if sigterm:
            self.save(trainer)
            self.terminated = True
            from lightning.pytorch.utilities.exceptions import SIGTERMException

            raise SIGTERMException(143)
        if due:
            self.save(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking and trainer.state.fn == "fit":
            self.save(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        self.save(trainer)

    def on_exception(self, trainer, pl_module, exception) -> None:
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        if isinstance(exception, SIGTERMException) and not self.terminated:
            # Lightning stopped the run itself (SIGTERM during validation, say). One rank can
            # save alone; several may have stopped at different points, where a collective save
            # would hang: they keep the last scheduled checkpoint.
            self.terminated = True
            if trainer.world_size == 1:
                self.save(trainer)


def _swap_in(partial: Path, path: Path) -> None:
    """`partial` becomes `path` (a file: atomically; a DeepSpeed folder: two renames)."""
    if partial.is_dir():
        old = path.with_name(f".old-{path.name}")
        shutil.rmtree(old, ignore_errors=True)
        if path.exists():
            path.rename(old)
        partial.rename(path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(partial, path)


class AdapterExport(L.Callback):
    """Save the PEFT adapter to `out_dir` (rank 0) on every checkpoint save and at fit end."""

    def __init__(self, out_dir: str | Path) -> None:
        self.out_dir = Path(out_dir)

    def export(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        peft_model = pl_module.model
        params = [p for n, p in peft_model.named_parameters() if "lora_" in n]
        with _gathered(trainer, params):
            if trainer.is_global_zero:
                peft_model.save_pretrained(self.out_dir, safe_serialization=True)
        trainer.strategy.barrier("adapter-export")

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        self.export(trainer, pl_module)

    def on_fit_end(self, trainer, pl_module) -> None:
        self.export(trainer, pl_module)


def _gathered(trainer: L.Trainer, params):
    """ZeRO-3: gather sharded params for reading; otherwise nothing to do."""
    from lightning.pytorch.strategies import DeepSpeedStrategy

    strategy = trainer.strategy
    if (
        isinstance(strategy, DeepSpeedStrategy)
        and strategy.config.get("zero_optimization", {}).get("stage") == 3
    ):
        import deepspeed

        return deepspeed.zero.GatheredParameters(params, modifier_rank=None)
    return contextlib.nullcontext()


class LossScaleGuard(L.Callback):
    """Stop with a clear message on a NaN/inf loss or a collapsed fp16 loss scale."""

    def __init__(self, min_scale: float = 1.0) -> None:
        self.min_scale = min_scale

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is not None and not math.isfinite(float(loss)):
            raise RuntimeError(
                f"loss is {float(loss)} at step {trainer.global_step}: training diverged. In fp16 "
                "try a lower learning rate or bf16 on sm_80+ (Llama was pretrained in bf16)."
            )
        scale = _loss_scale(trainer)
        if scale is not None and scale <= self.min_scale:
            raise RuntimeError(
                f"fp16 loss scale collapsed to {scale} at step {trainer.global_step}: gradients "
                "overflow even unscaled. Lower the learning rate or train in bf16/fp32."
            )


def _loss_scale(trainer) -> float | None:
    engine = getattr(trainer.strategy, "deepspeed_engine", None)
    if engine is not None and hasattr(engine, "optimizer"):
        if not engine.fp16_enabled():
            return None  # bf16/fp32 optimizers report a constant scale of 1: nothing to guard
        scale = getattr(engine.optimizer, "cur_scale", None)
        return float(scale) if scale is not None else None
    scaler = getattr(trainer.precision_plugin, "scaler", None)
    return float(scaler.get_scale()) if scaler is not None and scaler.is_enabled() else None


class Throughput(L.Callback):
    """tokens/s, share of non-padding tokens and MFU, from the batches' `stats`."""

    def __init__(self) -> None:
        self._t0 = 0.0
        self._flops_per_token = 0.0

    def on_train_start(self, trainer, pl_module) -> None:
        self._flops_per_token = flops_per_token(*pl_module.param_counts())

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)  # time the step, not the queue
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        dt = max(time.perf_counter() - self._t0, 1e-9)
        stats = batch["stats"]
        tokens, slots = float(stats["tokens"]), float(stats["slots"])
        tps = tokens / dt
        metrics = {"perf/tokens_per_s": tps, "perf/non_pad": tokens / max(slots, 1.0)}
        peak = peak_tflops(pl_module.device)
        if peak is not None:
            metrics["perf/mfu"] = tps * self._flops_per_token / (peak * 1e12)
        pl_module.log("tok/s", tps, prog_bar=True, on_step=True, batch_size=1)
        pl_module.log_dict(metrics, on_step=True, batch_size=1)
