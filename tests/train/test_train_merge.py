"""Tiny model reload, PEFT adapter merge ("lora" vs stock PEFT, "lora-base" vs the formula),
and the `nif tiny-model` / `nif merge` CLI, including bad-input errors."""

from __future__ import annotations

import argparse

import pytest
import torch

from nif_lightning import cli_train
from nif_lightning.merge import lora_deltas, merge_adapter
from nif_lightning.tiny_model import save_tiny_model

_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="module")
def adapter(tiny, tmp_path_factory):
    """A PEFT adapter with non-zero B (fresh LoRA has B = 0, which would hide merge bugs)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny)
    peft_model = get_peft_model(
        model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=_TARGETS)
    )
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    out = tmp_path_factory.mktemp("adapter")
    peft_model.save_pretrained(out)
    return out


def main(argv: list[str]) -> int:
    """Our subcommands through argparse exactly as `nif` wires them (`nif_lightning.cli`)."""
    parser = argparse.ArgumentParser(prog="nif")
    cli_train.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def test_tiny_model_reloads_like_a_checkpoint(tiny):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny)
    model = AutoModelForCausalLM.from_pretrained(tiny)
    assert tok.eos_token_id is not None and tok.pad_token_id is not None
    assert tok.eos_token_id != tok.pad_token_id
    assert 260 <= len(tok) <= 512 and model.config.vocab_size == len(tok)
    assert model.config.hidden_size == 64 and model.config.num_hidden_layers == 2
    text = "The for statement is used to iterate over the elements of a sequence."
    ids = tok(text)["input_ids"]
    assert tok.decode(ids) == text
    assert len(ids) < len(text)  # BPE merged something: not a byte-per-token tokenizer
    assert (tiny / "model.safetensors").is_file()


def test_lora_merge_matches_stock_peft(tiny, adapter, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ids = torch.randint(0, 500, (2, 17))
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny), adapter)
    base_logits = _logits(AutoModelForCausalLM.from_pretrained(tiny), ids)
    ref = _logits(peft_model, ids)
    assert not torch.allclose(ref, base_logits, atol=1e-4)  # the adapter does something
    out = merge_adapter(tiny, adapter, tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(out)
    torch.testing.assert_close(_logits(merged, ids), ref, atol=1e-5, rtol=1e-5)
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()


def test_lora_base_merge_equals_formula(tiny, adapter, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    other = save_tiny_model(tmp_path / "other", seed=7)  # same architecture, other weights
    assert (
        main(
            [
                "merge",
                "--base",
                str(tiny),
                "--adapter",
                str(adapter),
                "--into",
                str(other),
                "--out",
                str(tmp_path / "m"),
            ]
        )
        == 0
    )
    merged = load_file(str(tmp_path / "m" / "model.safetensors"))
    target = load_file(str(other / "model.safetensors"))
    raw = load_file(str(adapter / "adapter_model.safetensors"))
    key = "model.layers.1.mlp.down_proj.weight"
    a = raw["base_model.model.model.layers.1.mlp.down_proj.lora_A.weight"]
    b = raw["base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"]
    torch.testing.assert_close(merged[key], target[key] + (16 / 8) * b @ a)
    deltas = lora_deltas(adapter)
    assert len(deltas) == 7 * 2  # 7 projections x 2 layers
    for name, delta in deltas.items():
        torch.testing.assert_close(merged[name], target[name] + delta)
    untouched = "model.embed_tokens.weight"
    torch.testing.assert_close(merged[untouched], target[untouched])
    AutoModelForCausalLM.from_pretrained(tmp_path / "m")  # loads as a normal checkpoint


def test_merge_rejects_an_adapter_that_does_not_fit(tiny, adapter, tmp_path, capsys):
    from nif_lightning.tiny_model import TinyModelConfig

    wide = save_tiny_model(
        tmp_path / "wide", cfg=TinyModelConfig(hidden_size=32, intermediate_size=64)
    )
    rc = main(
        [
            "merge",
            "--base",
            str(tiny),
            "--adapter",
            str(adapter),
            "--into",
            str(wide),
            "--out",
            str(tmp_path / "m"),
        ]
    )
    assert rc == 2
    err = capsys.readouterr().err
    assert "does not fit the target model" in err and "shape" in err
    assert not (tmp_path / "m" / "model.safetensors").exists()


def test_merge_rejects_missing_inputs(tiny, tmp_path, capsys):
    rc = main(
        [
            "merge",
            "--base",
            str(tiny),
            "--adapter",
            str(tmp_path / "nope"),
            "--out",
            str(tmp_path / "m"),
        ]
    )
    assert rc == 2 and "`--adapter`" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    rc = main(
        [
            "merge",
            "--base",
            str(tiny),
            "--adapter",
            str(tmp_path / "empty"),
            "--out",
            str(tmp_path / "m"),
        ]
    )
    assert rc == 2 and "adapter_model.safetensors" in capsys.readouterr().err


def test_tiny_model_cli(tmp_path):
    assert main(["tiny-model", "--out", str(tmp_path / "t"), "--seed", "3"]) == 0
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {
        p.name for p in (tmp_path / "t").iterdir()
    }
