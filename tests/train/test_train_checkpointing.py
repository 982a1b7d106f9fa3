"""Activation checkpointing (`model.gradient_checkpointing`): the same loss and LoRA gradients as
without it, with PEFT, packed attention, the fused LoRA op and LoRA dropout all on."""

from __future__ import annotations

import pytest
import torch

from nif_lightning.config import LoraConfig
from nif_lightning.module import NifLoraModule
from nif_lightning.packing import collate_packed, tokenize_vanilla


def _packed_batch():
    g = torch.Generator().manual_seed(0)
    samples = []
    for prompt_len, response_len in ((30, 20), (12, 41), (25, 9)):
        ids = torch.randint(3, 500, (prompt_len + response_len,), generator=g).tolist()
        samples.append(tokenize_vanilla(ids[:prompt_len], ids[prompt_len:], 1, 256))
    return collate_packed(samples)["inputs"]


def _loss_and_grads(tiny, checkpointing: bool, dropout: float):
    module = NifLoraModule(
        str(tiny), LoraConfig(dropout=dropout), gradient_checkpointing=checkpointing, seed=3
    )
    module.configure_model()
    for name, p in module.model.named_parameters():
        if "lora_B" in name:  # B starts at zero: give the A gradients something to carry
            torch.nn.init.normal_(p, std=0.05, generator=torch.Generator().manual_seed(len(name)))
    torch.manual_seed(11)  # the same dropout masks in both runs
    loss, _, _ = module.lm_loss(_packed_batch())
    loss.backward()
    grads = {n: p.grad for n, p in module.model.named_parameters() if p.requires_grad}
    return module, loss.detach(), grads


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_checkpointing_changes_nothing_but_memory(tiny, dropout):
    plain, loss, grads = _loss_and_grads(tiny, False, dropout)
    ckpt, loss_ckpt, grads_ckpt = _loss_and_grads(tiny, True, dropout)
    assert ckpt.model.is_gradient_checkpointing and not plain.model.is_gradient_checkpointing
    torch.testing.assert_close(loss_ckpt, loss, atol=1e-6, rtol=1e-6)
    assert grads.keys() == grads_ckpt.keys() and len(grads) == 2 * 7 * 2
    for name, g in grads.items():
        assert g.abs().sum() > 0, name
        # The recomputation runs the same fp32 ops on the same inputs (and restores the RNG for
        # dropout): only summation order may differ.
        torch.testing.assert_close(grads_ckpt[name], g, atol=1e-6, rtol=1e-5, msg=name)


def test_dropout_is_on_while_training(tiny):
    """`from_pretrained` returns eval mode and Lightning keeps modules' modes: the module must
    hand the Trainer a model in train mode, or LoRA dropout never applies."""
    module = NifLoraModule(str(tiny), LoraConfig(dropout=0.1))
    module.configure_model()
    assert all(m.training for m in module.model.modules())
