"""`--trainer.profiler pytorch` writes a Chrome trace and an op table into OUT/profile/, and our
LoRA op is in them under its own name (on CPU the op runs its torch path, which is named by a
`record_function` range of its own)."""

from __future__ import annotations

import argparse
import json

from nif_lightning import cli_train


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="nif")
    cli_train.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def _train(tmp_path, tiny, write_builtin_shard, profiler: str):
    data = write_builtin_shard(tmp_path / "data", rows=16, prompt_chars=80, completion_chars=40)
    out = tmp_path / "run"
    argv = ["train", "--model", str(tiny), "--data", str(data), "--out", str(out)]
    argv += ["--max-steps", "6", "--devices", "1", "--precision", "32-true"]
    argv += ["--model.fused-lora", "--trainer.profiler", profiler]  # fused_lora: the default
    assert _main(argv) == 0
    return out / "profile"


def test_pytorch_profiler_writes_trace_and_op_table_with_our_op(
    tmp_path, tiny, write_builtin_shard
):
    profile = _train(tmp_path, tiny, write_builtin_shard, "pytorch")
    # One window per stage: a Chrome trace and an op table each, never one per 5 steps.
    assert {p.name for p in profile.glob("training-*")} == {
        "training-rank0.pt.trace.json",
        "training-rank0-ops.txt",
    }
    events = json.loads((profile / "training-rank0.pt.trace.json").read_text())["traceEvents"]
    steps = {e["name"] for e in events if e.get("name", "").startswith("ProfilerStep#")}
    assert len(steps) == 3  # the active steps only: the trace stays small
    assert any(e.get("name") == "nif::lora_fwd.torch" for e in events)
    assert "nif::lora_fwd.torch" in (profile / "training-rank0-ops.txt").read_text()


def test_simple_profiler_writes_a_report(tmp_path, tiny, write_builtin_shard):
    profile = _train(tmp_path, tiny, write_builtin_shard, "simple")
    (report,) = profile.glob("fit-profile*.txt")
    assert "run_training_epoch" in report.read_text()
