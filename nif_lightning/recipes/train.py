"""One `nif train` run: plan its memory, build data, module, strategy and callbacks; fit; export;
merge.

On CUDA the run is planned first (`memory.plan_memory`, what `nif plan` prints) for this
machine's GPU: the plan is printed, `model.gradient_checkpointing: auto` becomes what the plan
needs, and a plan that does not fit is refused (with the knobs that would make it fit) unless
forced: an out-of-memory error an hour into loading a 70B model is the failure this prevents.

Layout of OUT: `adapter/` (PEFT), `merged/` (safetensors + tokenizer), `checkpoints/` (Lightning,
LoRA params only, `last.ckpt` for `--resume`: a file, or a folder under DeepSpeed), `logs/`.
"""

from __future__ import annotations

from pathlib import Path

from nif_lightning.config import TrainConfig
from nif_lightning.memory import PlanError  # memory.py imports torch only inside functions


class PlanDoesNotFit(PlanError):
    """The memory plan of a run exceeds its GPU (refused before anything heavy starts)."""


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


def build_trainer(cfg: TrainConfig, out: Path):
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    from nif_lightning.callbacks import AdapterExport, LossScaleGuard, Throughput
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
        val_check_interval=t.val_check_interval,
        # An int interval counts optimizer-visible batches across epochs (packed epochs can be
        # shorter than the interval); a float stays a fraction of each epoch.
        check_val_every_n_epoch=None if isinstance(t.val_check_interval, int) else 1,
        log_every_n_steps=t.log_every_n_steps,
        gradient_clip_val=t.gradient_clip_val,
        default_root_dir=out,
        logger=CSVLogger(out, name="logs"),
        callbacks=[
            ModelCheckpoint(out / "checkpoints", save_last=True, save_top_k=1, monitor="val/loss"),
            AdapterExport(out / "adapter"),
            LossScaleGuard(),
            Throughput(),
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
    before `gen`), else the run is planned here."""
    import lightning as L

    from nif_lightning.data import NifDataModule
    from nif_lightning.merge import merge_adapter
    from nif_lightning.module import NifLoraModule

    out = Path(cfg.out)
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
    ckpt = str(out / "checkpoints" / "last.ckpt") if resume else None
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt)
    if trainer.is_global_zero:
        merge_adapter(cfg.model.path, out / "adapter", out / "merged")
    return out
