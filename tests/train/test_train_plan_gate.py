"""The memory plan as `nif train` / `nif run` use it on CUDA: printed, `gradient_checkpointing:
auto` resolved by it, a plan that does not fit refused before anything heavy unless forced."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from nif_lightning.config import train_config
from nif_lightning.memory import GpuSpec, plan_memory
from nif_lightning.recipes.train import PlanDoesNotFit, plan_gate


@pytest.fixture(scope="module")
def cfg(tiny):
    return train_config(
        {
            "model": {"path": str(tiny)},
            "data": {"cutoff_len": 1024, "micro_batch_size": 8},
            "trainer": {"devices": 1},
        }
    )


def _with_checkpointing(cfg, value):
    return dataclasses.replace(
        cfg, model=dataclasses.replace(cfg.model, gradient_checkpointing=value)
    )


def _totals(cfg) -> tuple[int, int]:
    big = GpuSpec("big", 10**15)
    off = plan_memory(_with_checkpointing(cfg, False), big, devices=1)
    on = plan_memory(_with_checkpointing(cfg, True), big, devices=1)
    assert on.total < off.total  # checkpointing is worth something at 8 x 1024 tokens
    return off.total, on.total


def test_without_a_gpu_nothing_is_planned(cfg):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert plan_gate(_with_checkpointing(cfg, "auto")) is False
    assert plan_gate(_with_checkpointing(cfg, True)) is True


def test_auto_turns_checkpointing_on_exactly_when_the_plan_needs_it(cfg):
    off, on = _totals(cfg)
    lines = []
    roomy = GpuSpec("roomy", off + 1)
    assert plan_gate(cfg, gpu=roomy, log=lines.append) is False
    assert lines and "roomy" in lines[0]  # the plan is printed
    tight = GpuSpec("tight", (off + on) // 2)
    assert plan_gate(cfg, gpu=tight, log=lines.append) is True
    # An explicit setting is what the plan assumes, needed or not.
    assert plan_gate(_with_checkpointing(cfg, True), gpu=roomy, log=lines.append) is True


def test_a_plan_that_does_not_fit_is_refused_unless_forced(cfg):
    off, on = _totals(cfg)
    small = GpuSpec("small", on // 2)
    with pytest.raises(PlanDoesNotFit, match="--force") as err:
        plan_gate(cfg, gpu=small, log=lambda _: None)
    assert "small" in str(err.value)
    assert plan_gate(cfg, gpu=small, force=True, log=lambda _: None) is True


def test_nif_train_refuses_before_loading_anything(
    cfg, tmp_path, monkeypatch, capsys, write_builtin_shard
):
    """On a (simulated) GPU too small for the run, `nif train` exits 2 with the plan's verdict
    and writes nothing but the output folder."""
    from nif_lightning import memory, module
    from nif_lightning.cli import main

    write_builtin_shard(tmp_path / "data", 4, 60, 40)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(
        memory.GpuSpec, "from_cuda", classmethod(lambda c, d=None: c("gpu0", 10**8))
    )
    monkeypatch.setattr(module.NifLoraModule, "configure_model", lambda self: pytest.fail("built"))
    code = main(
        [
            "train",
            "--model",
            cfg.model.path,
            "--data",
            str(tmp_path / "data"),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "nif train:" in err and "--force" in err and "Traceback" not in err
    # No checkpoint, log, adapter: only the (released, empty) lock of `nif train`.
    assert [p.name for p in (tmp_path / "out").iterdir()] == [".train.lock"]


def test_a_run_the_planner_cannot_probe_is_refused_unless_forced(cfg, monkeypatch):
    """An architecture the probe cannot run must not block training for good: `--force` trains
    unplanned, with activation checkpointing on under `auto` (the safe side)."""
    from nif_lightning import memory

    def broken(*args, **kwargs):
        raise IndexError("no decoder layers found")

    monkeypatch.setattr(memory, "plan_memory", broken)
    gpu = GpuSpec("gpu0", 10**12)
    with pytest.raises(memory.PlanError, match="could not plan.*--force"):
        plan_gate(cfg, gpu=gpu, log=lambda _: None)
    lines = []
    assert plan_gate(cfg, gpu=gpu, force=True, log=lines.append) is True
    assert "no memory plan" in lines[0]
    assert plan_gate(_with_checkpointing(cfg, False), gpu=gpu, force=True, log=print) is False
