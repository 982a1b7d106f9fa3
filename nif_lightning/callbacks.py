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
import logging
import os
import shutil
import socket
import time
import uuid
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.utilities.distributed import ReduceOp
from lightning.pytorch.utilities.exceptions import SIGTERMException

from data_gen.store import FolderError
from nif_lightning.merge import merge_adapter, swap_in

log = logging.getLogger(__name__)

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
    accumulation (a validation that falls inside one, at a fraction of an epoch, saves nothing).
    Every rank decides together (a boolean all-reduce each step: any rank's clock, any rank's
    SIGTERM), since a DeepSpeed save is collective and a lone saver would hang. Every rank writes
    its part of a DeepSpeed checkpoint, and every rank reads the checkpoint to resume, so with
    several ranks the folder must be one folder for all of them (a shared filesystem across
    nodes): checked when training starts, where a folder some rank cannot see is an
    `UnsharedFolder` error on every rank.
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
        self._at_step_end = True  # whether the last training batch ended an optimizer step

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit" and trainer.world_size > 1:
            check_shared_folder(trainer, self.path.parent)

    def on_train_start(self, trainer, pl_module) -> None:
        self._saved_step = trainer.global_step  # a resumed run's is on disk
        self._step_ends.start(trainer)
        self._at_step_end = True
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
        self._at_step_end = self._step_ends(trainer)
        if not self._at_step_end:
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
        if not trainer.sanity_checking and trainer.state.fn == "fit" and self._at_step_end:
            self.save(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        self.save(trainer)

    def on_exception(self, trainer, pl_module, exception) -> None:
        if isinstance(exception, SIGTERMException) and not self.terminated:
            # Lightning stopped the run itself (SIGTERM during validation, say). One rank can
            # save alone, at a step boundary; several may have stopped at different points,
            # where a collective save would hang: they keep the last scheduled checkpoint.
            self.terminated = True
            if trainer.world_size == 1 and self._at_step_end:
                self.save(trainer)


class UnsharedFolder(FolderError):
    """The checkpoint folder is not one folder for all ranks (no shared filesystem)."""


def check_shared_folder(trainer: L.Trainer, folder: Path) -> None:
    """Raise `UnsharedFolder` on every rank unless every rank sees the file that global rank 0
    writes into `folder` (a collective: every rank calls it)."""
    strategy = trainer.strategy
    token = strategy.broadcast(uuid.uuid4().hex if trainer.is_global_zero else None, src=0)
    probe = folder / f".shared-{token}"
    if trainer.is_global_zero:
        try:  # a failure here must not leave the other ranks waiting at the barrier
            folder.mkdir(parents=True, exist_ok=True)
            probe.write_text(token)
        except OSError:
            pass  # rank 0 then cannot read it either: reported below
    strategy.barrier("shared-folder-written")
    seen = _reads(probe, token, tries=3)
    missing = torch.tensor([0.0 if seen else 1.0], device=strategy.root_device)
    blind = int(strategy.reduce(missing, reduce_op=ReduceOp.SUM).item())
    strategy.barrier("shared-folder-read")
    if trainer.is_global_zero:
        probe.unlink(missing_ok=True)
    if blind:
        raise UnsharedFolder(
            f"{folder} is not one folder for all ranks: {blind} of {trainer.world_size} ranks "
            f"cannot read the file rank 0 wrote there (rank {trainer.global_rank}, on "
            f"{socket.gethostname()}, {'can' if seen else 'cannot'}). Every rank writes its part "
            "of each checkpoint there and reads it to resume: put `out` on a filesystem all "
            "nodes share (NFS, Lustre, ...)"
        )


def _reads(path: Path, text: str, tries: int, wait_s: float = 1.0) -> bool:
    """Whether `path` holds `text`, looking again after `wait_s` (a network filesystem may show
    another node's new file a moment late)."""
    for attempt in range(tries):
        try:
            if path.read_text() == text:
                return True
        except OSError:
            pass
        if attempt + 1 < tries:
            time.sleep(wait_s)
    return False


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
    """Stop with a clear message on a NaN/inf loss or a collapsed fp16 loss scale; log the loss
    scale (`train/loss_scale`, fp16 only) and say every step that DeepSpeed skips.

    The loss's finiteness is accumulated on the device every micro-batch (no sync); the flag and
    the scale are read once per logging interval (every 50 steps when logging is off), before
    every checkpoint save (a diverged model is never saved over a good one) and at the end of
    training. All ranks decide together (one all-reduce per check), so they stop together.

    A step DeepSpeed skips for an fp16 overflow (its gradients held inf/NaN at the current loss
    scale) is said on rank 0 in one line with the step and the new scale (at most 5 lines at
    once, then one a minute; a later line counts those held back), and written to the loggers
    at that step as `train/skipped_steps` (the run's count so far) with `train/loss_scale`: the
    run report counts them. DeepSpeed's skip counter is a host integer: reading it costs no sync.

    Args:
        min_scale: The fp16 loss scale at or below which training stops.
    """

    def __init__(self, min_scale: float = 1.0) -> None:
        self.min_scale = min_scale
        self._nonfinite: torch.Tensor | None = None  # on the device: a bad loss since the check
        self._since = 0
        self._skipped = 0  # DeepSpeed's skipped steps, as last seen
        self._say = _RateLimitedWarning(burst=5, every_s=60.0)
        self._step_ends = _StepEnds()

    def on_train_start(self, trainer, pl_module) -> None:
        self._step_ends.start(trainer)
        self._nonfinite, self._since = None, trainer.global_step
        self._skipped = _skipped_steps(trainer) or 0  # a resumed engine's count is restored

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            bad = ~torch.isfinite(loss.detach()).all()  # stays on the device
            self._nonfinite = bad if self._nonfinite is None else self._nonfinite | bad
        if not self._step_ends(trainer):
            return
        skipped = self._note_skipped_steps(trainer)
        every = trainer.log_every_n_steps
        if _logs_now(trainer) or (not every and trainer.global_step % 50 == 0):
            scale = self.check(trainer)
            if scale is not None:
                metrics = {"train/loss_scale": scale}
                if skipped is not None:
                    metrics["train/skipped_steps"] = float(skipped)
                pl_module.log_dict(metrics, on_step=True, batch_size=1)

    def _note_skipped_steps(self, trainer) -> int | None:
        """Say the steps DeepSpeed skipped since the last look; returns its count so far (None
        without DeepSpeed fp16)."""
        skipped = _skipped_steps(trainer)
        if skipped is None or skipped == self._skipped:
            return skipped
        new, self._skipped = skipped - self._skipped, skipped
        if not trainer.is_global_zero:
            return skipped
        scale = _loss_scale(trainer)
        step = trainer.global_step  # the step just skipped (DeepSpeed still counts it)
        what = "step was" if new == 1 else f"{new} steps were"
        now = f", loss scale now {scale:g}" if scale is not None else ""
        self._say(
            f"fp16 overflow at step {step}: the {what} skipped (gradients held inf/NaN)"
            f"{now}; {skipped} skipped so far"
        )
        # Straight to the loggers, at the row Lightning gives this step's metrics (its step
        # index counts from 0), whether or not this is a logging step: the report counts them.
        metrics = {"train/skipped_steps": float(skipped)}
        if scale is not None:
            metrics["train/loss_scale"] = scale
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step - 1)
        return skipped

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        # Saves during fit only (every rank saves then); not one a user makes afterwards.
        running = trainer.state.status == "running" and trainer.state.fn == "fit"
        if running and not trainer.sanity_checking:
            self.check(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        self._say_held_back()
        self.check(trainer)

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._say_held_back()

    def _say_held_back(self) -> None:
        held, self._say.held = self._say.held, 0
        if held:
            log.warning(
                f"{held} more fp16 overflow{'s' if held > 1 else ''} not shown one by one; "
                f"{self._skipped} steps skipped in all"
            )

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


def _deepspeed_engine(trainer: L.Trainer):
    """The DeepSpeed engine of a DeepSpeed strategy once set up, else None."""
    return getattr(trainer.strategy, "deepspeed_engine", None)


def _skipped_steps(trainer) -> int | None:
    """DeepSpeed fp16's count of skipped (overflowed) steps, a host integer; None otherwise."""
    engine = _deepspeed_engine(trainer)
    if engine is None or not engine.fp16_enabled():
        return None
    return int(engine.skipped_steps)


class _RateLimitedWarning:
    """`log.warning`, at most `burst` lines at once, then one every `every_s` seconds; the next
    line said after some were held back counts them (`held`: how many are waiting to be
    counted)."""

    def __init__(self, burst: int, every_s: float) -> None:
        self.burst, self.every_s = burst, every_s
        self._tokens, self._at, self.held = float(burst), time.monotonic(), 0

    def __call__(self, line: str) -> None:
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._at) / self.every_s)
        self._at = now
        if self._tokens < 1:
            self.held += 1
            return
        self._tokens -= 1
        if self.held:
            line += f" ({self.held} more not shown)"
            self.held = 0
        log.warning(line)


def _loss_scale(trainer) -> float | None:
    engine = _deepspeed_engine(trainer)
    if engine is not None and hasattr(engine, "optimizer"):
        if not engine.fp16_enabled():
            return None  # bf16/fp32 optimizers report a constant scale of 1: nothing to guard
        scale = getattr(engine.optimizer, "cur_scale", None)
        return float(scale) if scale is not None else None
    scaler = getattr(trainer.precision_plugin, "scaler", None)
    return float(scaler.get_scale()) if scaler is not None and scaler.is_enabled() else None


class GradNorm(L.Callback):
    """Log the global L2 norm of the trainable gradients before clipping, `train/grad_norm`, on
    every logging step (as HF Trainer and LLaMA-Factory report `grad_norm`).

    Without DeepSpeed it is taken in `on_before_optimizer_step`, where the gradients are whole
    (DDP has averaged them over ranks), unscaled (AMP) and not yet clipped: on the device, on
    logging steps only. DeepSpeed computes the same norm itself for its clipping, over every
    rank's partition of the gradients, unscaled; it is read after the step
    (`get_global_grad_norm`). With the gradient-accumulation scale fixed (`NifDeepSpeedStrategy`)
    the two are the same number: tested on CPU ranks for ZeRO-2 and ZeRO-3.
    """

    def __init__(self) -> None:
        self._step_ends = _StepEnds()

    def on_train_start(self, trainer, pl_module) -> None:
        self._step_ends.start(trainer)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if _deepspeed_engine(trainer) is not None or not _logs_now(trainer):
            return
        grads = [p.grad for group in optimizer.param_groups for p in group["params"]]
        grads = [g.detach() for g in grads if g is not None]
        if grads:
            norms = [n.float() for n in torch._foreach_norm(grads)]  # one launch per dtype
            norm = torch.linalg.vector_norm(torch.stack(norms))
            pl_module.log("train/grad_norm", norm, on_step=True, batch_size=1)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        engine = _deepspeed_engine(trainer)
        if engine is None or not (self._step_ends(trainer) and _logs_now(trainer)):
            return
        # What DeepSpeed computed in its step (a device tensor under ZeRO; inf at a step it
        # skipped for an fp16 overflow), read by Lightning when it writes the logs.
        norm = engine.get_global_grad_norm()
        if norm is not None:
            pl_module.log("train/grad_norm", norm, on_step=True, batch_size=1)


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
