"""`nif train` against kills, re-runs and mistakes: `last.ckpt` on a step/time schedule that does
not wait for validation, one run per OUT (a lock; checkpoints of an earlier run need `--resume`),
SIGTERM saves and exits 143 (and `--resume` continues), `merged/` appears whole or not at all,
and device counts beyond this machine are refused up front.

Runs use the tiny model on CPU through `run_training` (or a real `nif` process for signals).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from data_gen.schema import ConfigError
from nif_lightning.config import check_train_inputs, train_config


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, write_builtin_shard):
    folder = tmp_path_factory.mktemp("robust") / "data"
    return write_builtin_shard(folder, rows=24, prompt_chars=120, completion_chars=80)


def _cfg(tiny, data_dir, out, **trainer):
    return train_config(
        {
            "model": {"path": str(tiny), "fused_lora": False, "packed_attention": False},
            "data": {"dir": str(data_dir), "cutoff_len": 64, "micro_batch_size": 2},
            "optim": {"lr": 1e-2, "warmup_ratio": 0.0},
            "trainer": {"devices": 1, "log_every_n_steps": 1, **trainer},
            "out": str(out),
        }
    )


def _step(path: Path) -> int:
    if path.is_dir():  # DeepSpeed
        return int(path.joinpath("latest").read_text().split("step")[-1])
    return torch.load(path, weights_only=False, map_location="cpu")["global_step"]


class _Boom(RuntimeError):
    pass


def _crash_at(monkeypatch, step: int) -> None:
    """Every batch of optimizer step `step` raises (like a kill between steps)."""
    import nif_lightning.callbacks as callbacks

    start = callbacks.Throughput.on_train_batch_start

    def dying(self, trainer, *args):
        if trainer.global_step == step:
            raise _Boom(f"killed at step {step}")
        start(self, trainer, *args)

    monkeypatch.setattr(callbacks.Throughput, "on_train_batch_start", dying)


def test_last_checkpoint_follows_the_step_interval_not_validation(
    tiny, data_dir, tmp_path, monkeypatch
):
    from nif_lightning.recipes.train import run_training

    out = tmp_path / "run"
    # Validation every 100 steps: never within this run.
    cfg = _cfg(tiny, data_dir, out, max_steps=7, val_check_interval=100, checkpoint_every_n_steps=2)
    _crash_at(monkeypatch, 5)
    with pytest.raises(_Boom):
        run_training(cfg)
    assert _step(out / "checkpoints" / "last.ckpt") == 4  # the last interval step
    monkeypatch.undo()
    run_training(cfg, resume=True)
    assert _step(out / "checkpoints" / "last.ckpt") == 7


def test_last_checkpoint_follows_the_time_interval(tiny, data_dir, tmp_path, monkeypatch):
    from nif_lightning.recipes.train import run_training

    out = tmp_path / "run"
    # 1e-6 minutes: due after every step.
    cfg = _cfg(
        tiny, data_dir, out, max_steps=5, val_check_interval=100, checkpoint_every_minutes=1e-6
    )
    _crash_at(monkeypatch, 3)
    with pytest.raises(_Boom):
        run_training(cfg)
    assert _step(out / "checkpoints" / "last.ckpt") == 3


def test_checkpoint_settings_are_checked():
    with pytest.raises(ValueError, match="checkpoint_every_n_steps"):
        train_config({"trainer": {"checkpoint_every_n_steps": 0}})
    with pytest.raises(ValueError, match="checkpoint_every_minutes"):
        train_config({"trainer": {"checkpoint_every_minutes": -1}})


def test_a_folder_with_checkpoints_needs_resume(tiny, data_dir, tmp_path):
    from nif_lightning.recipes.train import OutputFolderInUse, run_training

    out = tmp_path / "run"
    cfg = _cfg(tiny, data_dir, out, max_steps=2)
    run_training(cfg)
    before = sorted(p.name for p in (out / "checkpoints").iterdir())
    with pytest.raises(OutputFolderInUse, match="--resume") as err:
        run_training(cfg)
    assert isinstance(err.value, ValueError) and "new" in str(err.value)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == before  # no last-v1.ckpt


def test_a_second_run_on_one_folder_is_refused(tiny, data_dir, tmp_path):
    from nif_lightning.recipes.train import OutputFolderInUse, TrainLock, run_training

    out = tmp_path / "run"
    with TrainLock(out), pytest.raises(OutputFolderInUse, match=f"pid {os.getpid()}") as err:
        run_training(_cfg(tiny, data_dir, out, max_steps=2))
    assert str(out) in str(err.value)
    assert not (out / "checkpoints").exists()
    with TrainLock(out):  # released by the holder: free again
        pass


def test_slurm_requeue_resumes_from_the_newest_checkpoint(tmp_path, monkeypatch):
    from nif_lightning.recipes.train import OutputFolderInUse, checkpoint_to_resume

    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    assert checkpoint_to_resume(tmp_path, resume=False) is None  # nothing there: a fresh run
    (ckpts / "last.ckpt").write_bytes(b"x")
    with pytest.raises(OutputFolderInUse):
        checkpoint_to_resume(tmp_path, resume=False)
    assert checkpoint_to_resume(tmp_path, resume=True) == ckpts / "last.ckpt"
    hpc = tmp_path / "hpc_ckpt_1.ckpt"  # Lightning's SLURM requeue checkpoint
    hpc.write_bytes(b"x")
    os.utime(ckpts / "last.ckpt", (1, 1))
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")  # a requeued job re-runs the same command
    assert checkpoint_to_resume(tmp_path, resume=False) == hpc


def test_resume_accepts_what_training_would_resume_from(tmp_path, data_dir, tiny, monkeypatch):
    """`nif train --resume` checks for the checkpoint `run_training` would pick (last.ckpt or a
    SLURM hpc_ckpt), not for last.ckpt alone."""
    from nif_lightning import cli_train
    from nif_lightning.recipes import train as recipe

    started = []
    monkeypatch.setattr(recipe, "run_training", lambda cfg, **kw: started.append(kw) or tmp_path)
    parser = argparse.ArgumentParser(prog="nif")
    cli_train.register(parser.add_subparsers(dest="command"))
    out = tmp_path / "out"
    argv = ["train", "--model", str(tiny), "--data", str(data_dir), "--out", str(out), "--resume"]
    args = parser.parse_args(argv)
    with pytest.raises(ConfigError, match="no checkpoint to continue"):
        args.func(args)  # nothing to resume
    out.mkdir()
    (out / "hpc_ckpt_3.ckpt").write_bytes(b"x")
    assert args.func(args) == 0 and started == [{"resume": True, "force": False}]


def test_merged_is_replaced_only_when_complete(tmp_path, tiny, monkeypatch):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, PreTrainedModel

    from nif_lightning.merge import merge_adapter

    adapter = tmp_path / "adapter"
    peft_model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny), LoraConfig(r=4, target_modules=["q_proj"])
    )
    peft_model.save_pretrained(adapter)
    out = tmp_path / "merged"
    save = PreTrainedModel.save_pretrained

    def half_then_die(self, folder, *args, **kwargs):
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / "config.json").write_text("{}")  # half written
        raise KeyboardInterrupt

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", half_then_die)
    with pytest.raises(KeyboardInterrupt):
        merge_adapter(tiny, adapter, out)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]  # nothing half written

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", save)
    merge_adapter(tiny, adapter, out)
    first = sorted(p.name for p in out.iterdir())
    assert "model.safetensors" in first
    monkeypatch.setattr(PreTrainedModel, "save_pretrained", half_then_die)
    with pytest.raises(KeyboardInterrupt):
        merge_adapter(tiny, adapter, out)
    assert sorted(p.name for p in out.iterdir()) == first  # the old one, untouched
    monkeypatch.setattr(PreTrainedModel, "save_pretrained", save)
    merge_adapter(tiny, adapter, out)  # and a complete new one replaces it
    assert sorted(p.name for p in out.iterdir()) == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "merged"]


# A `nif` process whose every step takes 0.3 s and reports its number in STEP_FILE.
_SLOW_NIF = """
import os, sys, time
import nif_lightning.callbacks as callbacks
start = callbacks.Throughput.on_train_batch_start
def slow(self, trainer, *args):
    open(os.environ["STEP_FILE"], "w").write(str(trainer.global_step))
    time.sleep(0.3)
    start(self, trainer, *args)
callbacks.Throughput.on_train_batch_start = slow
from nif_lightning.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_sigterm_saves_a_checkpoint_and_resume_continues(tiny, data_dir, tmp_path):
    out, steps = tmp_path / "run", tmp_path / "step"
    argv = [sys.executable, "-c", _SLOW_NIF, "train", "--model", str(tiny), "--data"]
    argv += [str(data_dir), "--out", str(out), "--devices", "1", "--max-steps", "40"]
    argv += ["--trainer.val-check-interval", "100", "--no-model.fused-lora"]
    env = {**os.environ, "STEP_FILE": str(steps), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (steps.exists() and steps.read_text() and int(steps.read_text()) >= 3):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    err = err.decode()
    assert proc.returncode == 143, err[-3000:]
    saved = _step(out / "checkpoints" / "last.ckpt")
    assert saved >= 3, saved
    assert "--resume" in err and "Traceback" not in err, err[-3000:]
    assert not (out / "merged").exists()  # an interrupted run is not merged
    argv[argv.index("40")] = str(saved + 2)
    done = subprocess.run([*argv, "--resume"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert _step(out / "checkpoints" / "last.ckpt") == saved + 2
    assert (out / "merged" / "model.safetensors").is_file()


def test_more_devices_than_this_machine_has_is_refused(tiny, data_dir, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cpus = len(os.sched_getaffinity(0))
    cfg = _cfg(tiny, data_dir, "unused", devices=cpus + 5)
    problems = check_train_inputs(cfg, flags=True)
    assert len(problems) == 1 and "`trainer.devices`" in problems[0], problems
    assert f"{cpus + 5}" in problems[0] and "\n" not in problems[0]
    assert check_train_inputs(_cfg(tiny, data_dir, "unused", devices=cpus)) == []


def test_deepspeed_without_the_package_is_one_line(tiny, data_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "deepspeed", None)  # `import deepspeed` fails
    cfg = _cfg(tiny, data_dir, "unused", strategy="deepspeed")
    problems = check_train_inputs(cfg)
    assert len(problems) == 1 and "deepspeed" in problems[0] and "pip" in problems[0], problems
