"""The DeepSpeed fp16 strategy for real (ZeRO-2, dynamic loss scaling) on one CUDA GPU."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_fp16_trains_and_exports(tmp_path, stage):
    pytest.importorskip("deepspeed")
    import lightning as L
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from nif_lightning.callbacks import AdapterExport, LossScaleGuard, Throughput
    from nif_lightning.config import OptimConfig
    from nif_lightning.module import NifLoraModule
    from nif_lightning.strategy import StrategyConfig, build_strategy
    from nif_lightning.tiny_model import save_tiny_model

    tiny = save_tiny_model(tmp_path / "tiny")
    ids = torch.randint(2, 500, (4, 32))
    labels = ids.clone()
    labels[:, :16] = -100
    batch = {
        "inputs": {"input_ids": ids, "labels": labels},
        "stats": {"tokens": 128, "slots": 128, "examples": 4, "loss_tokens": 64},
    }
    loader = torch.utils.data.DataLoader([batch] * 8, batch_size=None)
    module = NifLoraModule(str(tiny), optim=OptimConfig(lr=1e-3), dtype="float16")
    strategy = build_strategy(
        StrategyConfig(strategy="deepspeed", zero_stage=stage, precision="16-mixed")
    )
    trainer = L.Trainer(
        accelerator="cuda",
        devices=1,
        strategy=strategy,
        precision="16-mixed",
        max_steps=8,
        val_check_interval=4,  # validation too: ZeRO-3 never moves the module (its metrics)
        logger=False,
        enable_checkpointing=False,
        callbacks=[AdapterExport(tmp_path / "adapter"), LossScaleGuard(), Throughput()],
    )
    trainer.fit(module, train_dataloaders=loader, val_dataloaders=loader)
    assert trainer.global_step == 8
    assert trainer.strategy.config["fp16"]["initial_scale_power"] == 16
    # DeepSpeed fp16 trains half-precision LoRA params against fp32 master copies it owns.
    optimizer = trainer.strategy.deepspeed_engine.optimizer
    masters = getattr(optimizer, "fp32_partitioned_groups_flat", None)  # ZeRO-3
    masters = masters or optimizer.single_partition_of_fp32_groups  # ZeRO-2
    assert masters and all(m.dtype == torch.float32 for m in masters)
    assert {p.dtype for p in module.model.parameters() if p.requires_grad} == {torch.float16}
    peft = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny), tmp_path / "adapter"
    )
    assert any(p.abs().sum() > 0 for n, p in peft.named_parameters() if "lora_B" in n)
