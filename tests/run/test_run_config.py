"""One schema per command: a run config is checked whole — unknown keys at any depth, wrong types,
bad values, missing files and keys — before any stage starts, every problem at once; `nif gen`
and `nif run` agree on what changes the data; the embedded default works from any folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from data_gen.schema import ConfigError
from nif_lightning.cli import main
from nif_lightning.config import load_run_config, run_config
from nif_lightning.recipes.run import RunState, fingerprints, run_pipeline


def _raw(tmp_path: Path, **sections) -> dict:
    raw = {
        "out": str(tmp_path / "run"),
        "gen": {"corpus": "builtin", "num_docs": 12},
        "model": {"path": str(tmp_path / "run" / "base-model"), "tiny": True},
        "data": {"cutoff_len": 128},
        "trainer": {"max_steps": 2},
    }
    raw.update(sections)
    return raw


def _write(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize(
    "gen, key",
    [
        ({"corpus": "builtin", "dry_runn": False}, "gen.dry_runn"),  # a misspelt false
        ({"corpus": "builtin", "batch_wait": False}, "gen.batch_wait"),  # the field, not the key
        ({"corpus": "builtin", "quiet": "no"}, "gen.quiet"),  # a boolean is a boolean
    ],
)
def test_no_key_is_dropped_silently(tmp_path, gen, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        run_config(_raw(tmp_path, gen=gen))


def test_data_keys_are_checked_before_gen_runs(tmp_path, capsys):
    path = _write(tmp_path, _raw(tmp_path, data={"cutof_len": 256}))
    assert main(["run", str(path)]) == 2
    assert "data.cutof_len" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # nothing ran, nothing was spent


def test_every_problem_is_reported_at_once_with_its_key_path(tmp_path):
    raw = _raw(
        tmp_path,
        gen={"corpus": "builtin", "num_docs": "many", "out": "x"},
        filter={"judge_teacher": "nobody"},
        lora={"rank": 4},
        optim={"lr": "fast"},
        preview={"max_new_tokens": 0},
        extra=1,
    )
    with pytest.raises(ConfigError) as err:
        run_config(raw)
    text = str(err.value)
    for key in (
        "gen.num_docs",
        "gen.out",
        "filter.judge_teacher",
        "lora.rank",
        "optim.lr",
        "preview",
        "extra",
    ):
        assert key in text, key
    assert len(err.value.problems) >= 7


def test_yaml_strings_that_are_numbers_are_numbers(tmp_path):
    cfg = run_config(
        _raw(
            tmp_path,
            optim={"lr": "5e-3"},
            gen={"corpus": "builtin", "num_docs": "12", "temperature": "0.5"},
        )
    )
    assert cfg.train.optim.lr == 5e-3 and cfg.gen.num_docs == 12
    assert cfg.gen.teacher.temperature == 0.5


def test_gen_and_run_share_one_definition_of_what_changes_the_data(tmp_path):
    base = run_config(_raw(tmp_path))
    faster = run_config(
        _raw(
            tmp_path,
            gen={
                "corpus": "builtin",
                "num_docs": 12,
                "concurrency": 64,
                "max_retries": 2,
                "quiet": True,
            },
        )
    )
    more = run_config(_raw(tmp_path, gen={"corpus": "builtin", "num_docs": 13}))
    assert fingerprints(faster) == fingerprints(base)  # operational: not a new run
    assert fingerprints(more)["gen"] != fingerprints(base)["gen"]

    state = RunState(tmp_path)
    for stage in ("gen", "train"):
        state.finish(stage, fingerprints(base)[stage])
    state = RunState(tmp_path)
    assert state.done("gen", fingerprints(faster)["gen"])
    assert state.done("train", fingerprints(faster)["train"])
    with pytest.raises(ConfigError, match=r"gen\.num_docs"):
        state.done("gen", fingerprints(more)["gen"])


def test_world_checks_fail_before_any_stage(tmp_path, monkeypatch):
    monkeypatch.delenv("NIF_NO_SUCH_KEY", raising=False)
    raw = _raw(
        tmp_path,
        gen={
            "corpus": str(tmp_path / "missing.jsonl"),
            "teacher": "openai",
            "model": "m",
            "api_key_env": "NIF_NO_SUCH_KEY",
        },
    )
    cfg = run_config(raw)  # building is pure: nothing is looked up yet
    with pytest.raises(ConfigError) as err:
        run_pipeline(cfg)
    text = str(err.value)
    assert "missing.jsonl" in text and "NIF_NO_SUCH_KEY" in text
    assert not (tmp_path / "run").exists()


def test_the_embedded_default_works_from_any_folder(tmp_path, monkeypatch):
    import nif_lightning
    from nif_lightning.cli_run import default_config

    path = default_config()
    assert path.is_file() and Path(nif_lightning.__file__).parent in path.parents
    monkeypatch.chdir(tmp_path)
    cfg = load_run_config(path)
    assert cfg.gen.corpus == "builtin" and cfg.train.model.tiny
    assert cfg.run_dir == Path("runs/quickstart")  # relative to where `nif run` is started
    assert not os.listdir(tmp_path)
