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
  and writes DIR/rank<R>.json with the baseline, the peak and the comparison.
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


if __name__ == "__main__":
    if os.environ.get("NIF_TEST_CRASH_AT_STEP"):
        _crash_at(int(os.environ["NIF_TEST_CRASH_AT_STEP"]))
    if os.environ.get("NIF_TEST_OVERFLOW") == "1":
        _overflow()
    if os.environ.get("NIF_TEST_MEMLOG"):
        _log_memory(Path(os.environ["NIF_TEST_MEMLOG"]))
    from nif_lightning.cli import main

    sys.exit(main(sys.argv[1:]))
