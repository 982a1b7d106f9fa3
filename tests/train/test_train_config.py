"""Every YAML in configs/ loads; unknown keys and bad values are errors naming the key;
`nif train` rejects bad input before loading anything; every YAML key is also a flag."""

from __future__ import annotations

from pathlib import Path

import pytest

from data_gen.schema import ConfigError
from nif_lightning.cli import main as _main
from nif_lightning.config import load_config, load_run_config, train_config

_CONFIGS = sorted((Path(__file__).parents[2] / "configs").rglob("*.yaml"))


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
    cfg = load_config(path)  # as `nif train --config` reads it
    assert cfg.model.path
    run = load_run_config(path)  # as `nif run` reads it: every stage's keys checked
    stage = "data-filtered" if run.filter is not None else "data"
    assert run.train.data.dir == str(Path(run.train.out) / stage)
    assert run.gen.corpus and run.gen.out == str(Path(run.train.out) / "data")
    if path.parent.name == "paper":
        assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout) == (8, 16, 0.0)
        assert cfg.optim.lr == 5e-5 and cfg.trainer.precision == "16-mixed"
        assert cfg.trainer.accumulate_grad_batches == 4 and cfg.trainer.max_epochs == 3
        assert cfg.trainer.zero_stage == (3 if "70b" in path.name else 2)


def test_unknown_keys_are_named():
    with pytest.raises(ConfigError, match=r"lora\.rank"):
        train_config({"lora": {"rank": 8}})
    with pytest.raises(ConfigError, match="`optimiser`"):
        train_config({"optimiser": {}})
    with pytest.raises(ConfigError, match="trainer.max_steps"):
        train_config({"trainer": {"max_steps": 0}})
    with pytest.raises(ConfigError, match=r"data\.cutof_len"):
        train_config({"data": {"cutof_len": 256}})  # `data` is typed like every section


def test_every_problem_reported_at_once_with_its_key_path():
    with pytest.raises(ConfigError) as err:
        train_config(
            {
                "lora": {"rank": 8, "r": "x"},
                "data": {"cutof_len": 256},
                "trainer": {"max_steps": "many"},
                "optimiser": {},
            }
        )
    text = str(err.value)
    for key in ("lora.rank", "lora.r", "data.cutof_len", "trainer.max_steps", "optimiser"):
        assert key in text
    assert len(err.value.problems) == 5


def test_numbers_yaml_leaves_as_strings_are_numbers(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("optim:\n  lr: 5e-3\ntrainer:\n  devices: '2'\n  val_check_interval: 60\n")
    cfg = load_config(p)  # PyYAML reads `5e-3` (no dot) as the string "5e-3"
    assert cfg.optim.lr == 5e-3 and isinstance(cfg.optim.lr, float)
    assert cfg.trainer.devices == 2 and cfg.trainer.val_check_interval == 60
    with pytest.raises(ConfigError, match="model.fused_lora"):
        train_config({"model": {"fused_lora": "yes please"}})


def test_every_key_is_a_flag_and_the_flag_wins(tmp_path, capsys):
    from data_gen.schema import dotted_given
    from nif_lightning.cli import build_parser
    from nif_lightning.config import TrainConfig

    args = build_parser().parse_args(
        [
            "train",
            "--lora.r",
            "16",
            "--max-steps",
            "7",
            "--no-model.fused-lora",
            "--lora.targets",
            "q_proj",
            "--lora.targets",
            "v_proj",
            "--optim.lr",
            "1e-4",
        ]
    )
    quickstart = next(p for p in _CONFIGS if p.name == "quickstart.yaml")
    cfg = load_config(quickstart, dotted_given(args, TrainConfig))
    assert cfg.lora.r == 16 and cfg.trainer.max_steps == 7 and cfg.model.fused_lora is False
    assert cfg.lora.targets == ["q_proj", "v_proj"] and cfg.optim.lr == 1e-4
    assert cfg.data.cutoff_len == 256  # from the YAML, untouched


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


@pytest.mark.parametrize(("interval", "batches"), [(3, 12), (0.25, 0.25)])
def test_an_int_validation_interval_counts_optimizer_steps(tmp_path, interval, batches):
    """Lightning counts `val_check_interval` in micro-batches: an int of steps becomes N x as
    many, so validation (and the `last.ckpt` after it) falls on a step boundary."""
    from nif_lightning.recipes.train import build_trainer

    cfg = load_config(
        None,
        {
            "model.path": "unused",
            "trainer.accumulate_grad_batches": 4,
            "trainer.val_check_interval": interval,
            "out": str(tmp_path),
        },
    )
    assert build_trainer(cfg, tmp_path).val_check_interval == batches
