"""`nif run` end to end on CPU: all stages and the report; SIGKILL after gen, then resume without
redoing gen; a finished run re-run is all skips; a changed or invalid config is refused up front."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from nif_lightning.config import load_run_config
from nif_lightning.recipes.run import run_pipeline


def _config(tmp_path: Path, **sections) -> Path:
    run = tmp_path / "run"
    raw = {
        "out": str(run),
        "seed": 0,
        "gen": {"corpus": "builtin", "teacher": "original", "num_docs": 40},
        "model": {"path": str(run / "base-model"), "tiny": True},
        "data": {"cutoff_len": 128},
        "optim": {"lr": 1e-3, "warmup_ratio": 0.0},
        "trainer": {
            "strategy": "auto",
            "precision": "32-true",
            "max_steps": 6,
            "val_check_interval": 3,
            "log_every_n_steps": 1,
        },
        "preview": {"prompts": ["Explain a list.", "Write a poem."], "max_new_tokens": 6},
    }
    for name, value in sections.items():
        raw[name] = value
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _wait_for(predicate, proc, timeout=180.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if proc.poll() is not None:
            return predicate()
        time.sleep(0.05)
    return False


def _gen_done(run: Path) -> bool:
    state = run / "run_state.json"
    try:
        return "gen" in json.loads(state.read_text())["stages"]
    except (FileNotFoundError, json.JSONDecodeError):
        return False


def test_killed_after_gen_resumes_without_redoing_it_and_reports(tmp_path):
    cfg_path = _config(tmp_path)
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "nif_lightning.cli", "run", str(cfg_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "TRITON_INTERPRET": "1"},
    )
    try:
        assert _wait_for(lambda: _gen_done(run), proc), "gen stage never finished"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    shards = sorted((run / "data" / "shards").glob("*.arrow"))
    assert shards
    before = {p: p.stat().st_mtime_ns for p in shards}

    logs: list[str] = []
    report = run_pipeline(load_run_config(cfg_path), log=logs.append)

    assert "[nif run] gen: already complete, skipped" in logs
    assert {p: p.stat().st_mtime_ns for p in shards} == before  # gen did not run again
    assert sorted((run / "data" / "shards").glob("*.arrow")) == shards
    assert report["data"]["done"] == 40
    training = report["training"]
    assert training["last_step"] >= 5 and training["logged_steps"] >= 5
    assert training["train_loss_end"] < training["train_loss_start"]
    assert "val_loss_last" in training and training["tokens_per_s_median"] > 0
    assert [s["prompt"] for s in report["previews"]] == ["Explain a list.", "Write a poem."]
    for name in ("report.md", "report.json", "loss.png", "previews.json"):
        assert (run / name).is_file(), name
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    assert (run / "merged" / "config.json").is_file()
    md = (run / "report.md").read_text()
    assert "| done | 40 |" in md and "train_loss_end" in md

    # Finished: a re-run skips every stage; a changed training config is refused, naming it.
    logs.clear()
    run_pipeline(load_run_config(cfg_path), log=logs.append)
    assert [line for line in logs if "skipped" in line] == [
        f"[nif run] {stage}: already complete, skipped" for stage in ("gen", "train", "preview")
    ]
    changed = _config(tmp_path, trainer={"strategy": "auto", "max_steps": 9})
    with pytest.raises(ValueError, match=r"stage `train`.*trainer\.max_steps"):
        run_pipeline(load_run_config(changed), log=logs.append)


@pytest.mark.parametrize(
    "section, value, bad_key",
    [
        ("gen", {"corpus": "builtin", "num_dcos": 5}, "gen.num_dcos"),
        ("lora", {"rank": 8}, "lora.rank"),
        ("preview", {"prompt": ["x"]}, "preview.prompt"),
        ("bogus", {}, "bogus"),
    ],
)
def test_invalid_config_fails_before_any_stage_naming_the_key(tmp_path, section, value, bad_key):
    from nif_lightning.cli import main

    cfg_path = _config(tmp_path, **{section: value})
    with pytest.raises(ValueError, match=bad_key.replace(".", r"\.")):
        load_run_config(cfg_path)
    assert main(["run", str(cfg_path)]) == 2
    assert not (tmp_path / "run").exists()  # nothing ran


def test_a_run_with_the_filter_stage_starts_from_an_empty_folder(tmp_path):
    """The quickstart's shape (gen -> filter -> train): the filter's source is written by gen, so
    the checks before any stage must not ask for it (they did: `nif run` on a fresh machine
    stopped at once with "DIR runs/quickstart/data does not exist")."""
    cfg = load_run_config(_config(tmp_path, filter={"quiet": True}, preview={"prompts": []}))
    report = run_pipeline(cfg, log=lambda *a: None)
    run = tmp_path / "run"
    assert (run / "data-filtered" / "shards").is_dir() and (run / "adapter").is_dir()
    assert report["stages"]["filter"] != "not configured"


def test_the_shipped_quickstart_passes_its_checks_in_an_empty_folder(tmp_path, monkeypatch):
    from importlib.resources import files

    from nif_lightning.config import validate_run

    monkeypatch.chdir(tmp_path)
    cfg = load_run_config(files("nif_lightning") / "configs" / "quickstart.yaml")
    assert cfg.filter is not None
    validate_run(cfg)  # raises ConfigError on a problem
    (tmp_path / "runs" / "quickstart").mkdir(parents=True)
    (tmp_path / "runs" / "quickstart" / "data-filtered").write_text("")
    with pytest.raises(ValueError, match="data-filtered is a file"):
        validate_run(cfg)  # the filter's output is still checked


def test_data_dir_must_be_what_the_run_writes(tmp_path):
    cfg_path = _config(tmp_path, data={"dir": str(tmp_path / "elsewhere")})
    with pytest.raises(ValueError, match="data.dir"):
        load_run_config(cfg_path)


def test_a_training_process_of_another_gpu_stops_after_training(tmp_path, monkeypatch):
    """On several GPUs Lightning re-runs `nif run` once per extra device: that process must skip
    the finished data stages, join training, and leave the rest (state, previews, report) to
    rank 0 — and it must refuse to run a data stage itself."""
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    import nif_lightning.recipes.run as pipeline

    cfg = load_run_config(_config(tmp_path))
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    with pytest.raises(RuntimeError, match="stage `gen` is not done and this is a process of rank"):
        run_pipeline(cfg)
    assert not (tmp_path / "run" / "data").exists()

    monkeypatch.setattr(rank_zero_only, "rank", 0)
    pipeline._STAGE_FUNCS["gen"](cfg)  # rank 0 ran the data stage ...
    pipeline.RunState(cfg.run_dir).finish("gen", pipeline.fingerprints(cfg)["gen"], seconds=0.0)
    trained = []
    monkeypatch.setitem(pipeline._STAGE_FUNCS, "train", lambda c, checkpointing: trained.append(1))
    # ... and now the process of rank 1 arrives.
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    assert run_pipeline(cfg) is None and trained == [1]
    run_state = json.loads((cfg.run_dir / "run_state.json").read_text())
    assert "train" not in json.dumps(run_state)  # recorded by rank 0 only
    assert not (cfg.run_dir / "report.md").exists()
