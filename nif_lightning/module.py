"""The LightningModule: a Hugging Face causal LM with PEFT LoRA on every linear layer but lm_head.

Batch contract (from the DataModule): `{"inputs": {forward kwargs incl. labels}, "stats":
{"tokens", "slots", "samples", "loss_tokens"}}`. The loss is the model's own shifted
cross-entropy on `labels` (-100 over the prompt: the `vanilla` template trains on the response
and EOS only). Only LoRA params train; they stay fp32 even when the backbone is fp16, so the
optimizer state is fp32 too (the fp16-on-V100 failure mode of DESIGN.md).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import lightning as L
import torch

log = logging.getLogger(__name__)

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class LoraSettings:
    """LoRA hyper-parameters (the paper: r 8, alpha 16, dropout 0, all linear but lm_head)."""

    r: int = 8
    """Rank of the update B @ A."""
    alpha: float = 16.0
    """Scale numerator: the update is multiplied by alpha / r."""
    dropout: float = 0.0
    """Dropout on the LoRA input."""
    targets: list[str] = field(default_factory=lambda: list(LORA_TARGETS))
    """Module names to adapt."""

    def __post_init__(self) -> None:
        if self.r <= 0:
            raise ValueError(f"`lora.r` must be > 0, got {self.r}")
        if self.alpha <= 0:
            raise ValueError(f"`lora.alpha` must be > 0, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"`lora.dropout` must be in [0, 1), got {self.dropout}")
        if not self.targets or "lm_head" in self.targets:
            raise ValueError(
                f"`lora.targets` must be non-empty and exclude lm_head, got {self.targets}"
            )


@dataclass
class OptimSettings:
    """AdamW with linear warmup then cosine decay to zero (the paper: lr 5e-5 cosine)."""

    lr: float = 5e-5
    """Peak learning rate."""
    weight_decay: float = 0.0
    """AdamW weight decay on LoRA params."""
    warmup_ratio: float = 0.03
    """Share of the total steps spent warming up linearly from 0."""

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"`optim.lr` must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"`optim.weight_decay` must be >= 0, got {self.weight_decay}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"`optim.warmup_ratio` must be in [0, 1), got {self.warmup_ratio}")


class NifLoraModule(L.LightningModule):
    """HF causal LM (hub id or local path) + LoRA; see the module docstring for the batch."""

    def __init__(
        self,
        model_name_or_path: str,
        lora: LoraSettings | None = None,
        optim: OptimSettings | None = None,
        *,
        dtype: str = "float32",
        fused_lora: bool = True,
        packed_attention: bool = True,
    ) -> None:
        super().__init__()
        if dtype not in _DTYPES:
            raise ValueError(f"`model.dtype` must be one of {list(_DTYPES)}, got {dtype!r}")
        self.model_name_or_path = str(model_name_or_path)
        self.lora = lora or LoraSettings()
        self.optim = optim or OptimSettings()
        self.dtype_name = dtype
        self.fused_lora = fused_lora
        self.packed_attention = packed_attention
        self.model = self._build_model()
        self.save_hyperparameters(ignore=["lora", "optim"])
        from torchmetrics.aggregation import MeanMetric

        # Token-weighted sums (MeanMetric with weights) so metrics are exact across batches/ranks.
        self.val_loss = MeanMetric()
        self.val_acc = MeanMetric()

    def _build_model(self):
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM

        base = AutoModelForCausalLM.from_pretrained(
            self.model_name_or_path, dtype=_DTYPES[self.dtype_name]
        )
        config = LoraConfig(
            r=self.lora.r,
            lora_alpha=self.lora.alpha,
            lora_dropout=self.lora.dropout,
            target_modules=list(self.lora.targets),
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(base, config)
        # LoRA params (and hence AdamW's state) in fp32 whatever the backbone dtype.
        for name, param in model.named_parameters():
            if param.requires_grad:
                param.data = param.data.float()
            elif "lora_" in name:
                raise RuntimeError(f"LoRA param {name} is frozen")  # PEFT contract changed
        self._switch_kernels(model)
        return model

    def _switch_kernels(self, model) -> None:
        # Optional speed-ups from sibling modules; each falls back to the stock path with a
        # logged reason, since correctness never depends on them.
        if self.fused_lora:
            try:
                from kernels import use_fused_lora

                n = use_fused_lora(model)
                log.info("fused LoRA kernel on %d layers", n)
            except Exception as err:  # ImportError, or a setup failure in the kernel package
                log.warning("fused LoRA kernels unavailable (%s); using PEFT's forward", err)
        if self.packed_attention:
            try:
                from nif_lightning.attention import use_packed_attention

                log.info("packed attention: %s", use_packed_attention(model))
            except Exception as err:
                log.warning("packed attention unavailable (%s); using the model's default", err)

    # ---- counts used by the throughput callback (4N + 6P FLOPs per token) ----
    def param_counts(self) -> tuple[int, int]:
        """(frozen N, trainable P)."""
        frozen = sum(p.numel() for p in self.model.parameters() if not p.requires_grad)
        trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        return frozen, trainable

    def forward(self, **inputs):
        return self.model(**inputs)

    def training_step(self, batch, batch_idx):
        out = self.model(**batch["inputs"])
        self.log("train/loss", out.loss, prog_bar=True, batch_size=_samples(batch))
        return out.loss

    def validation_step(self, batch, batch_idx):
        inputs = batch["inputs"]
        out = self.model(**inputs)
        labels = inputs["labels"][:, 1:]  # (B, T-1): the shifted targets HF's loss uses
        mask = labels != -100
        n = mask.sum()
        pred = out.logits[:, :-1].argmax(-1)  # (B, T-1)
        acc = (pred[mask] == labels[mask]).float().mean() if n > 0 else out.loss.new_zeros(())
        self.val_loss.update(out.loss.detach().float(), weight=n)
        self.val_acc.update(acc.detach(), weight=n)

    def on_validation_epoch_end(self):
        loss = self.val_loss.compute()
        self.log("val/loss", loss, prog_bar=True, sync_dist=False)
        self.log("val/ppl", torch.exp(loss.clamp(max=50)))
        self.log("val/token_acc", self.val_acc.compute())
        self.val_loss.reset()
        self.val_acc.reset()

    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=self.optim.lr, weight_decay=self.optim.weight_decay)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = int(self.optim.warmup_ratio * total)

        def _lr_lambda(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # Checkpoints hold only what trains: the frozen backbone is reloaded from its path.
    def state_dict(self, *args, **kwargs):
        full = super().state_dict(*args, **kwargs)
        trainable = {n for n, p in self.named_parameters() if p.requires_grad}
        return {k: v for k, v in full.items() if k in trainable}

    def load_state_dict(self, state_dict, strict: bool = True, **kwargs):
        missing = {n for n, p in self.named_parameters() if p.requires_grad} - set(state_dict)
        if strict and missing:
            raise KeyError(f"checkpoint lacks trainable params: {sorted(missing)[:3]}")
        return super().load_state_dict(state_dict, strict=False, **kwargs)


def _samples(batch) -> int:
    return int(batch["stats"]["samples"])
