"""`nif train` end to end on CPU with the tiny model: the exact files it writes, the loss falls,
the merged model equals stock PEFT's merge, and `--resume` continues from last.ckpt.

The data are a hand-written shard in the Arrow IPC file format, read by the real DataModule.
"""

from __future__ import annotations

import argparse
import csv

import pytest
import torch

from nif_lightning import cli_train


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="nif")
    cli_train.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.fixture
def data_dir(tmp_path, write_builtin_shard):
    return write_builtin_shard(tmp_path / "data", rows=24, prompt_chars=120, completion_chars=80)


def test_nif_train_writes_adapter_merged_and_lowers_loss(tmp_path, data_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from nif_lightning.tiny_model import save_tiny_model

    tiny = save_tiny_model(tmp_path / "tiny")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "optim:\n  lr: 1.0e-2\n  warmup_ratio: 0.0\ntrainer:\n  val_check_interval: 5\n"
        "  log_every_n_steps: 1\nmodel:\n  fused_lora: false\n  packed_attention: false\n"
    )
    out = tmp_path / "run"
    argv = [
        "train",
        "--config",
        str(cfg),
        "--model",
        str(tiny),
        "--data",
        str(data_dir),
        "--out",
        str(out),
        "--max-steps",
        "10",
        "--devices",
        "1",
        "--precision",
        "32-true",
    ]
    assert _main(argv) == 0
    assert {p.name for p in (out / "adapter").iterdir()} == {
        "adapter_config.json",
        "adapter_model.safetensors",
        "README.md",
    }
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {
        p.name for p in (out / "merged").iterdir()
    }
    assert (out / "checkpoints" / "last.ckpt").is_file()
    rows = list(csv.DictReader(next((out / "logs").rglob("metrics.csv")).open()))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(losses) >= 5 and sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses
    assert any(r.get("perf/tokens_per_s") for r in rows) and any(r.get("val/ppl") for r in rows)
    ids = torch.randint(2, 500, (2, 11))
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny), out / "adapter")
    merged = AutoModelForCausalLM.from_pretrained(out / "merged")
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, peft(ids).logits, atol=1e-5, rtol=1e-5)

    assert _main([*argv[:-6], "--max-steps", "14", "--devices", "1", "--resume"]) == 0
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")
    assert ckpt["global_step"] == 14
