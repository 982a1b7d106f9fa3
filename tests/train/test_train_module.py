"""The LightningModule on CPU with the tiny model: loss falls, the exported adapter loads with
stock PEFT and gives the trained module's logits, frozen params stay out of checkpoints, resume."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from nif_lightning.callbacks import AdapterExport, LossScaleGuard, Throughput, flops_per_token
from nif_lightning.config import LoraConfig, OptimConfig
from nif_lightning.module import NifLoraModule


def _batches(n: int, seed: int = 0):
    """Batch-contract batches: a fixed random prompt then a learnable repeated response."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(2, 500, (4, 24), generator=g)
        ids[:, 12:] = ids[:, :1]  # response = repeat of the first token: quickly learnable
        labels = ids.clone()
        labels[:, :12] = -100
        out.append(
            {
                "inputs": {
                    "input_ids": ids,
                    "attention_mask": torch.ones_like(ids),
                    "labels": labels,
                },
                "stats": {
                    "tokens": ids.numel(),
                    "slots": ids.numel(),
                    "examples": 4,
                    "loss_tokens": int((labels != -100).sum()),
                },
            }
        )
    return out


class _Data(L.LightningDataModule):
    def train_dataloader(self):
        return torch.utils.data.DataLoader(_batches(8), batch_size=None)

    def val_dataloader(self):
        return torch.utils.data.DataLoader(_batches(2, seed=1), batch_size=None)


def _trainer(out, steps, **kw):
    return L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        default_root_dir=out,
        callbacks=[
            AdapterExport(out / "adapter"),
            LossScaleGuard(),
            Throughput(),
            L.pytorch.callbacks.ModelCheckpoint(out / "ckpt", save_last=True),
        ],
        limit_val_batches=2,
        val_check_interval=4,
        **kw,
    )


def test_training_lowers_loss_and_exports_a_stock_peft_adapter(tiny, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    module = NifLoraModule(
        str(tiny),
        LoraConfig(),
        OptimConfig(lr=3e-2, warmup_ratio=0.0),
        fused_lora=False,
        packed_attention=False,
    )
    module.configure_model()  # what the Trainer calls first
    trainable = [n for n, p in module.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert len(trainable) == 2 * 7 * 2  # A and B for 7 projections x 2 layers
    batch = _batches(8)[0]["inputs"]  # seen in training: memorisation must show
    with torch.no_grad():
        before = module.model(**batch).loss.item()
    _trainer(tmp_path, 16).fit(module, _Data())
    module.eval()
    with torch.no_grad():
        after = module.model(**batch).loss.item()
        logits = module.model(input_ids=batch["input_ids"]).logits
    assert after < before - 0.2, (before, after)
    assert {p.name for p in (tmp_path / "adapter").iterdir()} >= {
        "adapter_config.json",
        "adapter_model.safetensors",
    }
    peft = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny), tmp_path / "adapter"
    )
    with torch.no_grad():
        torch.testing.assert_close(
            peft(input_ids=batch["input_ids"]).logits, logits, atol=1e-5, rtol=1e-5
        )
    ckpt = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False, map_location="cpu")
    assert ckpt["state_dict"] and all("lora_" in k for k in ckpt["state_dict"])


def test_resume_continues_from_last_checkpoint(tiny, tmp_path):
    kw = {"fused_lora": False, "packed_attention": False}
    opt = OptimConfig(lr=3e-2, warmup_ratio=0.0)
    _trainer(tmp_path, 8).fit(NifLoraModule(str(tiny), optim=opt, **kw), _Data())
    resumed = NifLoraModule(str(tiny), optim=opt, **kw)
    trainer = _trainer(tmp_path, 12)
    trainer.fit(resumed, _Data(), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert trainer.global_step == 12
    b = [p for n, p in resumed.model.named_parameters() if "lora_B" in n][0]
    assert b.abs().sum() > 0  # trained weights came back, not a fresh (B = 0) adapter


def test_fp32_lora_on_fp16_backbone(tiny):
    module = NifLoraModule(str(tiny), dtype="float16", fused_lora=False, packed_attention=False)
    module.configure_model()
    for name, p in module.model.named_parameters():
        assert p.dtype == (torch.float32 if p.requires_grad else torch.float16), name


def test_bad_settings_name_the_key():
    with pytest.raises(ValueError, match="lora.r"):
        LoraConfig(r=0)
    with pytest.raises(ValueError, match="lora.targets"):
        LoraConfig(targets=["lm_head"])
    with pytest.raises(ValueError, match="optim.lr"):
        OptimConfig(lr=0)
    assert flops_per_token(10, 2) == 52


def test_lora_init_is_seeded_and_ignores_the_default_device(tiny):
    """Lightning builds the model under the accelerator's default device (CUDA); the LoRA init
    must still draw the same CPU numbers (it once failed there: a CPU generator, CUDA tensors)."""
    from nif_lightning.module import init_lora_weights

    module = NifLoraModule(str(tiny), seed=5, fused_lora=False, packed_attention=False)
    module.configure_model()
    first = {n: p.detach().clone() for n, p in module.model.named_parameters() if p.requires_grad}
    with torch.device("meta"):  # stands in for CUDA here: any default device but the CPU
        init_lora_weights(module.model, 5)
    for name, p in module.model.named_parameters():
        if p.requires_grad:
            assert p.device.type == "cpu"
            torch.testing.assert_close(p.detach(), first[name], atol=0, rtol=0)
    assert any(v.abs().sum() > 0 for n, v in first.items() if "lora_A" in n)
