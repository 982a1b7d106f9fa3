"""`nif` for the 2-rank DeepSpeed tests, run as a script so that the ranks Lightning launches run
it too.

It lifts DeepSpeed's CPU fp16 refusal (torch's CPU fp16 kernels work), so the real fp16 engine and
dynamic loss scaler run in CI, and, when asked by environment variables:
- NIF_TEST_OVERFLOW=1: the loss is multiplied by 1e30, so every fp16 gradient overflows while
  the loss itself stays finite: DeepSpeed skips each step and halves its loss scale;
- NIF_TEST_CRASH_AT_STEP=N: every rank dies (os._exit, no cleanup, like a lost node) when
  optimizer step N is about to start;
- NIF_TEST_MEMLOG=DIR: each rank samples its anonymous memory (/proc/self/smaps_rollup) while
  the model is built and loaded, then compares every gathered parameter with the checkpoint,
  and writes DIR/rank<R>.json with the baseline, the peak and the comparison;
- NIF_TEST_SGD=1: plain SGD (no momentum) instead of AdamW, under the same schedule, so that an
  update is the learning rate times the clipped gradient (Adam's is nearly blind to its scale);
- NIF_TEST_RECORD=FILE: each rank appends JSON lines to FILE, each with its global rank: one per
  folder it swaps into place (`merge.swap_in`), one per `last.ckpt` it writes (the step, and
  DeepSpeed's micro steps), and one when training ends (Lightning's global step and its
  planned total, the scheduler's step count, DeepSpeed's global, micro and skipped steps).
"""

from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path

from deepspeed.accelerator.cpu_accelerator import CPU_Accelerator

CPU_Accelerator.is_fp16_supported = lambda self: True


def _anonymous_bytes() -> int:
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        if line.startswith("Anonymous:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no Anonymous line in /proc/self/smaps_rollup")


def _log_memory(folder: Path) -> None:
    import nif_lightning.loading as loading

    build = loading.load_causal_lm

    def measured(*args, **kwargs):
        before = peak = _anonymous_bytes()
        done = threading.Event()

        def sample():
            nonlocal peak
            while not done.wait(0.002):
                peak = max(peak, _anonymous_bytes())

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        try:
            model = build(*args, **kwargs)
        finally:
            done.set()
            thread.join()
        peak = max(peak, _anonymous_bytes())
        rank = int(os.environ.get("LOCAL_RANK", "0"))
        record = {"before": before, "peak": peak, "partitioned": loading.zero3_init_active()}
        record.update(_compare_with_checkpoint(model, args[0]))
        (folder / f"rank{rank}.json").write_text(json.dumps(record))
        return model

    loading.load_causal_lm = measured


def _compare_with_checkpoint(model, folder: str) -> dict:
    """Gather each parameter and compare it with the safetensors file, exactly."""
    import deepspeed
    import torch
    from safetensors import safe_open

    from nif_lightning.loading import checkpoint_files

    mismatched, checked = [], 0
    params = dict(model.named_parameters())
    for path in checkpoint_files(folder):
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open is not iterable
                with deepspeed.zero.GatheredParameters([params[name]]):
                    if not torch.equal(params[name].data, f.get_tensor(name)):
                        mismatched.append(name)
                checked += 1
    return {"checked": checked, "mismatched": mismatched}


def _overflow() -> None:
    import nif_lightning.module as module

    loss = module.NifLoraModule.lm_loss

    def blown_up(self, inputs):
        value, n, correct = loss(self, inputs)
        return value * 1e30, n, correct

    module.NifLoraModule.lm_loss = blown_up


def _crash_at(step: int) -> None:
    import nif_lightning.callbacks as callbacks

    start = callbacks.Throughput.on_train_batch_start

    def dying(self, trainer, *args):
        if trainer.global_step == step:
            os._exit(17)
        start(self, trainer, *args)

    callbacks.Throughput.on_train_batch_start = dying


def _sgd() -> None:
    import torch

    import nif_lightning.module as module

    configure = module.NifLoraModule.configure_optimizers

    def with_sgd(self):
        config = configure(self)
        params = [p for group in config["optimizer"].param_groups for p in group["params"]]
        sgd = torch.optim.SGD(params, lr=self.optim.lr)
        schedule = config["lr_scheduler"]["scheduler"].lr_lambdas[0]
        config["optimizer"] = sgd
        config["lr_scheduler"]["scheduler"] = torch.optim.lr_scheduler.LambdaLR(sgd, schedule)
        return config

    module.NifLoraModule.configure_optimizers = with_sgd


def _record(path: Path) -> None:
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    import nif_lightning.callbacks as callbacks
    import nif_lightning.merge as merge

    def write(record: dict) -> None:
        with path.open("a") as f:
            f.write(json.dumps({"rank": rank_zero_only.rank, **record}) + "\n")

    swap_in = merge.swap_in

    def recording_swap_in(staged, dest):
        write({"swapped": Path(dest).name})
        return swap_in(staged, dest)

    merge.swap_in = callbacks.swap_in = recording_swap_in
    save = callbacks.LastCheckpoint.save

    def recording_save(self, trainer):
        if trainer.global_step != self._saved_step:  # what `save` writes
            engine = getattr(trainer.strategy, "deepspeed_engine", None)
            write(
                {
                    "saved": trainer.global_step,
                    "ds_micro_steps": getattr(engine, "micro_steps", None),
                }
            )
        save(self, trainer)

    callbacks.LastCheckpoint.save = recording_save
    end = callbacks.Throughput.on_train_end

    def recording_end(self, trainer, pl_module):
        end(self, trainer, pl_module)
        engine = getattr(trainer.strategy, "deepspeed_engine", None)
        (config,) = trainer.lr_scheduler_configs
        write(
            {
                "global_step": trainer.global_step,
                "estimated_steps": trainer.estimated_stepping_batches,
                "scheduler_steps": config.scheduler.last_epoch,
                "ds_global_steps": getattr(engine, "global_steps", None),
                "ds_micro_steps": getattr(engine, "micro_steps", None),
                "ds_skipped_steps": getattr(engine, "skipped_steps", None),
            }
        )

    callbacks.Throughput.on_train_end = recording_end


if __name__ == "__main__":
    if os.environ.get("NIF_TEST_SGD") == "1":
        _sgd()
    if os.environ.get("NIF_TEST_RECORD"):
        _record(Path(os.environ["NIF_TEST_RECORD"]))
    if os.environ.get("NIF_TEST_CRASH_AT_STEP"):
        _crash_at(int(os.environ["NIF_TEST_CRASH_AT_STEP"]))
    if os.environ.get("NIF_TEST_OVERFLOW") == "1":
        _overflow()
    if os.environ.get("NIF_TEST_MEMLOG"):
        _log_memory(Path(os.environ["NIF_TEST_MEMLOG"]))
    from nif_lightning.cli import main

    sys.exit(main(sys.argv[1:]))
