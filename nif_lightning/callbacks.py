"""Callbacks: `last.ckpt` on a schedule and on SIGTERM, PEFT adapter export, the merged model,
an fp16 loss-scale / NaN guard, and throughput with MFU.

Export writes the stock PEFT format (`adapter_config.json` + `adapter_model.safetensors`) on
rank 0 at every checkpoint and at the end, so `PeftModel.from_pretrained` and `nif merge` read
it directly; the base model is recorded as an absolute path (or the Hub id), so
`AutoPeftModelForCausalLM.from_pretrained(adapter)` works from any folder. Merge writes the
paper's `lora` (into the base) or `lora-base` (`into=` another model) model once fit is over.
Under ZeRO-3 the params are sharded (PEFT would save empty tensors), so the LoRA params are
gathered with `deepspeed.zero.GatheredParameters` first; under ZeRO-2 they are whole already.
Every folder is written beside its destination and renamed into place (`merge.swap_in`).

Per-step metrics cost no host-device synchronisation: `Throughput` and `LossScaleGuard` keep
their sums on the device (or the host, for the batches' token counts) and read the clock, the
loss and the loss scale once per logging interval (`trainer.log_every_n_steps`), on the step
whose metrics Lightning hands to the loggers, as Lightning's `ThroughputMonitor` measures.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.utilities.distributed import ReduceOp
from lightning.pytorch.utilities.exceptions import SIGTERMException

from nif_lightning.merge import merge_adapter, swap_in

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
        self._step_ends = _StepEnds()

    def on_train_start(self, trainer, pl_module) -> None:
        self._saved_step = trainer.global_step  # a resumed run's is on disk
        self._step_ends.start(trainer)
        self._last_save = time.monotonic()

    def save(self, trainer: L.Trainer) -> None:
        """Write next to `path`, then swap it in: a kill while writing leaves the last one whole."""
        if trainer.global_step != self._saved_step:
            partial = self.path.with_name(f".partial-{self.path.name}")
            trainer.save_checkpoint(partial, weights_only=False)  # a full, resumable one
            trainer.strategy.barrier("last-checkpoint-written")  # DeepSpeed: every rank's part
            if trainer.is_global_zero:
                swap_in(partial, self.path)
            trainer.strategy.barrier("last-checkpoint-swapped")
            self._saved_step = trainer.global_step
        self._last_save = time.monotonic()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        connector = trainer._signal_connector  # Lightning's flag, set by its SIGTERM handler
        if connector.received_sigterm:
            connector.received_sigterm = False  # ours to act on at the step boundary
            self._sigterm = True
        if not self._step_ends(trainer):
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
            raise SIGTERMException(143)
        if due:
            self.save(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking and trainer.state.fn == "fit":
            self.save(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        self.save(trainer)

    def on_exception(self, trainer, pl_module, exception) -> None:
        if isinstance(exception, SIGTERMException) and not self.terminated:
            # Lightning stopped the run itself (SIGTERM during validation, say). One rank can
            # save alone; several may have stopped at different points, where a collective save
            # would hang: they keep the last scheduled checkpoint.
            self.terminated = True
            if trainer.world_size == 1:
                self.save(trainer)


def portable_model_ref(name: str | None) -> str | None:
    """A model reference that means the same from any folder: an existing local path made
    absolute; a Hub id (or None) unchanged."""
    if name and Path(name).expanduser().exists():
        return os.path.abspath(os.path.expanduser(name))
    return name


def save_adapter(trainer: L.Trainer, pl_module: L.LightningModule, out_dir: str | Path) -> None:
    """Write `pl_module.model` (a PEFT model) as a stock PEFT adapter to `out_dir`, replacing it
    whole. Every rank must call it (under ZeRO-3 the LoRA params are gathered); rank 0 writes."""
    peft_model = pl_module.model
    out_dir = Path(out_dir)
    params = [p for n, p in peft_model.named_parameters() if "lora_" in n]
    with _gathered(trainer, params):
        if trainer.is_global_zero:
            for config in peft_model.peft_config.values():
                config.base_model_name_or_path = portable_model_ref(config.base_model_name_or_path)
            partial = out_dir.with_name(f".partial-{out_dir.name}")
            shutil.rmtree(partial, ignore_errors=True)  # a killed export's
            peft_model.save_pretrained(partial, safe_serialization=True)
            swap_in(partial, out_dir)
    trainer.strategy.barrier("adapter-export")


class AdapterExport(L.Callback):
    """Save the PEFT adapter (`pl_module.model`) to `out_dir` on rank 0 at every checkpoint save
    and at the end of fit.

    Args:
        out_dir: Folder of the adapter (`adapter_config.json`, `adapter_model.safetensors`).
    """

    def __init__(self, out_dir: str | Path) -> None:
        self.out_dir = Path(out_dir)

    def export(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        save_adapter(trainer, pl_module, self.out_dir)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        self.export(trainer, pl_module)

    def on_fit_end(self, trainer, pl_module) -> None:
        self.export(trainer, pl_module)


class AdapterMerge(L.Callback):
    """At the end of fit, write the merged model (safetensors + tokenizer) to `out_dir` on
    rank 0: the paper's `lora` model (the adapter merged into the base it was trained on, stock
    PEFT `merge_and_unload`) or, with `into`, its `lora-base` model (the same delta added to
    another model of the same architecture, e.g. the base's Instruct variant).

    Every rank gathers its share of the trained LoRA params when fit ends (ZeRO-3), rank 0 stages
    them as an adapter beside `out_dir`; the merge itself runs in `teardown`, after every
    callback's `on_fit_end` (and their collectives), so the other ranks never wait on it. The
    base is read from its checkpoint files, on the CPU, like `nif merge`: rank 0 needs the host
    memory of one full model. The merged model is written beside `out_dir` and renamed into
    place, so a kill leaves the previous `out_dir` or the new one, never half of one. A fit that
    stops on an exception (SIGTERM included) merges nothing.

    Args:
        out_dir: Folder of the merged model, replaced whole.
        into: `lora-base`: a Hub id or folder of the model that receives the delta instead of the
            base; None (default): `lora`, into the base.
        base: The model the adapter was trained on; default: the module's `model_name_or_path`,
            else the base recorded in the PEFT model's config.
    """

    def __init__(
        self, out_dir: str | Path, into: str | None = None, base: str | None = None
    ) -> None:
        self.out_dir = Path(out_dir)
        self.into = str(into) if into is not None else None
        self.base = str(base) if base is not None else None
        self._staged: Path | None = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit" and self.into is not None:
            from nif_lightning.hub import check_model

            # Every rank, before training: a typo here must not cost a whole run.
            check_model(self.into, what="`AdapterMerge(into=...)`")

    def on_fit_end(self, trainer, pl_module) -> None:
        staged = self.out_dir.with_name(f".adapter-{self.out_dir.name}")
        save_adapter(trainer, pl_module, staged)
        self._staged = staged if trainer.is_global_zero else None

    def teardown(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit" or self._staged is None:
            return
        staged, self._staged = self._staged, None
        try:
            merge_adapter(self._base(pl_module), staged, self.out_dir, into=self.into)
        finally:
            shutil.rmtree(staged, ignore_errors=True)

    def on_exception(self, trainer, pl_module, exception) -> None:
        if self._staged is not None:  # fit failed after staging (in a later on_fit_end)
            shutil.rmtree(self._staged, ignore_errors=True)
            self._staged = None

    def _base(self, pl_module) -> str:
        base = self.base or getattr(pl_module, "model_name_or_path", None)
        if base is None:
            config = next(iter(pl_module.model.peft_config.values()))
            base = config.base_model_name_or_path
        if not base:
            raise ValueError("AdapterMerge: no base model known; pass `base=`")
        return str(base)


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


# ---- metrics without a host-device sync per step ------------------------------------------------


def _clock(device: torch.device) -> float:
    """Seconds, once the device's queued work is done: a CPU-GPU sync point, so called once per
    logging interval, never per step."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _logs_now(trainer: L.Trainer) -> bool:
    """Whether Lightning hands this step's metrics to the loggers (its own test, which its
    `ThroughputMonitor` uses too; read in `on_train_batch_end`)."""
    connector = getattr(trainer, "_logger_connector", None)
    if connector is not None:
        return bool(connector.should_update_logs)
    every = trainer.log_every_n_steps
    return bool(every) and trainer.global_step % every == 0


class _StepEnds:
    """Tells, in `on_train_batch_end`, whether this batch ended an optimizer step (not a
    micro-batch inside a gradient accumulation)."""

    def __init__(self) -> None:
        self._seen = 0

    def start(self, trainer: L.Trainer) -> None:
        self._seen = trainer.global_step

    def __call__(self, trainer: L.Trainer) -> bool:
        stepped = trainer.global_step != self._seen
        self._seen = trainer.global_step
        return stepped


class LossScaleGuard(L.Callback):
    """Stop with a clear message on a NaN/inf loss or a collapsed fp16 loss scale, and log the
    loss scale (`train/loss_scale`, fp16 only).

    The loss's finiteness is accumulated on the device every micro-batch (no sync); the flag and
    the scale are read once per logging interval (every 50 steps when logging is off), before
    every checkpoint save (a diverged model is never saved over a good one) and at the end of
    training. All ranks decide together (one all-reduce per check), so they stop together.

    Args:
        min_scale: The fp16 loss scale at or below which training stops.
    """

    def __init__(self, min_scale: float = 1.0) -> None:
        self.min_scale = min_scale
        self._nonfinite: torch.Tensor | None = None  # on the device: a bad loss since the check
        self._since = 0
        self._step_ends = _StepEnds()

    def on_train_start(self, trainer, pl_module) -> None:
        self._step_ends.start(trainer)
        self._nonfinite, self._since = None, trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            bad = ~torch.isfinite(loss.detach()).all()  # stays on the device
            self._nonfinite = bad if self._nonfinite is None else self._nonfinite | bad
        if not self._step_ends(trainer):
            return
        every = trainer.log_every_n_steps
        if _logs_now(trainer) or (not every and trainer.global_step % 50 == 0):
            scale = self.check(trainer)
            if scale is not None:
                pl_module.log("train/loss_scale", scale, on_step=True, batch_size=1)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        # Saves during fit only (every rank saves then); not one a user makes afterwards.
        running = trainer.state.status == "running" and trainer.state.fn == "fit"
        if running and not trainer.sanity_checking:
            self.check(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        self.check(trainer)

    def check(self, trainer: L.Trainer) -> float | None:
        """Raise if the loss was NaN/inf on any rank since the last check or the fp16 loss scale
        collapsed; returns the loss scale (None without fp16). A sync point: every rank calls it
        at the same step."""
        strategy = trainer.strategy
        bad = self._nonfinite
        flag = torch.zeros(1, device=strategy.root_device)
        if bad is not None:
            flag = flag + bad.to(flag.device, torch.float32)
        any_bad = float(strategy.reduce(flag, reduce_op=ReduceOp.SUM)[0]) > 0  # the host read
        since, self._nonfinite, self._since = self._since, None, trainer.global_step
        if any_bad:
            raise RuntimeError(
                f"the loss became NaN or inf between steps {since} and {trainer.global_step}: "
                "training diverged. In fp16 try a lower learning rate or bf16 on sm_80+ (Llama "
                "was pretrained in bf16)."
            )
        scale = _loss_scale(trainer)
        if scale is not None and scale <= self.min_scale:
            raise RuntimeError(
                f"fp16 loss scale collapsed to {scale} at step {trainer.global_step}: gradients "
                "overflow even unscaled. Lower the learning rate or train in bf16/fp32."
            )
        return scale


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
    """tokens/s, share of non-padding tokens and MFU (`perf/tokens_per_s`, `perf/non_pad`,
    `perf/mfu` on a GPU of known peak), from the batches' `stats`, per rank.

    Measured over each logging interval (`trainer.log_every_n_steps` optimizer steps): the
    token counts add up on the host, and the clock is read, after one device sync, only when
    the interval closes, so a step costs no sync. Validation inside the interval is left out of
    its time, as in Lightning's `ThroughputMonitor`; checkpoint saves are counted in.
    """

    def __init__(self) -> None:
        self._flops_per_token = 0.0
        self._t0: float | None = None  # the interval's start (None: not training)
        self._paused: float | None = None
        self._tokens = self._slots = 0
        self._step_ends = _StepEnds()

    def on_train_start(self, trainer, pl_module) -> None:
        counts = getattr(pl_module, "param_counts", None)
        if counts is not None:
            self._flops_per_token = flops_per_token(*counts())
        else:  # any LightningModule: frozen and trainable parameters as they are
            params = list(pl_module.parameters())
            self._flops_per_token = flops_per_token(
                sum(p.numel() for p in params if not p.requires_grad),
                sum(p.numel() for p in params if p.requires_grad),
            )
        self._step_ends.start(trainer)
        self._tokens = self._slots = 0
        self._t0 = _clock(pl_module.device)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        stats = batch["stats"]
        self._tokens += stats["tokens"]  # ints from the collate (tensors would add unsynced)
        self._slots += stats["slots"]
        if not (self._step_ends(trainer) and _logs_now(trainer)) or self._t0 is None:
            return
        now = _clock(pl_module.device)
        seconds = max(now - self._t0, 1e-9)
        tokens, slots = float(self._tokens), float(self._slots)
        self._t0, self._tokens, self._slots = now, 0, 0
        tps = tokens / seconds
        metrics = {"perf/tokens_per_s": tps, "perf/non_pad": tokens / max(slots, 1.0)}
        peak = peak_tflops(pl_module.device)
        if peak is not None:
            metrics["perf/mfu"] = tps * self._flops_per_token / (peak * 1e12)
        pl_module.log("tok/s", tps, prog_bar=True, on_step=True, batch_size=1)
        pl_module.log_dict(metrics, on_step=True, batch_size=1)

    def on_validation_start(self, trainer, pl_module) -> None:
        if self._t0 is not None and not trainer.sanity_checking:
            self._paused = _clock(pl_module.device)

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._paused is not None and self._t0 is not None:
            self._t0 += _clock(pl_module.device) - self._paused
        self._paused = None

    def on_train_end(self, trainer, pl_module) -> None:
        self._t0 = None


def progress_bar() -> L.Callback:
    """Lightning's own progress bar (Rich where installed, else tqdm), without the
    `Epoch 6/-2` that Rich shows under a step budget (`max_epochs=-1`)."""
    from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar
    from lightning.pytorch.utilities.imports import _RICH_AVAILABLE

    if not _RICH_AVAILABLE:
        return TQDMProgressBar()  # shows `Epoch N` alone

    class StepBudgetBar(RichProgressBar):
        def _get_train_description(self, current_epoch: int) -> str:
            if self.trainer.max_epochs is not None and self.trainer.max_epochs > 0:
                return super()._get_train_description(current_epoch)
            steps = self.trainer.max_steps
            description = f"Epoch {current_epoch}" + (
                f" (step {self.trainer.global_step}/{steps})" if steps > 0 else ""
            )
            return f"{description:{len(self.validation_description)}}"

    return StepBudgetBar()
