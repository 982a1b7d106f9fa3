"""One `nif train` run: plan its memory, build data, module, strategy, loggers and callbacks; fit.
Export and merge are callbacks (`AdapterExport`, `AdapterMerge`), as in a lab's own Trainer.

On CUDA the run is planned first (`memory.plan_memory`, what `nif plan` prints) for this
machine's GPU: the plan is printed, `model.gradient_checkpointing: auto` becomes what the plan
needs, and a plan that does not fit is refused (with the knobs that would make it fit) unless
forced: an out-of-memory error an hour into loading a 70B model is the failure this prevents.

Layout of OUT: `adapter/` (PEFT), `merged/` (safetensors + tokenizer), `checkpoints/` (Lightning,
LoRA params only, `last.ckpt` for `--resume`: a file, or a folder under DeepSpeed), `logs/` (CSV
metrics), with `trainer.logger` set also `tensorboard/`, `wandb/` or `mlruns/`, and with
`trainer.profiler` set, `profile/` (an op table; with "pytorch" also a Chrome trace).

One run per OUT: rank 0 holds an exclusive lock on `OUT/.train.lock` for the whole run (fit and
merge), and a folder that already holds checkpoints is refused unless the run resumes from them
(`--resume`; `nif run` resumes by itself; a SLURM job that was requeued, too).
`checkpoints/last.ckpt` is written on a schedule of its own (`trainer.checkpoint_every_n_steps`,
`trainer.checkpoint_every_minutes`), after each validation, at the end, and on SIGTERM, after
which the run exits with `TrainingTerminated` (code 143, like a process killed by SIGTERM).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from data_gen.schema import ConfigError
from data_gen.shards import DirLock
from data_gen.store import FolderError
from nif_lightning.config import TrainConfig
from nif_lightning.memory import PlanError  # memory.py imports torch only inside functions


class PlanDoesNotFit(PlanError):
    """The memory plan of a run exceeds its GPU (refused before anything heavy starts)."""


class OutputFolderInUse(FolderError):
    """OUT is being trained into by another process, or holds an earlier run's checkpoints and
    this run does not resume (bad input: `nif train` exits 2)."""


class TrainingTerminated(SystemExit):
    """SIGTERM stopped training after `last.ckpt` was saved; exits with 143 (128 + SIGTERM).
    A `SystemExit`, so that a process ends with that code whoever called `run_training`."""

    def __init__(self, message: str) -> None:
        super().__init__(143)
        self.message = message

    def __str__(self) -> str:
        return self.message


class TrainLock(DirLock):
    """`OUT/.train.lock`: one training run per OUT (`DirLock`, which names its holder).

    Taken by global rank 0 only: the ranks Lightning launches (and those of other nodes) are the
    same run.
    """

    name = ".train.lock"

    def busy(self, holder: str) -> Exception:
        return OutputFolderInUse(
            f"{self.path.parent} is being trained into by {holder or 'another process'} "
            f"(lock {self.path}); "
            "wait for it to finish or choose another `--out`"
        )


def _default_sigterm():
    """Set SIGTERM's default action; returns the handler it replaced (None off the main thread,
    where signals cannot be set)."""
    try:
        return signal.signal(signal.SIGTERM, signal.SIG_DFL)
    except ValueError:
        return None


def checkpoint_to_resume(out: str | Path, *, resume: bool) -> Path | None:
    """The checkpoint this run starts from, or None for a fresh start.

    Checkpoints in OUT (`checkpoints/*.ckpt`, Lightning's SLURM `hpc_ckpt_*.ckpt`) without
    `resume` raise `OutputFolderInUse`: starting over there would mix two runs. A job SLURM has
    requeued (`SLURM_RESTART_COUNT` > 0) runs its command again unchanged, so it resumes. The
    newest of `last.ckpt` and the SLURM checkpoints wins.
    """
    out = Path(out)
    found = sorted((out / "checkpoints").glob("*.ckpt")) + sorted(out.glob("hpc_ckpt_*.ckpt"))
    # `.partial-last.ckpt`: a save a kill cut short, not a checkpoint (the next save replaces it).
    found = [p for p in found if not p.name.startswith(".")]
    if not found:
        return None
    requeued = int(os.environ.get("SLURM_RESTART_COUNT") or 0) > 0
    if not (resume or requeued):
        names = ", ".join(str(p.relative_to(out)) for p in found[:3])
        raise OutputFolderInUse(
            f"{out} holds checkpoints of an earlier run ({names}); pass `--resume` to continue "
            "it, or choose a new `--out` folder to start over"
        )
    candidates = [out / "checkpoints" / "last.ckpt", *out.glob("hpc_ckpt_*.ckpt")]
    candidates = [p for p in candidates if p.exists()]
    return max(candidates, key=lambda p: p.stat().st_mtime) if candidates else None


def is_global_zero() -> bool:
    """Rank 0 of the whole job, as Lightning reads it from the launcher's environment (RANK,
    SLURM_PROCID, ...), also before the process group exists."""
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def plan_gate(cfg: TrainConfig, *, force: bool = False, gpu=None, log=print) -> bool:
    """Plan `cfg` on this machine's GPU (or `gpu`, a `memory.GpuSpec`); print the plan on rank 0;
    raise `PlanDoesNotFit` unless it fits or `force`. Returns whether activations are
    checkpointed: `auto` as the plan resolved it, and off on a CPU, where nothing is planned."""
    import torch

    setting = cfg.model.gradient_checkpointing
    if gpu is None and not torch.cuda.is_available():
        return setting is True
    from nif_lightning.memory import GpuSpec, plan_memory

    devices = cfg.trainer.devices
    if devices == "auto":
        devices = torch.cuda.device_count() if gpu is None else 1
    try:
        plan = plan_memory(cfg, gpu or GpuSpec.from_cuda(0), devices=devices)
    except Exception as err:  # an architecture the probe cannot run, say
        reason = f"{type(err).__name__}: {err}"
        if not force:
            raise PlanError(
                f"could not plan the memory of this run ({reason}); `--force` trains unplanned"
            ) from err
        if is_global_zero():
            log(f"warning: no memory plan ({reason}); training unplanned, as forced")
        return setting in (True, "auto")  # unplanned: the safe side
    if is_global_zero():
        log(plan.table())
    if not plan.fits and not force:
        fixes = [s for s in plan.suggestions if s.fits]
        hint = "; ".join(", ".join(f"{k}: {v}" for k, v in s.settings.items()) for s in fixes)
        raise PlanDoesNotFit(
            f"the memory plan needs {plan.total / 1e9:.1f} GB per GPU, the {plan.gpu} has "
            f"{plan.capacity_bytes / 1e9:.1f} GB"
            + (f"; this would fit: {hint}" if hint else "; no single setting makes it fit")
            + ". Pass `--force` to start anyway."
        )
    return plan.gradient_checkpointing


def build_profiler(kind: str, out: Path):
    """`trainer.profiler` as Lightning's profiler writing into OUT/profile/ (None for "none").

    "pytorch" records CPU and CUDA activity for one window of steps per stage (training,
    validation: wait 1, warmup 1, active 3), so a trace covers 3 steps whatever the run's
    length. Each window writes a Chrome trace (`<stage>-rank<R>.pt.trace.json`, for
    chrome://tracing or Perfetto) and an op table (`<stage>-rank<R>-ops.txt`, `key_averages`
    by total time). Our LoRA op shows as `nif::lora_fwd` / `nif::lora_bwd`, its work as
    `nif::lora_fwd.<backend>` (NVTX ranges of that name too)."""
    if kind == "none":
        return None
    from lightning.pytorch.profilers import PyTorchProfiler, SimpleProfiler

    dirpath = out / "profile"
    if kind == "simple":
        return SimpleProfiler(dirpath=dirpath, filename="profile")
    import torch

    def write_window(prof) -> None:  # at the end of each stage's window
        # Lightning's schedule knows the step hook that closed the window (private, hence the
        # fallback): "...Strategy.training_step" -> "training".
        action = getattr(getattr(profiler, "_schedule", None), "_current_action", None)
        stage = (action or "window").rsplit(".", 1)[-1].removesuffix("_step")
        name = f"{stage}-rank{profiler.local_rank}"
        dirpath.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(dirpath / f"{name}.pt.trace.json"))
        sort = "cuda_time_total" if torch.cuda.is_available() else "cpu_time_total"  # inclusive
        table = prof.key_averages().table(sort_by=sort, row_limit=100)
        (dirpath / f"{name}-ops.txt").write_text(table + "\n", encoding="utf-8")

    # An explicit schedule: Lightning replaces its default one (the same) by "record every
    # step" when an epoch has fewer than 5 batches.
    profiler = PyTorchProfiler(
        dirpath=dirpath,
        filename="summary",  # Lightning's own table of the last window: a file, not the log
        on_trace_ready=write_window,
        schedule=torch.profiler.schedule(wait=1, warmup=1, active=3, repeat=1),
    )
    return profiler


_LOGGER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


def build_loggers(setting: str | dict, out: Path) -> list:
    """`trainer.logger` as Lightning loggers: always the CSV one (OUT/logs/version_N/metrics.csv,
    which the report reads), then the chosen one. A logger that cannot be built (its package
    missing, a wrong class path or init argument) is a `ConfigError` naming `trainer.logger`,
    raised before the model is loaded."""
    from lightning.pytorch.loggers import CSVLogger

    loggers = [CSVLogger(out, name="logs")]
    if setting == "csv":
        return loggers
    name = setting if isinstance(setting, str) else str(setting.get("class_path"))
    try:
        loggers.append(_chosen_logger(setting, out))
    except ImportError as err:
        package = _LOGGER_PACKAGES.get(name)
        hint = f" (pip install {package})" if package else ""
        problem = f"`trainer.logger: {name}` cannot be used{hint}: {err}"
        raise ConfigError([problem], "") from None
    except (AttributeError, TypeError, ValueError) as err:
        raise ConfigError([f"`trainer.logger: {name}` cannot be built: {err}"], "") from None
    return loggers


def _chosen_logger(setting: str | dict, out: Path):
    from lightning.pytorch import loggers

    out = out.absolute()
    if setting == "tensorboard":
        # Lightning raises ModuleNotFoundError when neither tensorboard nor tensorboardX is there.
        return loggers.TensorBoardLogger(out, name="tensorboard")
    if setting == "wandb":
        import wandb  # noqa: F401 - a clear ImportError here, not deep in Lightning

        # wandb reads WANDB_MODE itself: `offline` writes OUT/wandb/ with no network.
        return loggers.WandbLogger(save_dir=str(out), project="nif-lightning", name=out.name)
    if setting == "mlflow":
        import mlflow  # noqa: F401

        # MLflow 3 refuses its file store unless allowed; a server or a database is a class path
        # away (`lightning.pytorch.loggers.MLFlowLogger` with `tracking_uri`).
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        return loggers.MLFlowLogger(
            experiment_name="nif-lightning",
            run_name=out.name,
            tracking_uri=(out / "mlruns").as_uri(),  # a local file store
        )
    import importlib

    if isinstance(setting, str):
        class_path, init_args = setting, {}
    else:
        class_path, init_args = setting["class_path"], setting.get("init_args") or {}
    module_name, _, class_name = class_path.rpartition(".")
    return getattr(importlib.import_module(module_name), class_name)(**init_args)


def build_trainer(cfg: TrainConfig, out: Path):
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from nif_lightning.callbacks import (
        AdapterExport,
        AdapterMerge,
        GradNorm,
        LastCheckpoint,
        LossScaleGuard,
        Throughput,
        progress_bar,
    )
    from nif_lightning.strategy import build_strategy

    t = cfg.trainer
    return L.Trainer(
        strategy=build_strategy(t),
        devices=t.devices,
        num_nodes=t.num_nodes,
        precision=t.precision,
        max_steps=t.max_steps,
        max_epochs=-1 if t.max_steps > 0 else t.max_epochs,  # a step budget wins
        accumulate_grad_batches=t.accumulate_grad_batches,
        # An int interval is optimizer steps, across epochs (packed epochs can be shorter than
        # the interval); Lightning counts micro-batches, so validation (and the checkpoint after
        # it) falls on a step boundary. A float stays a fraction of each epoch.
        val_check_interval=(
            t.val_check_interval * t.accumulate_grad_batches
            if isinstance(t.val_check_interval, int)
            else t.val_check_interval
        ),
        check_val_every_n_epoch=None if isinstance(t.val_check_interval, int) else 1,
        log_every_n_steps=t.log_every_n_steps,
        gradient_clip_val=t.gradient_clip_val,
        default_root_dir=out,
        profiler=build_profiler(t.profiler, out),
        logger=build_loggers(t.logger, out),
        callbacks=[
            # First: its check before each save stops a diverged model from reaching any file.
            LossScaleGuard(),
            # The best by validation loss; `last.ckpt` is LastCheckpoint's, on its own schedule.
            ModelCheckpoint(out / "checkpoints", save_top_k=1, monitor="val/loss"),
            LastCheckpoint(
                out / "checkpoints" / "last.ckpt",
                every_n_steps=t.checkpoint_every_n_steps,
                every_minutes=t.checkpoint_every_minutes,
            ),
            AdapterExport(out / "adapter"),
            AdapterMerge(out / "merged"),  # rank 0, once fit is over (not after SIGTERM)
            GradNorm(),
            Throughput(),
            progress_bar(),
        ],
    )


def run_training(
    cfg: TrainConfig,
    *,
    resume: bool = False,
    force: bool = False,
    checkpointing: bool | None = None,
) -> Path:
    """Train per `cfg`; returns OUT. `force` starts a run whose memory plan does not fit;
    `checkpointing` is the gate's answer when the caller has planned already (`nif run` plans
    before `gen`), else the run is planned here.

    Raises `OutputFolderInUse` when another run holds OUT or OUT holds checkpoints and not
    `resume`, and `TrainingTerminated` (exit 143) after SIGTERM saved `last.ckpt`."""
    out = Path(cfg.out)
    ckpt = checkpoint_to_resume(out, resume=resume)  # every rank: none starts a mixed run
    if not is_global_zero():
        # A rank that sees no checkpoint to resume while rank 0 does is on another filesystem:
        # it goes on to LastCheckpoint's check, where every rank stops together, rather than
        # stopping alone here while the others wait for it at the rendezvous.
        return _train(cfg, out, ckpt, force, checkpointing)
    if resume and ckpt is None:
        raise FileNotFoundError(f"`--resume`: no checkpoint in {out / 'checkpoints'}")
    with TrainLock(out):
        ckpt = checkpoint_to_resume(out, resume=resume)  # again, now that no one else writes
        return _train(cfg, out, ckpt, force, checkpointing)


def _train(cfg: TrainConfig, out: Path, ckpt: Path | None, force, checkpointing) -> Path:
    import lightning as L
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from nif_lightning.data import NifDataModule
    from nif_lightning.module import NifLoraModule

    out.mkdir(parents=True, exist_ok=True)
    if cfg.model.tiny and not (Path(cfg.model.path) / "config.json").is_file():
        from nif_lightning.tiny_model import save_tiny_model

        save_tiny_model(cfg.model.path, seed=cfg.seed)
    if checkpointing is None:
        checkpointing = plan_gate(cfg, force=force)
    L.seed_everything(cfg.seed, workers=True)
    # Data first: an empty or foreign folder should fail before the model is loaded.
    datamodule = NifDataModule(cfg.data.dir, cfg.model.path, cfg.data)
    module = NifLoraModule(
        cfg.model.path,
        cfg.lora,
        cfg.optim,
        dtype=cfg.model.dtype,
        fused_lora=cfg.model.fused_lora,
        packed_attention=cfg.model.packed_attention,
        gradient_checkpointing=checkpointing,
        seed=cfg.seed,
    )
    trainer = build_trainer(cfg, out)
    # During fit SIGTERM is Lightning's alone (it composes with a handler already set, and the
    # CLI's turns SIGTERM into Ctrl-C, which Lightning ends with exit 1 and no checkpoint).
    previous = _default_sigterm()
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(ckpt) if ckpt else None)
    except SIGTERMException:
        message = (
            f"terminated (SIGTERM) at step {trainer.global_step}; {out / 'checkpoints'} holds "
            "the last checkpoint: re-run the same command with `--resume` to continue"
        )
        if trainer.is_global_zero:
            print(message, file=sys.stderr)
        raise TrainingTerminated(message) from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return out
