"""Per-GPU memory of `nif train`, planned before anything is launched (`nif plan`).

A plan is the sum of five terms, per GPU, in bytes:

- `weights`: the frozen parameters. Under DeepSpeed fp16/bf16 the engine casts the whole module
  to half precision, so 2 bytes each whatever `model.dtype`; otherwise `model.dtype`. ZeRO-3
  divides them by the world size and adds its working set of gathered parameters; with
  `offload: params|both` only that working set stays on the GPU.
- `trainable_states`: LoRA params P x (half param 2 + half grad 2 + fp32 master 4 + Adam 8)
  under DeepSpeed half precision, P x (4 + 4 + 8) in fp32; ZeRO-1 splits the optimizer part,
  ZeRO-2 grads too, ZeRO-3 everything; `offload: optimizer|both` moves master + Adam to the host.
- `activations` and `logits`, measured, not guessed: 1- and 2-layer copies of the model (same
  hidden / intermediate / heads / kv-heads, dtype, LoRA rank and targets) run forward and
  backward on the `meta` device (nothing allocated, so Llama-3-70B's shape costs nothing) at the
  run's exact token count, through PEFT, `kernels.use_fused_lora` and checkpointing as training
  runs them, while `tensor_bytes.live_tensor_bytes` tracks every tensor. Each later layer adds
  the same bytes to all that is alive at the peak, so two layers extrapolate to L. Two moments
  can peak: the loss at the end of the forward (all that is kept for backward, plus the loss's
  chunk: `nif_lightning.loss.chunked_loss_bytes`, which is `logits`) and the backward (with
  checkpointing: a recomputed layer and its gradients). `activations` is the larger of the two,
  less `logits`. Checked against real steps of a 0.5B Llama in fp16 on an H100: +0.3% (no
  checkpointing) and +3.4% (checkpointing) from `max_memory_allocated`; on a CPU, +2.5% and +7%
  from the real step's tracked peak (tests/train/test_train_plan.py).
- `overhead`: the CUDA context, DeepSpeed's gradient buckets and allocator fragmentation,
  each constant below with where it comes from.

Attention in the probe is what every fused kernel training runs saves (CUDA flash, CUDA
memory-efficient, CPU flash): q, k, v, out and an fp32 logsumexp (B, heads, T) per packed
sample, never a T x T matrix. On `meta`, `F.scaled_dot_product_attention` would pick the math
backend (T x T), so the probe calls the CPU flash kernel's meta function per sample instead,
the same call `nif_lightning.attention.packed_sdpa_attention` makes on a CPU. The LoRA op saves
x and t = x A^T per projection on every path (`kernels.lora`'s custom op and its torch
reference alike); the custom op also saves A and B cast to the compute dtype when the LoRA
params are fp32 and the backbone is half (no DeepSpeed), which the probe adds by hand.
"""

from __future__ import annotations

import copy
import json
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nif_lightning.tensor_bytes import decoder_layers, live_tensor_bytes

if TYPE_CHECKING:
    from nif_lightning.config import TrainConfig

GB = 1e9

# What `torch.cuda.get_device_properties(i).total_memory` reports for each card (bytes / 1e9):
# the marketing GiB in GB, less the driver's reserve (an H100 80GB HBM3 reports 85,017,493,504
# bytes, read on one here). `GpuSpec.from_cuda` reads the figure of the machine it runs on.
GPUS_GB = {
    "v100-16gb": 16.9,
    "v100-32gb": 34.1,
    "a100-40gb": 42.3,
    "a100-80gb": 85.1,
    "h100-80gb": 85.0,
}

# ---- framework overhead (per GPU) ----
# CUDA context: driver state, the kernel images of torch (and DeepSpeed's ops) and the cuBLAS /
# cuDNN handles live outside torch's allocator (PyTorch "CUDA semantics": memory_allocated does
# not count them). Measured on an H100 (torch 2.11, CUDA 13, `torch.cuda.mem_get_info`): 0.55 GB
# used after init, 0.72 GB besides torch's own reservation once cuBLAS has run; V100s, with
# fewer SMs, use less. NCCL adds its channel buffers when world > 1 (a few hundred MB per rank
# on an 8-GPU node; an estimate, not measured here).
_CUDA_CONTEXT_BYTES = int(0.75 * GB)
_NCCL_BYTES = int(0.3 * GB)
# Gradient buckets: DeepSpeed 0.19 `stage_1_and_2.py` `setup_buckets` allocates each ZeRO-1/2
# rank's bucket at the full `reduce_bucket_size` with contiguous_gradients, twice with
# overlap_comm (double buffering), whatever the number of trainable params; ZeRO-3 (`stage3.py`)
# allocates one. Sizes are read from the config training passes (`strategy.deepspeed_config`).
# DeepSpeed ZeRO-3 defaults: prefetch 5e7 elements ahead, keep at most 1e9 gathered
# (`stage3_max_live_parameters`); params under 1e5 elements (norms, LoRA A) stay whole.
_ZERO3_MAX_LIVE_ELEMENTS = 1_000_000_000
# torch's caching allocator rounds and splits blocks: reserved runs ~5-15% above allocated in
# LLM fine-tuning; 10% of everything else.
_FRAGMENTATION = 0.10

_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
_HALF = {"16-mixed": "float16", "bf16-mixed": "bfloat16"}
_SHAPES = Path(__file__).parent / "model_shapes"
_PROBE_ATTENTION = "nif_plan_fused"  # no "flash" in it: transformers would look for flash-attn


class PlanError(ValueError):
    """Bad input to the planner: names the input and the way out."""


@dataclass(frozen=True)
class GpuSpec:
    """One GPU: a name and the memory it reports."""

    name: str
    capacity_bytes: int

    @classmethod
    def named(cls, name: str) -> GpuSpec:
        key = name.lower()
        if key not in GPUS_GB:
            raise PlanError(f"`--gpu` {name!r} is unknown; choose one of {sorted(GPUS_GB)}")
        return cls(key, int(GPUS_GB[key] * GB))

    @classmethod
    def from_cuda(cls, device: Any = None) -> GpuSpec:
        """The GPU this process runs on (`torch.cuda.get_device_properties`)."""
        import torch

        props = torch.cuda.get_device_properties(device)
        return cls(props.name, int(props.total_memory))


# ---- model shapes: shipped, local folder, or the Hub (config.json only) ----


def shipped_shapes() -> list[str]:
    """Hub ids whose config.json ships with the package (the paper's models)."""
    return sorted(p.stem.replace("--", "/") for p in _SHAPES.glob("*.json"))


def load_model_shape(path: str):
    """The transformers config of `path`: a local folder, a shipped shape, or a Hub id (only
    config.json is fetched)."""
    from transformers import AutoConfig

    local = Path(path)
    if local.exists():
        if not (local / "config.json").is_file():
            raise PlanError(f"`model.path` {path} has no config.json (not a Hugging Face model)")
        return AutoConfig.from_pretrained(local)
    if path.startswith((".", "/", "~")) or path.count("/") > 1:
        raise PlanError(f"`model.path` {path} is neither a local folder nor a Hub id (org/name)")
    shipped = _SHAPES / f"{path.replace('/', '--')}.json"
    if shipped.is_file():
        raw = json.loads(shipped.read_text())
        return AutoConfig.for_model(raw.pop("model_type"), **raw)
    try:
        return AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise PlanError(
            f"`model.path` {path}: the model shape is unavailable offline: not a local folder, "
            f"not a shipped shape ({', '.join(shipped_shapes())}), and the Hub gave no "
            f"config.json ({reason}). Pass a local model folder, or put its config.json in one"
        ) from None


# ---- the activation probe ----


def _probe_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kw):
    """Packed attention as the fused kernels save it: one flash call per sample (q, k, v, out,
    fp32 logsumexp), then the same cat + transpose as `packed_sdpa_attention`."""
    import torch

    bounds = kw["cu_seq_lens_q"].tolist()  # a CPU tensor: the probe's q/k/v are on `meta`
    flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    outs = [
        flash(query[:, :, s:e], key[:, :, s:e], value[:, :, s:e], 0.0, True, scale=scaling)[0]
        for s, e in zip(bounds[:-1], bounds[1:], strict=True)
    ]
    out = torch.cat(outs, dim=2)  # (B, H, T, D)
    return out.transpose(1, 2).contiguous(), None  # (B, T, H, D)


@dataclass(frozen=True)
class _Probe:
    """Live bytes of the decoder's forward + backward (no loss) at L = 1 and 2 layers, which
    extrapolate to any L: every later layer adds the same bytes to everything alive at the
    peak (its saved tensors, or with checkpointing its kept input). Plus parameter counts."""

    runs: tuple[tuple[int, int], ...]  # (kept, peak) at 1 and 2 layers: kept = alive for
    # backward when the forward ends (saved tensors, checkpoint inputs), peak = the high-water
    # mark over forward + backward
    frozen_outside: int
    frozen_per_layer: int
    lora_per_layer: int

    def at(self, layers: int) -> tuple[int, int]:
        """(kept, peak) of the model with `layers` decoder layers, from the 2-layer run (its
        last layer is a later one, like the one whose backward peaks)."""
        (kept1, peak1), (kept2, peak2) = self.runs
        if layers == 1:
            return kept1, peak1
        more = (layers - 2) * (kept2 - kept1)
        return kept2 + more, peak2 + more


def probe_model(
    config,
    *,
    layers: int,
    dtype: str,
    lora,
    checkpointing: bool = False,
    lora_dropout: bool = False,
    device="meta",
):
    """A `layers`-layer copy of `config` (a transformers config) with PEFT LoRA, all in `dtype`
    (as DeepSpeed's module.half() leaves it), through `kernels.use_fused_lora` and packed
    attention, in training mode. On `meta` nothing is allocated and the attention is the
    fused-kernel stand-in; elsewhere the weights are zeros (only the shapes matter) and the
    attention is training's own. `lora_dropout`: keep the configured dropout (PEFT's own forward
    saves its mask; the fused op redraws it and saves none)."""
    import torch
    from peft import get_peft_model
    from transformers import AttentionInterface, AutoModelForCausalLM

    from nif_kernels import use_fused_lora
    from nif_lightning.attention import use_packed_attention
    from nif_lightning.module import enable_checkpointing

    cfg = copy.deepcopy(config)
    cfg.num_hidden_layers = layers
    if isinstance(getattr(cfg, "layer_types", None), list):
        cfg.layer_types = cfg.layer_types[:layers]
    torch_dtype = getattr(torch, dtype)
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base = AutoModelForCausalLM.from_config(cfg, dtype=torch_dtype)
        model = get_peft_model(base, lora.peft_config(None if lora_dropout else 0.0))
    model.to(torch_dtype)
    if str(device) == "meta":
        AttentionInterface.register(_PROBE_ATTENTION, _probe_attention)
        base.set_attn_implementation(_PROBE_ATTENTION)
    else:
        model.to_empty(device=device)
        with torch.no_grad():
            for t in (*model.parameters(), *model.buffers()):
                t.zero_()
        use_packed_attention(model)
    use_fused_lora(model)  # off CUDA: the torch path, which saves what the custom op saves
    if checkpointing:
        enable_checkpointing(base)
    model.train()
    return model


def packed_inputs(tokens: int, cutoff: int, device="meta") -> dict:
    """Decoder kwargs for one packed row of `tokens` tokens in samples of `cutoff`. The sample
    boundaries stay on the CPU: the attention reads them."""
    import torch

    bounds = [*range(0, tokens, cutoff), tokens]
    pairs = list(zip(bounds[:-1], bounds[1:], strict=True))
    cu = torch.tensor(bounds, dtype=torch.int32)
    longest = max(e - s for s, e in pairs)
    return {
        "input_ids": torch.zeros(1, tokens, dtype=torch.long, device=device),
        "position_ids": torch.cat([torch.arange(e - s) for s, e in pairs])[None].to(device),
        "cu_seq_lens_q": cu,
        "cu_seq_lens_k": cu,
        "max_length_q": longest,
        "max_length_k": longest,
        "use_cache": False,
    }


def probe(
    config,
    *,
    tokens: int,
    cutoff: int,
    dtype: str,
    lora,
    checkpointing: bool,
    lora_dropout: bool = False,
) -> _Probe:
    """Run the decoder of 1- and 2-layer `meta` copies of `config` forward and backward on
    `tokens` packed tokens (samples of `cutoff`), tracking every tensor (`live_tensor_bytes`)."""
    import torch

    runs = []
    for layers in (1, 2):
        model = probe_model(
            config,
            layers=layers,
            dtype=dtype,
            lora=lora,
            checkpointing=checkpointing,
            lora_dropout=lora_dropout,
        )
        decoder = model.get_base_model().get_decoder()  # as `NifLoraModule.lm_loss`
        with live_tensor_bytes() as live:
            hidden = decoder(**packed_inputs(tokens, cutoff)).last_hidden_state
            kept = live.now
            hidden.backward(torch.empty_like(hidden))  # the loss's gradient arrives
        runs.append((kept, live.peak))
    last = list(decoder_layers(model)[-1].parameters())
    frozen_layer = sum(p.numel() for p in last if not p.requires_grad)
    frozen_all = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    return _Probe(
        runs=tuple(runs),
        frozen_outside=frozen_all - 2 * frozen_layer,
        frozen_per_layer=frozen_layer,
        lora_per_layer=sum(p.numel() for p in last if p.requires_grad),
    )


# ---- the plan ----


@dataclass(frozen=True)
class _Run:
    """What the plan needs from a TrainConfig, resolved for a CUDA run."""

    world: int
    deepspeed: bool
    zero_stage: int  # 0 without DeepSpeed
    offload: str
    dtype: str  # compute (and frozen weights) dtype
    lora_fp32: bool  # LoRA params fp32 on the GPU while the backbone is half (no DeepSpeed)
    tokens: int
    cutoff: int

    @property
    def label(self) -> str:
        if not self.deepspeed:
            return f"DDP {self.dtype}" if self.world > 1 else f"single GPU {self.dtype}"
        offload = f", offload {self.offload}" if self.offload != "none" else ""
        return f"DeepSpeed ZeRO-{self.zero_stage} {self.dtype}{offload}"


@dataclass(frozen=True)
class Suggestion:
    """A config change and the plan it gives."""

    settings: dict[str, Any]
    total_bytes: int
    fits: bool

    def to_json(self) -> dict[str, Any]:
        return {"settings": self.settings, "total_gb": _gb(self.total_bytes), "fits": self.fits}


@dataclass
class MemoryPlan:
    """Predicted peak memory per GPU of one `nif train` run (bytes; GB = 1e9 bytes)."""

    model: str
    gpu: str
    devices: int
    world: int
    strategy: str
    capacity_bytes: int
    tokens_per_micro_batch: int
    gradient_checkpointing: bool
    frozen_params: int
    trainable_params: int
    weights: int
    trainable_states: int
    activations: int
    logits: int
    overhead: int
    overhead_parts: dict[str, int]
    host_bytes_per_node: int
    activation_moments: dict[str, int]
    """Activations + logits at the two moments that can peak; the larger is in the total."""
    notes: list[str] = field(default_factory=list)
    suggestions: list[Suggestion] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.weights + self.trainable_states + self.activations + self.logits + self.overhead

    @property
    def fits(self) -> bool:
        return self.total <= self.capacity_bytes

    def to_json(self) -> dict[str, Any]:
        terms = ("weights", "trainable_states", "activations", "logits", "overhead", "total")
        return {
            "gpu": self.gpu,
            "devices": self.devices,
            "per_gpu_gb": {k: _gb(getattr(self, k)) for k in terms},
            "capacity_gb": _gb(self.capacity_bytes),
            "fits": self.fits,
            "gradient_checkpointing": self.gradient_checkpointing,
            "model": self.model,
            "world": self.world,
            "strategy": self.strategy,
            "tokens_per_micro_batch": self.tokens_per_micro_batch,
            "params": {"frozen": self.frozen_params, "trainable": self.trainable_params},
            "overhead_gb": {k: _gb(v) for k, v in self.overhead_parts.items()},
            "activations_and_logits_gb": {k: _gb(v) for k, v in self.activation_moments.items()},
            "host_gb_per_node": _gb(self.host_bytes_per_node),
            "notes": self.notes,
            "suggestions": [s.to_json() for s in self.suggestions],
        }

    def table(self) -> str:
        gc = "on" if self.gradient_checkpointing else "off"
        nodes = f" x {self.world // self.devices} nodes" if self.world != self.devices else ""
        lines = [
            f"{self.model} on {self.devices} x {self.gpu}{nodes}: {self.strategy}, "
            f"gradient checkpointing {gc}",
            f"{self.frozen_params / 1e9:.2f}B frozen + {self.trainable_params / 1e6:.1f}M LoRA "
            f"params; {self.tokens_per_micro_batch:,} tokens per micro-batch",
            "",
            "| per GPU          |     GB |",
            "|------------------|-------:|",
        ]
        for name in ("weights", "trainable_states", "activations", "logits", "overhead"):
            lines.append(f"| {name.replace('_', ' '):16} | {_gb(getattr(self, name)):6.2f} |")
        lines.append(f"| **total**        | {_gb(self.total):6.2f} |")
        lines.append(f"| capacity         | {_gb(self.capacity_bytes):6.2f} |")
        lines.append("")
        lines.append("fits" if self.fits else "does NOT fit")
        if self.host_bytes_per_node:
            lines.append(
                f"host memory per node for offloaded states: {_gb(self.host_bytes_per_node):.1f} GB"
            )
        lines += [f"note: {n}" for n in self.notes]
        if self.suggestions:
            lines.append("each of these changes, planned again:")
            for s in self.suggestions:
                change = ", ".join(f"{k}: {_yaml(v)}" for k, v in s.settings.items())
                verdict = "fits" if s.fits else "still does not fit"
                lines.append(f"  {change} -> {_gb(s.total_bytes):.2f} GB ({verdict})")
        return "\n".join(lines)


def _gb(n: int) -> float:
    return round(n / GB, 3)


def _yaml(value: Any) -> str:
    return json.dumps(value) if isinstance(value, bool) else str(value)


def _resolve(cfg, devices: int | None) -> _Run:
    t = cfg.trainer
    per_node = devices if devices is not None else t.devices
    world = (per_node if isinstance(per_node, int) else 1) * t.num_nodes
    deepspeed = t.strategy in ("deepspeed", "auto")  # `auto` is DeepSpeed on CUDA
    half = _HALF.get(t.precision) if deepspeed else None
    data = cfg.data
    return _Run(
        world=world,
        deepspeed=deepspeed,
        zero_stage=t.zero_stage if deepspeed else 0,
        offload=t.offload if deepspeed else "none",
        dtype=half or cfg.model.dtype,
        lora_fp32=not half and cfg.model.dtype != "float32" and cfg.model.fused_lora,
        tokens=data.token_budget,
        cutoff=data.cutoff_len,
    )


class _Planner:
    """Plans for one model and config; probes are memoised (they depend on tokens and
    checkpointing only)."""

    def __init__(self, cfg, shape) -> None:
        self.cfg = cfg
        self.shape = shape
        self._probes: dict[tuple, _Probe] = {}

    def _probe(self, run: _Run, checkpointing: bool) -> _Probe:
        key = (run.tokens, run.cutoff, run.dtype, checkpointing)
        if key not in self._probes:
            self._probes[key] = probe(
                self.shape,
                tokens=run.tokens,
                cutoff=run.cutoff,
                dtype=run.dtype,
                lora=self.cfg.lora,
                checkpointing=checkpointing,
                lora_dropout=not self.cfg.model.fused_lora,
            )
        return self._probes[key]

    def plan(self, run: _Run, gpu: GpuSpec, devices: int, checkpointing: bool) -> MemoryPlan:
        from nif_lightning.loss import chunked_loss_bytes

        p = self._probe(run, checkpointing)
        layers = self.shape.num_hidden_layers
        frozen = p.frozen_outside + layers * p.frozen_per_layer
        lora = layers * p.lora_per_layer
        w, zero, notes = run.world, run.zero_stage, []

        # Frozen weights: ZeRO-3 shards them, and gathers a layer in use plus the next one
        # prefetched (capped by stage3_max_live_parameters): an upper bound, since DeepSpeed
        # gathers submodule by submodule with a 5e7-element prefetch.
        wbytes = _BYTES[run.dtype]
        weights = frozen * wbytes
        if zero == 3:
            layer = p.frozen_per_layer + p.lora_per_layer
            gathered = min(2 * layer, max(_ZERO3_MAX_LIVE_ELEMENTS, layer))
            on_gpu = 0 if run.offload in ("params", "both") else frozen * wbytes // w
            weights = on_gpu + gathered * wbytes
            notes.append(
                f"ZeRO-3 working set: {_gb(gathered * wbytes)} GB of gathered params (two "
                "decoder layers, capped at stage3_max_live_parameters 1e9)"
            )

        # LoRA params: (param, grad, optimizer) bytes each, split by ZeRO stage.
        half = run.deepspeed and run.dtype != "float32"
        param_b, grad_b, opt_b = (2, 2, 4 + 8) if half else (4, 4, 8)
        if run.offload in ("optimizer", "both"):
            opt_b = 0
        if zero >= 1:
            opt_b /= w
        if zero >= 2:
            grad_b /= w
        if zero == 3:
            param_b /= w
        trainable = int(lora * (param_b + grad_b + opt_b))

        # Two moments can peak: the loss, at the end of the forward (everything kept for
        # backward, plus the loss's chunk), and the backward (with checkpointing: a recomputed
        # layer and its gradients). `logits` is the loss's own bytes, `activations` the rest.
        kept, peak = p.at(layers)
        if run.lora_fp32:  # the fused op also keeps half copies of fp32 A and B per layer
            casts = p.lora_per_layer * _BYTES[run.dtype]
            kept += 0 if checkpointing else layers * casts
            peak += casts if checkpointing else layers * casts
        logits = chunked_loss_bytes(run.tokens, self.shape.hidden_size, self.shape.vocab_size)
        activations = max(peak, kept + logits) - logits

        parts = {"cuda_context": _CUDA_CONTEXT_BYTES}
        if w > 1:
            parts["nccl"] = _NCCL_BYTES
        if zero:
            from nif_lightning.strategy import deepspeed_config

            ds = deepspeed_config(zero, self.cfg.trainer.precision, run.offload)
            ds = ds["zero_optimization"]
            buffers = 2 if zero < 3 and ds.get("overlap_comm") else 1
            parts["gradient_buckets"] = buffers * ds["reduce_bucket_size"] * (2 if half else 4)
        elif w > 1:  # DDP's reducer keeps a flat fp32 copy of the gradients
            parts["gradient_buckets"] = 4 * lora
        rest = weights + trainable + activations + logits + sum(parts.values())
        parts["fragmentation"] = int(_FRAGMENTATION * rest)

        host = 0
        if run.offload in ("params", "both"):
            host += frozen * wbytes  # fp16 partitions in pinned memory, over the node's ranks
        if run.offload in ("optimizer", "both"):
            host += lora * (12 if half else 8) + lora * 4  # master + Adam, fp32 grads
        host_per_node = host // self.cfg.trainer.num_nodes if host else 0
        if not run.deepspeed and run.dtype != "float32":
            notes.append(
                "without DeepSpeed, activations are planned in model.dtype (autocast "
                "is not modelled)"
            )
        return MemoryPlan(
            model=self.cfg.model.path,
            gpu=gpu.name,
            devices=devices,
            world=w,
            strategy=run.label,
            capacity_bytes=gpu.capacity_bytes,
            tokens_per_micro_batch=run.tokens,
            gradient_checkpointing=checkpointing,
            frozen_params=frozen,
            trainable_params=lora,
            weights=weights,
            trainable_states=trainable,
            activations=activations,
            logits=logits,
            overhead=sum(parts.values()),
            overhead_parts=parts,
            host_bytes_per_node=host_per_node,
            activation_moments={"at_the_loss": kept + logits, "backward": peak},
            notes=notes,
        )


def plan_memory(cfg: TrainConfig, gpu: GpuSpec | str, devices: int | None = None) -> MemoryPlan:
    """Predict per-GPU memory of `nif train` with `cfg` (a TrainConfig) on `gpu`, with
    `devices` per node (default: `trainer.devices`, 1 if `auto`). Resolves
    `model.gradient_checkpointing: auto` (on exactly when the plan without it does not fit) and,
    when the plan does not fit, lists the knobs that would make it fit."""
    spec = GpuSpec.named(gpu) if isinstance(gpu, str) else gpu
    if not cfg.model.path:
        raise PlanError("no model: set `model.path` in the config")
    if cfg.model.tiny and not Path(cfg.model.path).exists():  # what `nif train` would write
        from nif_lightning.tiny_model import build_tiny_model, build_tiny_tokenizer

        shape = build_tiny_model(build_tiny_tokenizer()).config
    else:
        shape = load_model_shape(cfg.model.path)
    planner = _Planner(cfg, shape)
    t = cfg.trainer
    per_node = devices if devices is not None else (t.devices if isinstance(t.devices, int) else 1)
    run = _resolve(cfg, per_node)
    setting = cfg.model.gradient_checkpointing
    if setting == "auto":
        result = planner.plan(run, spec, per_node, checkpointing=False)
        if not result.fits:
            off = result.total
            result = planner.plan(run, spec, per_node, checkpointing=True)
            result.notes.insert(0, f"gradient_checkpointing auto: on (off needs {_gb(off)} GB)")
        else:
            result.notes.insert(0, "gradient_checkpointing auto: off (it fits without)")
    else:
        result = planner.plan(run, spec, per_node, checkpointing=bool(setting))
    if not result.fits:
        result.suggestions = _suggestions(planner, cfg, run, spec, per_node, result)
    return result


def _suggestions(planner: _Planner, cfg, run: _Run, gpu: GpuSpec, devices: int, plan):
    """Knobs in the order they cost least, each on top of checkpointing: checkpointing itself, a
    smaller micro-batch (same global batch), ZeRO-3, offloading params; all together when no
    single one is enough."""
    data = cfg.data
    accumulate = cfg.trainer.accumulate_grad_batches

    def attempt(settings: dict[str, Any], r: _Run) -> Suggestion:
        p = planner.plan(r, gpu, devices, checkpointing=True)
        return Suggestion({"model.gradient_checkpointing": True, **settings}, p.total, p.fits)

    def smaller_batch(settings: dict[str, Any], r: _Run) -> Suggestion | None:
        # Divisors of micro_batch_size, largest first, so accumulation takes up the factor and
        # micro-batch x accumulation x world (the global batch) stays; the largest that fits,
        # else the smallest.
        found = None
        for m in range(data.micro_batch_size - 1, 0, -1):
            if data.micro_batch_size % m:
                continue
            factor = data.micro_batch_size // m
            batch = {
                "data.micro_batch_size": m,
                "trainer.accumulate_grad_batches": accumulate * factor,
            }
            found = attempt(
                {**settings, **batch},
                replace(r, tokens=max(data.cutoff_len, r.tokens // factor)),
            )
            if found.fits:
                break
        return found

    out: list[Suggestion | None] = []
    if not plan.gradient_checkpointing:
        out.append(attempt({}, run))
    out.append(smaller_batch({}, run))
    zero3 = {} if run.deepspeed else {"trainer.strategy": "deepspeed"}
    zero3_run = replace(run, deepspeed=True, zero_stage=3)
    if run.zero_stage < 3:
        out.append(attempt({**zero3, "trainer.zero_stage": 3}, zero3_run))
    offload = run.offload
    if run.offload not in ("params", "both"):
        offload = "both" if run.offload == "optimizer" else "params"
        out.append(
            attempt(
                {**zero3, "trainer.zero_stage": 3, "trainer.offload": offload},
                replace(zero3_run, offload=offload),
            )
        )
    if not any(s.fits for s in out if s is not None):
        for extra in (offload, "both"):
            together = {**zero3, "trainer.zero_stage": 3, "trainer.offload": extra}
            out.append(smaller_batch(together, replace(zero3_run, offload=extra)))
            if out[-1] is not None and out[-1].fits:
                break
    return [s for s in out if s is not None]
