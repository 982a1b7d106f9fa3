"""Our pieces wired as a lab wires them: `LightningCLI(NifLoraModule, NifDataModule)` with
`fit --config` and the README's YAML (callbacks `AdapterExport` and `AdapterMerge` by class
path), on the tiny model, from a working folder where the model is a relative path.

Checked: the adapter is stock PEFT, records its base as an absolute path (so
`AutoPeftModelForCausalLM.from_pretrained(adapter)` works from another folder) and `merged/` is
exactly PEFT's `merge_and_unload` of it.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("jsonargparse")

README = Path(__file__).parents[2] / "README.md"


def readme_yaml() -> str:
    """The YAML block of the README's LightningCLI example."""
    section = README.read_text(encoding="utf-8").split("## Use it from your own Lightning code")[1]
    after = section.split("LightningCLI(NifLoraModule, NifDataModule)", 1)[1]
    return re.search(r"```yaml\n(.*?)```", after, re.S).group(1)


@pytest.fixture
def trained(tiny, tmp_path, write_builtin_shard, monkeypatch):
    """The CLI run in `tmp_path/work`, which holds what `nif run` leaves in `runs/quickstart/`
    (the tiny model as `base-model/`, and `data/`); every path in the YAML is relative to it."""
    from lightning.pytorch.cli import LightningCLI

    from nif_lightning import NifDataModule, NifLoraModule

    work = tmp_path / "work"
    quickstart = work / "runs" / "quickstart"
    shutil.copytree(tiny, quickstart / "base-model")
    write_builtin_shard(quickstart / "data", rows=24, prompt_chars=120, completion_chars=80)
    config = readme_yaml()
    assert "class_path: nif_lightning.AdapterExport" in config
    assert "class_path: nif_lightning.AdapterMerge" in config
    (work / "my.yaml").write_text(config)
    monkeypatch.chdir(work)
    monkeypatch.setattr(sys, "argv", ["main.py", "fit", "--config", "my.yaml"])
    LightningCLI(NifLoraModule, NifDataModule)  # what the README's main.py holds
    return work


def test_lightning_cli_fit_exports_a_portable_adapter_and_its_exact_merge(
    trained, tmp_path, monkeypatch
):
    from peft import AutoPeftModelForCausalLM, PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    adapter, merged_dir = trained / "runs/cli/adapter", trained / "runs/cli/merged"
    base_dir = trained / "runs/quickstart/base-model"
    config = json.loads((adapter / "adapter_config.json").read_text())
    # Issue 13.3: the base as an absolute path, not relative to the folder the run started in.
    assert config["base_model_name_or_path"] == str(base_dir)
    assert config["r"] == 8 and config["lora_alpha"] == 16
    weights = load_file(str(adapter / "adapter_model.safetensors"))
    assert any(v.abs().sum() > 0 for k, v in weights.items() if "lora_B" in k)  # trained
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {
        p.name for p in merged_dir.iterdir()
    }
    assert not [p.name for p in (trained / "runs/cli").iterdir() if p.name.startswith(".")]

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # stock PEFT, from a folder where `base-model` means nothing
    auto = AutoPeftModelForCausalLM.from_pretrained(str(adapter))
    base = AutoModelForCausalLM.from_pretrained(str(base_dir))
    reference = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    merged = AutoModelForCausalLM.from_pretrained(str(merged_dir))
    expected, got = reference.state_dict(), merged.state_dict()
    assert expected.keys() == got.keys()
    for name in expected:  # the same merge of the same tensors: bit for bit
        assert torch.equal(got[name], expected[name]), name
    ids = torch.randint(3, 500, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(auto(ids).logits, merged(ids).logits, atol=1e-5, rtol=1e-5)
