"""`AdapterMerge` in a plain Lightning Trainer on CPU: the `lora-base` variant (`into=`) adds
exactly the delta stock PEFT merges into the base; a fit that fails merges nothing; a wrong
`into` fails before training. (`lora` into the base: tests/train/test_lightning_cli.py; under
ZeRO-3 on 2 ranks, through `nif train`: tests/train/test_train_deepspeed.py.)"""

from __future__ import annotations

import lightning as L
import pytest
import torch

from nif_lightning.callbacks import AdapterExport, AdapterMerge
from nif_lightning.config import LoraConfig, OptimConfig
from nif_lightning.module import NifLoraModule


def _batches(n: int):
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        ids = torch.randint(2, 500, (2, 16), generator=g)
        labels = ids.clone()
        labels[:, :8] = -100
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
        stats = {"tokens": ids.numel(), "slots": ids.numel(), "examples": 2, "loss_tokens": 16}
        out.append({"inputs": inputs, "stats": stats})
    return out


def _fit(tiny, out, callbacks, steps=3):
    module = NifLoraModule(
        str(tiny),
        LoraConfig(r=4, alpha=8),
        OptimConfig(lr=2e-2, warmup_ratio=0.0),
        fused_lora=False,
        packed_attention=False,
    )
    trainer = L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        default_root_dir=out,
        callbacks=callbacks,
    )
    loader = torch.utils.data.DataLoader(_batches(steps), batch_size=None)
    trainer.fit(module, train_dataloaders=loader)


def test_lora_base_adds_the_delta_peft_merges_into_the_base(tiny, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from nif_lightning.tiny_model import save_tiny_model

    other = save_tiny_model(tmp_path / "other", seed=1)  # same shapes, other weights
    out = tmp_path / "run"
    # Merge listed before the export: the merge does not depend on the callbacks' order.
    _fit(tiny, out, [AdapterMerge(out / "merged", into=str(other)), AdapterExport(out / "adapter")])

    base = AutoModelForCausalLM.from_pretrained(tiny).state_dict()
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny), out / "adapter")
    lora = peft.merge_and_unload().state_dict()
    target = AutoModelForCausalLM.from_pretrained(other).state_dict()
    merged = AutoModelForCausalLM.from_pretrained(out / "merged").state_dict()
    assert merged.keys() == target.keys()
    changed = [n for n in base if not torch.equal(lora[n], base[n])]
    assert len(changed) == 2 * 7  # 2 layers x 7 adapted linears
    for name in merged:
        # W_other + (what PEFT's merge adds to the base); fp32 rounding of two different sums.
        torch.testing.assert_close(
            merged[name] - target[name], lora[name] - base[name], atol=2e-6, rtol=0, msg=name
        )
    assert sorted(p.name for p in out.iterdir()) == ["adapter", "merged"]  # nothing staged left


class _Boom(RuntimeError):
    pass


class _FailAtStep(L.Callback):
    def on_train_batch_start(self, trainer, *args):
        if trainer.global_step == 2:
            raise _Boom("stop")


def test_a_fit_that_fails_merges_nothing(tiny, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(_Boom):
        _fit(tiny, out, [AdapterMerge(out / "merged"), _FailAtStep()])
    assert not out.exists() or not any(out.iterdir())


def test_a_wrong_into_fails_before_training(tiny, tmp_path):
    out = tmp_path / "run"
    seen = []

    class _Steps(L.Callback):
        def on_train_batch_start(self, trainer, *args):
            seen.append(trainer.global_step)

    with pytest.raises((ValueError, FileNotFoundError), match="AdapterMerge"):
        _fit(tiny, out, [AdapterMerge(out / "merged", into=str(tmp_path / "nope")), _Steps()])
    assert seen == []
