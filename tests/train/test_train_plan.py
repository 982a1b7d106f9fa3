"""`nif plan`: the memory plan agrees with what a real training step keeps for backward, gradient
checkpointing cuts it, each paper recipe fits 8x V100-32GB, and the CLI's output and exit codes.
On a GPU: the plan agrees with `torch.cuda.max_memory_allocated` of a real fp16 step."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
import transformers

from nif_lightning.cli import main
from nif_lightning.config import load_config, train_config
from nif_lightning.memory import GpuSpec, PlanError, plan_memory
from nif_lightning.module import NifLoraModule
from nif_lightning.packing import collate_packed, tokenize_vanilla
from nif_lightning.tensor_bytes import live_tensor_bytes, saved_tensor_bytes

PAPER = Path(__file__).parents[2] / "configs" / "paper"
RECIPES = sorted(PAPER.glob("*.yaml"))

# A small Llama with real proportions (not the 64-wide tiny model): GQA, intermediate ~2.7 H.
# The vocabulary is small because `chunked_loss_bytes` is a bound written for a 16-bit lm_head
# (6 bytes a logit where fp32 needs 4) and at 2,048 tokens its one chunk holds every token: at
# 128 tokens its slack is ~2% of the step's peak, so the comparison tests the activations.
SMALL = {
    "hidden_size": 256,
    "intermediate_size": 688,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "vocab_size": 128,
    "max_position_embeddings": 2048,
}


def _packed_batch(lengths: list[int], vocab: int, seed: int = 0) -> dict:
    rng = random.Random(seed)
    samples = []
    for n in lengths:
        prompt = [rng.randrange(3, vocab) for _ in range(n // 2)]
        response = [rng.randrange(3, vocab) for _ in range(n - n // 2 - 1)]  # + EOS = n
        samples.append(tokenize_vanilla(prompt, response, eos_id=2, cutoff_len=1024))
    return collate_packed(samples)


def _train_config(path, *, dtype: str, checkpointing, micro_batch: int, cutoff: int):
    """Training without DeepSpeed (as on this CPU, and the GPU test's bare step)."""
    return train_config(
        {
            "model": {"path": str(path), "dtype": dtype, "gradient_checkpointing": checkpointing},
            "data": {"micro_batch_size": micro_batch, "cutoff_len": cutoff},
            "trainer": {"strategy": "ddp", "precision": "32-true", "devices": 1},
        }
    )


@pytest.fixture(scope="module")
def small_model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("small")
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(transformers.LlamaConfig(**SMALL)).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def measured(small_model) -> dict:
    """One real training step of the small model, checkpointing off and on, measured twice:
    the bytes it keeps for backward (`saved_tensor_bytes`) and every tensor it holds over forward
    and backward (`live_tensor_bytes`, the CPU's max_memory_allocated); and the plan of the same
    config (2,048 packed tokens = micro-batch 2 x cutoff 1024)."""
    batch = _packed_batch([700, 500, 400, 300, 148], SMALL["vocab_size"])
    assert batch["stats"]["tokens"] == 2048
    out = {}
    for checkpointing in (False, True):
        module = NifLoraModule(str(small_model), gradient_checkpointing=checkpointing)
        module.configure_model()
        module.train()
        with saved_tensor_bytes(module.model) as saved:
            loss = module.training_step(batch, 0)
        loss.backward()
        assert all(p.grad is not None for p in module.model.parameters() if p.requires_grad)
        with live_tensor_bytes() as live:
            module.training_step(batch, 0).backward()
        cfg = _train_config(
            small_model, dtype="float32", checkpointing=checkpointing, micro_batch=2, cutoff=1024
        )
        out[checkpointing] = (saved, live, plan_memory(cfg, "h100-80gb"), module.param_counts())
    return out


@pytest.mark.parametrize("checkpointing", [False, True], ids=["no-ckpt", "ckpt"])
def test_plan_predicts_a_real_steps_peak(measured, checkpointing):
    _, live, plan, (frozen, trainable) = measured[checkpointing]
    assert plan.gradient_checkpointing is checkpointing
    assert (plan.frozen_params, plan.trainable_params) == (frozen, trainable)
    predicted = plan.activations + plan.logits
    assert abs(predicted - live.peak) / live.peak < 0.10, (predicted, live, plan.to_json())


@pytest.mark.parametrize("checkpointing", [False, True], ids=["no-ckpt", "ckpt"])
def test_plan_predicts_the_bytes_a_real_step_saves(measured, checkpointing):
    saved, _, plan, _ = measured[checkpointing]
    kept = plan.activation_moments["at_the_loss"] - plan.logits  # alive when the loss starts
    real = saved.total - saved.recompute  # the recompute comes later, in backward
    assert abs(kept - real) / real < 0.10, (kept, saved)
    if checkpointing:  # inputs kept by the checkpoints, and one layer recomputed in backward
        assert saved.recompute > 0 and all(n > 0 for n in saved.layers)
        assert saved.recompute > 10 * saved.layers[-1]


def test_gradient_checkpointing_cuts_saved_bytes(measured):
    off, on = measured[False][0], measured[True][0]
    assert off.total > 3 * on.total, (off.total, on.total)  # 4 layers: ~1 layer + 4 inputs


def test_the_fused_lora_op_saves_what_the_probe_counts():
    """The probe runs the torch path (on `meta`); CUDA runs the custom op. Both keep x and
    t = x A^T (plus parameters) for backward: the same bytes."""
    from nif_kernels import lora_linear

    torch.manual_seed(0)
    x = torch.randn(37, 100, requires_grad=True)
    w, a, b = torch.randn(75, 100), torch.randn(8, 100), torch.randn(75, 8)
    a.requires_grad_(True)
    b.requires_grad_(True)
    module = torch.nn.Module()
    module.w, module.a, module.b = (torch.nn.Parameter(t, t.requires_grad) for t in (w, a, b))
    bytes_by_backend = {}
    for backend in ("torch", "fused"):
        h = x * 1.0  # a non-leaf input, as inside a model
        with saved_tensor_bytes(module) as saved:
            lora_linear(h, module.w, module.a, module.b, 2.0, backend=backend)
        bytes_by_backend[backend] = saved.total
    assert bytes_by_backend["fused"] == bytes_by_backend["torch"] == 4 * 37 * (100 + 8)


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_each_paper_recipe_fits_8_v100_32gb(recipe):
    cfg = load_config(recipe)
    plan = plan_memory(cfg, "v100-32gb")
    assert plan.world == 8 and plan.fits, plan.table()
    assert plan.gradient_checkpointing  # auto: none of them fits without
    if cfg.trainer.zero_stage == 3:  # 70B: the weights live in host memory
        assert cfg.trainer.offload == "params"
        assert 140e9 < plan.host_bytes_per_node < 142e9  # 70.55B fp16 params on the node
    else:
        assert 13e9 < plan.weights < 17e9  # whole fp16 weights on each GPU


def test_auto_checkpointing_is_on_only_when_needed():
    cfg = load_config(PAPER / "llama3-8b.yaml")
    roomy, tight = plan_memory(cfg, "h100-80gb"), plan_memory(cfg, "v100-32gb")
    assert not roomy.gradient_checkpointing and roomy.fits  # ~76 GB of 85.5
    assert tight.gradient_checkpointing and tight.fits
    assert tight.activations < roomy.activations / 10


def test_zero_stages_split_the_states_and_offload_moves_them():
    cfg = load_config(PAPER / "llama3-8b.yaml")
    cfg.model.gradient_checkpointing = True
    plans = {}
    for stage, offload in ((1, "none"), (2, "none"), (3, "none"), (2, "optimizer"), (3, "params")):
        cfg.trainer.zero_stage, cfg.trainer.offload = stage, offload
        plans[stage, offload] = plan_memory(cfg, "v100-32gb")
    p = plans[2, "none"].trainable_params
    n = plans[2, "none"].frozen_params
    # (half param 2 + half grad 2 + fp32 master 4 + Adam 8) bytes, split over 8 ranks by stage
    assert plans[1, "none"].trainable_states == int(p * (2 + 2 + 12 / 8))
    assert plans[2, "none"].trainable_states == int(p * (2 + (2 + 12) / 8))
    assert plans[3, "none"].trainable_states == int(p * 16 / 8)
    assert plans[2, "optimizer"].trainable_states == int(p * (2 + 2 / 8))
    assert plans[2, "none"].weights == 2 * n
    assert 2 * n // 8 < plans[3, "none"].weights < 2 * n // 8 + 1e9  # + two gathered layers
    assert plans[3, "params"].weights < 1e9 and plans[3, "params"].host_bytes_per_node == 2 * n


def test_plan_json(capsys):
    rc = main(["plan", "--config", str(PAPER / "llama3-8b.yaml"), "--gpu", "v100-32gb", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["fits"] is True
    assert {"gpu", "devices", "per_gpu_gb", "capacity_gb", "fits", "gradient_checkpointing"} <= set(
        out
    )
    terms = out["per_gpu_gb"]
    assert set(terms) == {
        "weights",
        "trainable_states",
        "activations",
        "logits",
        "overhead",
        "total",
    }
    parts = sum(v for k, v in terms.items() if k != "total")
    assert abs(terms["total"] - parts) < 0.01 and out["capacity_gb"] == 34.1
    assert (out["gpu"], out["devices"], out["gradient_checkpointing"]) == ("v100-32gb", 8, True)
    assert out["model"] == "meta-llama/Meta-Llama-3-8B"  # a shipped shape: offline


def test_a_plan_that_does_not_fit_exits_1_and_says_what_would(capsys):
    rc = main(
        ["plan", "--config", str(PAPER / "llama3-70b.yaml"), "--gpu", "v100-16gb", "--devices"]
        + ["1", "--json"]
    )
    out = json.loads(capsys.readouterr().out)
    assert rc == 1 and out["fits"] is False and out["devices"] == 1
    assert out["suggestions"] and any(s["fits"] for s in out["suggestions"])
    fitting = next(s for s in out["suggestions"] if s["fits"])
    assert fitting["total_gb"] <= 16.9
    settings = fitting["settings"]  # the recipe already offloads params: a smaller micro-batch
    assert settings["data.micro_batch_size"] < 8
    assert settings["data.micro_batch_size"] * settings["trainer.accumulate_grad_batches"] == 32


def test_bad_input_exits_2_naming_it(tmp_path, capsys, monkeypatch):
    recipe = str(PAPER / "llama3-8b.yaml")
    assert main(["plan", "--config", recipe, "--gpu", "k80"]) == 2
    assert "`--gpu` 'k80' is unknown" in capsys.readouterr().err
    assert main(["plan", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml does not exist" in capsys.readouterr().err

    def offline(name, *args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", offline)
    config = tmp_path / "hub.yaml"
    config.write_text("model:\n  path: some-org/some-model\n")
    assert main(["plan", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "`model.path` some-org/some-model" in err and "unavailable offline" in err
    assert "Traceback" not in err and "local model folder" in err


def test_the_quickstart_plans_the_tiny_model_it_would_write(tmp_path, capsys):
    config = tmp_path / "quick.yaml"
    quickstart = (PAPER.parents[1] / "configs" / "quickstart.yaml").read_text()
    config.write_text(quickstart.replace("runs/quickstart/base-model", str(tmp_path / "tiny")))
    assert main(["plan", "--config", str(config), "--gpu", "v100-16gb", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["params"]["frozen"] < 10**6 and out["tokens_per_micro_batch"] == 4 * 256
    assert not (tmp_path / "tiny").exists()  # planned, not written


def test_a_hub_id_fetches_its_config_only(monkeypatch):
    asked = []

    def from_pretrained(name, *args, **kwargs):
        asked.append(name)
        return transformers.LlamaConfig(**SMALL)

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", from_pretrained)
    cfg = train_config({"model": {"path": "some-org/some-model"}})
    plan = plan_memory(cfg, GpuSpec("test-gpu", 10**10))
    assert asked == ["some-org/some-model"] and plan.fits
    with pytest.raises(PlanError, match="`--gpu` 'b200' is unknown"):
        plan_memory(cfg, "b200")


# ---- GPU ----


@pytest.mark.gpu
@pytest.mark.parametrize("checkpointing", [False, True], ids=["no-ckpt", "ckpt"])
def test_plan_matches_cuda_peak_memory(tmp_path, checkpointing):
    """A random ~0.5B Llama (hidden 2048) trains a step in fp16 on 8 x 1024 packed tokens; the
    plan's weights + states + activations + loss are within 15% of the allocator's peak (the
    CUDA context and fragmentation are outside `max_memory_allocated`). Measured from what was
    allocated before the model was built: an earlier test's leftovers are not this run's."""
    shape = {
        "hidden_size": 2048,
        "intermediate_size": 5632,
        "num_hidden_layers": 8,
        "num_attention_heads": 16,
        "num_key_value_heads": 4,
        "vocab_size": 32000,
        "max_position_embeddings": 2048,
    }
    with torch.device("cuda"):
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**shape)).half()
    model.save_pretrained(tmp_path / "model")
    del model
    torch.cuda.empty_cache()
    start = torch.cuda.memory_allocated()

    module = NifLoraModule(
        str(tmp_path / "model"), dtype="float16", gradient_checkpointing=checkpointing
    )
    module.configure_model()
    module.cuda().train()
    params = [p for p in module.model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    batch = _packed_batch([1024] * 8, shape["vocab_size"])
    inputs = {k: v.cuda() if torch.is_tensor(v) else v for k, v in batch["inputs"].items()}
    batch = {"inputs": inputs, "stats": batch["stats"]}

    def step():
        module.training_step(batch, 0).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # Adam's states exist from here on, as in every later step
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - start

    cfg = _train_config(
        tmp_path / "model",
        dtype="float16",
        checkpointing=checkpointing,
        micro_batch=8,
        cutoff=1024,
    )
    plan = plan_memory(cfg, GpuSpec.from_cuda(), devices=1)
    predicted = plan.weights + plan.trainable_states + plan.activations + plan.logits
    print(
        f"checkpointing={checkpointing}: predicted {predicted / 1e9:.3f} GB, peak {peak / 1e9:.3f}"
    )
    assert abs(predicted - peak) / peak < 0.15, (predicted, peak, plan.to_json())
