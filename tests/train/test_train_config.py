"""Every YAML in configs/ loads; unknown keys and bad values are errors naming the key;
`nif train` rejects bad input before loading anything."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from nif_lightning import cli_train
from nif_lightning.config import config_from_dict, load_config

_CONFIGS = sorted((Path(__file__).parents[2] / "configs").rglob("*.yaml"))


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="nif")
    cli_train.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_configs_exist():
    names = {p.name for p in _CONFIGS}
    assert {
        "quickstart.yaml",
        "llama2-7b.yaml",
        "llama3-8b.yaml",
        "mistral-7b.yaml",
        "llama3-70b.yaml",
    } <= names


@pytest.mark.parametrize("path", _CONFIGS, ids=lambda p: p.name)
def test_every_config_loads(path):
    from nif_lightning.data import DataConfig
    from nif_lightning.pipeline import load_run_config

    cfg = load_config(path)  # as `nif train --config` reads it
    assert cfg.model.path
    DataConfig(**cfg.data.options)  # every data key exists
    run = load_run_config(path)  # as `nif run` reads it: every stage's keys checked
    stage = "data-filtered" if run.filter_args is not None else "data"
    assert run.train.data.dir == str(Path(run.train.out) / stage)
    assert run.gen_args[0] == "--corpus"
    if path.parent.name == "paper":
        assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout) == (8, 16, 0.0)
        assert cfg.optim.lr == 5e-5 and cfg.trainer.precision == "16-mixed"
        assert cfg.trainer.accumulate_grad_batches == 4 and cfg.trainer.max_epochs == 3
        assert cfg.trainer.zero_stage == (3 if "70b" in path.name else 2)


def test_unknown_keys_are_named():
    with pytest.raises(ValueError, match=r"lora\.rank"):
        config_from_dict({"lora": {"rank": 8}})
    with pytest.raises(ValueError, match="'optimiser'"):
        config_from_dict({"optimiser": {}})
    with pytest.raises(ValueError, match="trainer.max_steps"):
        config_from_dict({"trainer": {"max_steps": 0}})


def test_overrides_apply(tmp_path):
    cfg = load_config(
        _CONFIGS[0], {"trainer.max_steps": 3, "out": str(tmp_path), "model.path": "x"}
    )
    assert cfg.trainer.max_steps == 3 and cfg.out == str(tmp_path) and cfg.model.path == "x"


def test_train_rejects_bad_input(tmp_path, capsys):
    from nif_lightning.tiny_model import save_tiny_model

    rc = _main(["train", "--model", str(tmp_path / "missing"), "--data", str(tmp_path)])
    assert rc == 2 and "`--model`" in capsys.readouterr().err
    tiny = save_tiny_model(tmp_path / "tiny")
    (tmp_path / "empty").mkdir()
    rc = _main(["train", "--model", str(tiny), "--data", str(tmp_path / "empty")])
    assert rc == 2 and "shards/*.arrow" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("lora:\n  rnak: 4\n")
    rc = _main(["train", "--config", str(bad)])
    assert rc == 2 and "lora.rnak" in capsys.readouterr().err
