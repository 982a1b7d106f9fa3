"""Models by folder or Hub id are checked before any heavy work: a missing folder, a folder that
is not a model, and a Hub id the Hub will not serve (gated, offline) each fail with a clear error
naming the flag; `nif run` fails that way before its `gen` stage starts."""

from __future__ import annotations

import pytest
import transformers
import yaml

from nif_lightning.cli import main
from nif_lightning.hub import check_model
from nif_lightning.tiny_model import save_tiny_model


@pytest.fixture
def gated_hub(monkeypatch):
    """A Hub that serves `ok/model` and refuses everything else as a gated repo."""
    asked = []

    def from_pretrained(name, *args, **kwargs):
        asked.append(name)
        if name == "ok/model":
            return transformers.LlamaConfig()
        raise OSError(f"You are trying to access a gated repo.\nMake sure to log in: {name}")

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", from_pretrained)
    return asked


def test_local_folders_and_hub_ids(tmp_path, gated_hub):
    check_model(save_tiny_model(tmp_path / "tiny"))  # a model folder: fine
    check_model("ok/model")  # served by the Hub: fine, only its config was fetched
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"`--base` .*empty has no config.json"):
        check_model(tmp_path / "empty", what="`--base`")
    with pytest.raises(FileNotFoundError, match="neither a local folder nor a Hub id"):
        check_model(str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match=r"meta-llama/Meta-Llama-3-8B.*gated repo.*login"):
        check_model("meta-llama/Meta-Llama-3-8B")
    assert gated_hub == ["ok/model", "meta-llama/Meta-Llama-3-8B"]


def test_nif_run_checks_the_model_before_gen(tmp_path, gated_hub, capsys):
    run = tmp_path / "run"
    config = {
        "out": str(run),
        "gen": {"corpus": "builtin", "teacher": "original", "num_docs": 10},
        "model": {"path": "meta-llama/Meta-Llama-3-8B"},
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert "`model.path` meta-llama/Meta-Llama-3-8B" in err and "HF_TOKEN" in err
    assert not (run / "data").exists()  # no stage ran


def test_nif_merge_and_eval_name_the_bad_model(tmp_path, gated_hub, capsys):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (adapter / name).write_text("{}")  # the model is checked before these are read
    argv = ["merge", "--base", "org/gated", "--adapter", str(adapter), "--out", str(tmp_path / "m")]
    assert main(argv) == 2
    assert "org/gated" in capsys.readouterr().err
    assert main(["eval", "org/gated", "--out", str(tmp_path / "e"), "--suite", "ifeval"]) == 2
    assert "`MODEL_DIR` org/gated" in capsys.readouterr().err
