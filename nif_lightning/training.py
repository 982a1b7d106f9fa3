"""One `nif train` run: build data, module, strategy and callbacks; fit; export; merge.

Layout of OUT: `adapter/` (PEFT), `merged/` (safetensors + tokenizer), `checkpoints/` (Lightning,
LoRA params only, `last.ckpt` for `--resume`), `logs/` (CSV logger).
"""

from __future__ import annotations

from pathlib import Path

from nif_lightning.config import TrainConfig


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


def run_training(cfg: TrainConfig, *, resume: bool = False) -> Path:
    """Train per `cfg`; returns OUT."""
    import lightning as L

    from nif_lightning.data import DataConfig, NifDataModule
    from nif_lightning.merge import merge_adapter
    from nif_lightning.module import NifLoraModule

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.model.tiny and not (Path(cfg.model.path) / "config.json").is_file():
        from nif_lightning.tiny_model import save_tiny_model

        save_tiny_model(cfg.model.path, seed=cfg.seed)
    L.seed_everything(cfg.seed, workers=True)
    # Data first: an empty or foreign folder should fail before the model is loaded.
    datamodule = NifDataModule(cfg.data.dir, cfg.model.path, DataConfig(**cfg.data.options))
    module = NifLoraModule(
        cfg.model.path,
        cfg.lora,
        cfg.optim,
        dtype=cfg.model.dtype,
        fused_lora=cfg.model.fused_lora,
        packed_attention=cfg.model.packed_attention,
        gradient_checkpointing=cfg.model.gradient_checkpointing is True,
        seed=cfg.seed,
    )
    trainer = build_trainer(cfg, out)
    ckpt = str(out / "checkpoints" / "last.ckpt") if resume else None
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt)
    if trainer.is_global_zero:
        merge_adapter(cfg.model.path, out / "adapter", out / "merged")
    return out
