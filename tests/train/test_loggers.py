"""Metrics and loggers: `trainer.logger` sends our metrics (loss, tokens/s, non-padding share,
MFU, loss scale) to the chosen logger (tensorboard, read back from its event files) besides the
CSV the report reads; a class path builds any Lightning logger; a logger that cannot be built is
a config error. And the metrics cost no host-device sync per step: `Throughput` and
`LossScaleGuard` read the clock, the loss and the scale only when a logging interval closes, and
tokens/s is the interval's tokens over the interval's time."""

from __future__ import annotations

import csv

import lightning as L
import pytest
import torch

from data_gen.schema import ConfigError
from nif_lightning import callbacks
from nif_lightning.callbacks import LossScaleGuard, Throughput
from nif_lightning.config import LoraConfig, OptimConfig, train_config
from nif_lightning.module import NifLoraModule

OUR_METRICS = {"train/loss", "perf/tokens_per_s", "perf/non_pad", "perf/mfu", "train/loss_scale"}


def _fake_gpu_metrics(monkeypatch):
    # MFU needs a GPU of known peak and the loss scale fp16: stand-ins, so that CPU runs show
    # that these reach the loggers too.
    monkeypatch.setattr(callbacks, "peak_tflops", lambda device: 1.0)
    monkeypatch.setattr(callbacks, "_loss_scale", lambda trainer: 512.0)


def _rows(out):
    [path] = (out / "logs").rglob("metrics.csv")
    return list(csv.DictReader(path.open()))


def test_nif_train_logs_our_metrics_to_tensorboard_and_csv(
    tiny, tmp_path, write_builtin_shard, monkeypatch
):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from nif_lightning.recipes.train import run_training

    _fake_gpu_metrics(monkeypatch)
    data = write_builtin_shard(tmp_path / "data", rows=16, prompt_chars=100, completion_chars=60)
    out = tmp_path / "run"
    cfg = train_config(
        {
            "model": {"path": str(tiny), "fused_lora": False, "packed_attention": False},
            "data": {"dir": str(data), "cutoff_len": 64, "micro_batch_size": 2},
            "trainer": {
                "devices": 1,
                "max_steps": 4,
                "log_every_n_steps": 2,
                "val_check_interval": 100,
                "logger": "tensorboard",
            },
            "out": str(out),
        }
    )
    run_training(cfg)

    rows = _rows(out)
    logged = {k for r in rows for k, v in r.items() if v}
    assert logged >= OUR_METRICS, logged
    assert sorted({int(r["step"]) for r in rows if r.get("perf/tokens_per_s")}) == [1, 3]
    [events] = (out / "tensorboard").rglob("events.out.tfevents.*")
    acc = EventAccumulator(str(events.parent))
    acc.Reload()
    assert set(acc.Tags()["scalars"]) >= OUR_METRICS, acc.Tags()["scalars"]
    tb = {e.step: e.value for e in acc.Scalars("perf/tokens_per_s")}
    in_csv = {int(r["step"]): float(r["perf/tokens_per_s"]) for r in rows if r["perf/tokens_per_s"]}
    assert tb.keys() == in_csv.keys()
    for step, value in in_csv.items():
        assert tb[step] == pytest.approx(value, rel=1e-6)  # the same numbers in both


def test_a_logger_by_class_path_and_loggers_that_cannot_be_built(tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    from nif_lightning.recipes.train import build_loggers

    setting = {
        "class_path": "lightning.pytorch.loggers.CSVLogger",
        "init_args": {"save_dir": str(tmp_path / "extra"), "name": "lab"},
    }
    cfg = train_config({"trainer": {"logger": setting}})
    csv_logger, chosen = build_loggers(cfg.trainer.logger, tmp_path)
    assert isinstance(chosen, CSVLogger) and chosen.root_dir == str(tmp_path / "extra" / "lab")
    assert [type(x) for x in build_loggers("csv", tmp_path)] == [CSVLogger]
    with pytest.raises(ConfigError, match="trainer.logger: lightning.pytorch.loggers.NoSuch"):
        build_loggers("lightning.pytorch.loggers.NoSuch", tmp_path)
    with pytest.raises(ConfigError, match="trainer.logger: no_such_pkg.Logger"):
        build_loggers({"class_path": "no_such_pkg.Logger"}, tmp_path)
    bad_args = {**setting, "init_args": {"no_such_arg": 1}}
    with pytest.raises(ConfigError, match="cannot be built"):
        build_loggers(bad_args, tmp_path)
    with pytest.raises(ConfigError, match="`trainer.logger` must be one of csv, tensorboard"):
        train_config({"trainer": {"logger": "tensorbord"}})


# ---- no host-device sync per step ---------------------------------------------------------------

TOKENS = 2 * 16  # per micro-batch


def _batches(n: int):
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        ids = torch.randint(2, 500, (2, 16), generator=g)
        labels = ids.clone()
        labels[:, :8] = -100
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
        stats = {"tokens": TOKENS - 4, "slots": TOKENS, "examples": 2, "loss_tokens": 16}
        out.append({"inputs": inputs, "stats": stats})
    return out


def test_metrics_read_the_device_only_when_a_logging_interval_closes(tiny, tmp_path, monkeypatch):
    _fake_gpu_metrics(monkeypatch)
    clock_reads: list[int] = []
    trainer_box: list[L.Trainer] = []

    def fake_clock(device):  # each read is the sync point; 10 s apart
        clock_reads.append(trainer_box[0].global_step)
        return 10.0 * len(clock_reads)

    monkeypatch.setattr(callbacks, "_clock", fake_clock)

    # Every device-to-host read a tensor offers, counted while our callbacks' per-batch hooks run.
    host_reads: list[tuple[str, int]] = []
    inside: list[str] = []
    for method in ("item", "tolist", "__float__", "__int__", "__bool__", "cpu", "numpy"):
        original = getattr(torch.Tensor, method)

        def counted(self, *args, _original=original, _method=method, **kwargs):
            if inside:
                host_reads.append((inside[-1], trainer_box[0].global_step))
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, method, counted)
    for cls in (LossScaleGuard, Throughput):
        hook = cls.on_train_batch_end

        def watched(self, *args, _hook=hook, _name=cls.__name__, **kwargs):
            inside.append(_name)
            try:
                return _hook(self, *args, **kwargs)
            finally:
                inside.pop()

        monkeypatch.setattr(cls, "on_train_batch_end", watched)

    module = NifLoraModule(
        str(tiny),
        LoraConfig(r=4, alpha=8),
        OptimConfig(lr=1e-2, warmup_ratio=0.0),
        fused_lora=False,
        packed_attention=False,
    )
    trainer = L.Trainer(
        max_steps=9,
        accumulate_grad_batches=2,
        log_every_n_steps=3,
        accelerator="cpu",
        devices=1,
        logger=L.pytorch.loggers.CSVLogger(tmp_path, name="logs"),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[LossScaleGuard(), Throughput()],
    )
    trainer_box.append(trainer)
    loader = torch.utils.data.DataLoader(_batches(18), batch_size=None)
    trainer.fit(module, train_dataloaders=loader)

    # 18 micro-batches, 9 optimizer steps: the clock at the start and when steps 3, 6, 9 end.
    assert clock_reads == [0, 3, 6, 9]
    assert {step for _, step in host_reads} == {3, 6, 9}, host_reads
    assert {name for name, _ in host_reads} == {"LossScaleGuard"}  # its one all-reduced flag
    rows = [r for r in _rows(tmp_path) if r.get("perf/tokens_per_s")]
    assert [int(r["step"]) for r in rows] == [2, 5, 8]  # Lightning's 0-based steps 3, 6, 9
    for row in rows:
        # The interval's 3 steps x 2 micro-batches over the 10 s between two clock reads.
        assert float(row["perf/tokens_per_s"]) == pytest.approx(6 * (TOKENS - 4) / 10.0)
        assert float(row["perf/non_pad"]) == pytest.approx((TOKENS - 4) / TOKENS)
        assert float(row["perf/mfu"]) > 0 and float(row["train/loss_scale"]) == 512.0


def test_a_non_finite_loss_stops_training_at_the_next_check(tiny, tmp_path, monkeypatch):
    import nif_lightning.module as module_py

    loss = module_py.NifLoraModule.lm_loss

    def nan_from_step_4(self, inputs):
        value, n, correct = loss(self, inputs)
        return (value * float("nan") if self.trainer.global_step >= 4 else value), n, correct

    monkeypatch.setattr(module_py.NifLoraModule, "lm_loss", nan_from_step_4)
    module = NifLoraModule(str(tiny), fused_lora=False, packed_attention=False)
    trainer = L.Trainer(
        max_steps=20,
        log_every_n_steps=3,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[LossScaleGuard()],
    )
    loader = torch.utils.data.DataLoader(_batches(20), batch_size=None)
    with pytest.raises(RuntimeError, match="NaN or inf between steps 3 and 6: training diverged"):
        trainer.fit(module, train_dataloaders=loader)


def test_nif_train_never_saves_a_diverged_model(tiny, tmp_path, write_builtin_shard, monkeypatch):
    """NaN losses from step 5 on, checkpoints every 2 steps, no logging check in sight: the save
    at step 6 is refused before anything is written, so `last.ckpt` stays step 4's and the
    exported adapter stays finite."""
    import nif_lightning.module as module_py
    from nif_lightning.recipes.train import run_training

    loss = module_py.NifLoraModule.lm_loss

    def nan_from_step_5(self, inputs):
        value, n, correct = loss(self, inputs)
        return (value * float("nan") if self.trainer.global_step >= 4 else value), n, correct

    monkeypatch.setattr(module_py.NifLoraModule, "lm_loss", nan_from_step_5)
    data = write_builtin_shard(tmp_path / "data", rows=16, prompt_chars=100, completion_chars=60)
    out = tmp_path / "run"
    cfg = train_config(
        {
            "model": {"path": str(tiny), "fused_lora": False, "packed_attention": False},
            "data": {"dir": str(data), "cutoff_len": 64, "micro_batch_size": 1, "packing": False},
            "trainer": {
                "devices": 1,
                "max_steps": 8,
                "log_every_n_steps": 50,
                "val_check_interval": 100,
                "checkpoint_every_n_steps": 2,
            },
            "out": str(out),
        }
    )
    with pytest.raises(RuntimeError, match="between steps 4 and 6: training diverged"):
        run_training(cfg)
    saved = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")
    assert saved["global_step"] == 4
    from safetensors.torch import load_file

    adapter = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert all(torch.isfinite(v).all() for v in adapter.values())
    for key, value in saved["state_dict"].items():  # the adapter is the step-4 checkpoint's
        name = key.removeprefix("model.").replace(".default", "")
        torch.testing.assert_close(adapter[name], value, rtol=0, atol=0)
    assert not (out / "merged").exists()


@pytest.mark.parametrize("name", ["wandb", "mlflow"])
def test_wandb_offline_and_mlflow_write_local_files(name, tmp_path, monkeypatch):
    """Run where the package is installed (not in the `test` extra): wandb with
    WANDB_MODE=offline and MLflow's file store need no network."""
    pytest.importorskip(name)
    from nif_lightning.recipes.train import build_loggers

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.chdir(tmp_path)
    _, chosen = build_loggers(train_config({"trainer": {"logger": name}}).trainer.logger, tmp_path)
    chosen.log_metrics({"perf/tokens_per_s": 123.0}, step=3)
    chosen.finalize("success")
    if name == "wandb":
        import wandb

        wandb.finish()
        assert list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    else:
        [metric] = (tmp_path / "mlruns").rglob("metrics/perf/tokens_per_s")
        assert metric.read_text().split()[1:] == ["123.0", "3"]
