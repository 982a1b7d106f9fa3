"""The LightningModule: a Hugging Face causal LM with PEFT LoRA on every linear layer but lm_head.

Batch contract (from the DataModule): `{"inputs": {forward kwargs incl. labels}, "stats":
{"tokens", "slots", "examples", "loss_tokens"}}`. The loss is the model's shifted cross-entropy on
`labels` (-100 over the prompt: the `vanilla` template trains on the response and EOS only),
computed over `lm_head` in token chunks (`loss.py`): the (T, V) fp32 logits never exist, which
at 8,192 tokens and a 128k vocabulary saves ~6 GB per GPU. Only LoRA params train; outside
DeepSpeed they stay fp32 even when the backbone is fp16, so the optimizer state is fp32 too (the
fp16-on-V100 failure mode of DESIGN.md); DeepSpeed keeps its own fp32 master copies.

The model is built in `configure_model`, Lightning's hook for sharded construction: under
DeepSpeed ZeRO-3 it runs inside `deepspeed.zero.Init`, so each parameter is partitioned as it is
created, and the checkpoint is read slice by slice (`loading.py`): a rank never holds more than
its share of the frozen weights (70B in fp16 is 140 GB: whole on each of 8 ranks it would be
1.1 TB of host memory). LoRA weights are initialised from the seed and their names alone, so
ZeRO-2 and ZeRO-3 runs start from the same adapter.
"""

from __future__ import annotations

import logging
import math

import lightning as L
import torch

from nif_lightning.config import Dtype, LoraConfig, OptimConfig

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _triton_usable() -> bool:
    """False (with a warning) when CUDA is there but Triton is not: the fused LoRA op would fail
    at the first forward. Without CUDA the op runs plain torch and needs no Triton."""
    import importlib.util

    if not torch.cuda.is_available() or importlib.util.find_spec("triton") is not None:
        return True
    log.warning(
        "fused LoRA kernels off: Triton is not installed (`pip install triton`, or set "
        "`model.fused_lora: false` to silence this); using PEFT's forward"
    )
    return False


class NifLoraModule(L.LightningModule):
    """A Hugging Face causal LM with LoRA adapters (PEFT); see the module docstring for the batch.

    Usable as is from Python, a lab's own Trainer or `LightningCLI(NifLoraModule,
    NifDataModule)` (every argument below is a YAML key under `model:`).

    Args:
        model_name_or_path: Hub id or local folder of the base model (a causal LM).
        lora: LoRA rank, alpha, dropout and target modules (default: the paper's r 8, alpha 16,
            every linear layer but lm_head).
        optim: AdamW learning rate, weight decay and warmup share (cosine decay to zero).
        dtype: Dtype of the frozen backbone weights; the LoRA params stay fp32.
        fused_lora: Use the fused LoRA kernels where they apply.
        packed_attention: Exact block-diagonal attention over packed batches.
        gradient_checkpointing: Recompute each decoder layer in backward (saves activations).
        seed: Seed of the LoRA initialisation (the same adapter under ZeRO-2 and ZeRO-3).
    """

    def __init__(
        self,
        model_name_or_path: str,
        lora: LoraConfig | None = None,
        optim: OptimConfig | None = None,
        *,
        dtype: Dtype = "float32",
        fused_lora: bool = True,
        packed_attention: bool = True,
        gradient_checkpointing: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if dtype not in _DTYPES:
            raise ValueError(f"`model.dtype` must be one of {list(_DTYPES)}, got {dtype!r}")
        self.model_name_or_path = str(model_name_or_path)
        self.lora = lora or LoraConfig()
        self.optim = optim or OptimConfig()
        self.dtype_name = dtype
        self.fused_lora = fused_lora
        self.packed_attention = packed_attention
        self.gradient_checkpointing = gradient_checkpointing
        self.seed = seed
        self.model = None  # built by `configure_model`
        self.save_hyperparameters(ignore=["lora", "optim"])
        from torchmetrics.aggregation import MeanMetric

        # Token-weighted sums (MeanMetric with weights) so metrics are exact across batches/ranks.
        self.val_loss = MeanMetric()
        self.val_acc = MeanMetric()

    def configure_model(self) -> None:
        """Build the model once (Lightning calls this inside its sharded-construction context)."""
        if self.model is not None:
            return
        from peft import get_peft_model

        from nif_lightning.loading import load_causal_lm, outside_zero3_init, zero3_init_active

        base = load_causal_lm(self.model_name_or_path, _DTYPES[self.dtype_name])
        partitioned = zero3_init_active()
        # LoRA params whole and drawn in fp32 here, as without ZeRO-3; DeepSpeed partitions them
        # at setup.
        with outside_zero3_init():
            model = get_peft_model(base, self.lora.peft_config())
            for name, param in model.named_parameters():
                if "lora_" in name and not param.requires_grad:
                    raise RuntimeError(f"LoRA param {name} is frozen")  # PEFT contract changed
            init_lora_weights(model, self.seed)
        if partitioned:
            # DeepSpeed casts a ZeRO-Init model's params to half for no one: the LoRA params
            # take the partitioned weights' dtype (zero.Init's) as ZeRO-2's engine cast gives.
            dtype = next(p.dtype for p in base.parameters() if not p.requires_grad)
            for param in model.parameters():
                if param.requires_grad:
                    param.data = param.data.to(dtype)
        if self.gradient_checkpointing:
            enable_checkpointing(model)
        self._switch_kernels(model)
        # `from_pretrained` returns eval mode and Lightning keeps modules' modes: without this
        # LoRA dropout would never be applied.
        self.model = model.train()

    def _switch_kernels(self, model) -> None:
        # Speed-ups from sibling modules. Only a missing optional dependency (Triton on a CUDA
        # machine) falls back, with a warning saying how to fix it; any other failure raises:
        # a broken kernel package must not silently turn into PEFT's slower forward.
        if self.fused_lora and _triton_usable():
            from nif_kernels import use_fused_lora

            log.info("fused LoRA kernel on %d layers", use_fused_lora(model))
        if self.packed_attention:
            from nif_lightning.attention import use_packed_attention

            log.info("packed attention: %s", use_packed_attention(model))

    # ---- counts used by the throughput callback (4N + 6P FLOPs per token) ----
    def param_counts(self) -> tuple[int, int]:
        """(frozen N, trainable P); whole counts also when ZeRO-3 has partitioned them."""
        frozen = sum(_numel(p) for p in self.model.parameters() if not p.requires_grad)
        trainable = sum(_numel(p) for p in self.model.parameters() if p.requires_grad)
        return frozen, trainable

    def forward(self, **inputs):
        return self.model(**inputs)

    def lm_loss(self, inputs: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mean loss, counted tokens, correct argmax predictions) of a batch's `inputs`."""
        from nif_lightning.loss import chunked_lm_loss

        base = self.model.get_base_model()
        kwargs = {k: v for k, v in inputs.items() if k != "labels"}
        hidden = base.get_decoder()(**kwargs).last_hidden_state  # (B, T, H)
        head = base.get_output_embeddings()
        return chunked_lm_loss(hidden, head.weight, inputs["labels"], bias=head.bias)

    def training_step(self, batch, batch_idx):
        loss, _, _ = self.lm_loss(batch["inputs"])
        self.log("train/loss", loss, prog_bar=True, batch_size=_examples(batch))
        return loss

    def validation_step(self, batch, batch_idx):
        loss, n, correct = self.lm_loss(batch["inputs"])
        # Under ZeRO-3 DeepSpeed places the parameters and Lightning never moves the module, so
        # the metrics' states would stay on the CPU (a no-op once they are on the loss's device).
        self.val_loss.to(loss.device)
        self.val_acc.to(loss.device)
        self.val_loss.update(loss.detach().float(), weight=n)
        self.val_acc.update(correct / n.clamp(min=1), weight=n)

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


def _examples(batch) -> int:
    return int(batch["stats"]["examples"])


def enable_checkpointing(model) -> None:
    """Recompute each decoder layer in backward. Non-reentrant: it needs no grad-requiring inputs
    (PEFT's embeddings are frozen) and recomputes custom ops (the fused LoRA kernel) like any
    other. Transformers 5 renamed the switch; 4.x has only the old name."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(kwargs)
    else:
        model.gradient_checkpointing_enable(kwargs)


def _numel(param: torch.Tensor) -> int:
    return getattr(param, "ds_numel", param.numel())  # ZeRO-3 keeps the whole size here


def init_lora_weights(model: torch.nn.Module, seed: int) -> None:
    """PEFT's default LoRA init (A: Kaiming-uniform with a = sqrt(5), B: zeros), drawn from a
    generator seeded by `seed` and each parameter's name, in fp32.

    The same adapter comes out whatever else consumed the global RNG (a sliced ZeRO-3 load and
    `from_pretrained` draw differently), so ZeRO-2 and ZeRO-3 runs start alike.
    Trainable params are made fp32 here (outside DeepSpeed the optimizer state follows them).
    """
    import zlib

    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        # Drawn on the CPU whatever the default device (Lightning builds under CUDA's): the
        # same numbers on every machine.
        if "lora_B" in name:
            value = torch.zeros(param.shape, device="cpu")
        else:
            g = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
            bound = 1.0 / math.sqrt(param.shape[1])  # kaiming_uniform_(a=sqrt(5))
            value = torch.empty(param.shape, device="cpu").uniform_(-bound, bound, generator=g)
        param.data = value.to(param.device)
