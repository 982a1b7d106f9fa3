"""DeepSpeed's CPU comm op: a build lock that a killed build left is named at once, a live build
is waited for up to a limit, and a build run past its limit leaves no lock behind.

Each test points TORCH_EXTENSIONS_DIR at its own folder, so the real cache is never touched."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nif_lightning import deepspeed_cpu

# Holds the lock file open as torch's FileBaton does while it builds, for `seconds`, then
# removes it, as FileBaton.release does.
_HOLDER = """
import os, sys, time
fd = os.open(sys.argv[1], os.O_CREAT | os.O_EXCL)
print("held", flush=True)
time.sleep(float(sys.argv[2]))
os.close(fd)
os.remove(sys.argv[1])
"""


@pytest.fixture
def lock(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext"))
    path = deepspeed_cpu.lock_path()
    assert path == tmp_path / "ext" / deepspeed_cpu.NAME / "lock"
    return path


def _hold(lock: Path, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(lock), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_no_lock_returns_at_once(lock):
    start = time.monotonic()
    deepspeed_cpu.check_build_lock(wait_s=60)
    assert time.monotonic() - start < 5


def test_a_lock_no_process_holds_is_named_with_the_way_out(lock):
    lock.touch()  # what a build killed mid-way leaves
    start = time.monotonic()
    with pytest.raises(deepspeed_cpu.StaleBuildLock) as err:
        deepspeed_cpu.check_build_lock(wait_s=600)
    assert time.monotonic() - start < 10  # named, not waited on
    message = str(err.value)
    assert str(lock) in message and f"rm {lock}" in message and "held by no process" in message
    assert lock.exists()  # ours to name, not to delete: the user decides


@pytest.mark.parametrize("through", ["the path", "a link"])
def test_a_live_build_is_waited_for(lock, tmp_path, monkeypatch, through):
    if through == "a link":  # the cache reached through a link (a linked $HOME, say)
        (tmp_path / "link").symlink_to(tmp_path / "ext", target_is_directory=True)
        monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "link"))
        lock.parent.mkdir(parents=True, exist_ok=True)
    said = []
    holder = _hold(lock, 2.0)  # opened through the real path
    try:
        deepspeed_cpu.check_build_lock(wait_s=60, poll_s=0.2, log=said.append)
    finally:
        holder.wait(timeout=30)
    assert not lock.exists()
    assert len(said) == 1 and f"pid {holder.pid}" in said[0]
    assert str(deepspeed_cpu.lock_path()) in said[0]


def test_a_build_held_past_the_limit_is_an_error_naming_its_holder(lock):
    holder = _hold(lock, 60.0)
    try:
        with pytest.raises(deepspeed_cpu.StaleBuildLock, match=f"still held by pid {holder.pid}"):
            deepspeed_cpu.check_build_lock(wait_s=1.0, poll_s=0.2)
    finally:
        holder.kill()
        holder.wait(timeout=30)


def test_a_build_past_its_limit_is_stopped_and_leaves_no_lock(lock, monkeypatch):
    # A "build" that takes the lock as FileBaton does and never finishes.
    stuck = f"import os, time\nos.open({str(lock)!r}, os.O_CREAT | os.O_EXCL)\ntime.sleep(600)\n"
    monkeypatch.setattr(deepspeed_cpu, "_LOAD", stuck)
    with pytest.raises(RuntimeError, match="longer than 3 s"):
        deepspeed_cpu.build(limit_s=3)
    assert not lock.exists()


def test_a_failed_build_says_why(lock, monkeypatch):
    monkeypatch.setattr(deepspeed_cpu, "_LOAD", "raise SystemExit('ninja: build stopped')")
    with pytest.raises(RuntimeError, match="ninja: build stopped"):
        deepspeed_cpu.build(limit_s=60)


def test_nif_train_under_deepspeed_on_cpu_stops_at_a_stale_lock_in_one_line(
    tmp_path, tiny, write_builtin_shard
):
    """The strategy checks before DeepSpeed starts: exit 2 and one line, instead of a hang."""
    pytest.importorskip("deepspeed")  # it stops before any build: the op need not be built
    ext = tmp_path / "ext" / deepspeed_cpu.NAME
    ext.mkdir(parents=True)
    (ext / "lock").touch()
    data = write_builtin_shard(tmp_path / "data", rows=8, prompt_chars=80, completion_chars=80)
    config = tmp_path / "cfg.yaml"
    config.write_text(
        json.dumps(
            {
                "model": {"path": str(tiny)},
                "data": {"dir": str(data), "cutoff_len": 64},
                "trainer": {"strategy": "deepspeed", "devices": 1, "max_steps": 1},
                "out": str(tmp_path / "out"),
            }
        )
    )
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path / "ext"), "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(
        [sys.executable, "-m", "nif_lightning.cli", "train", "--config", str(config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if "build lock" in line]
    assert len(lines) == 1 and str(ext / "lock") in lines[0], done.stderr[-3000:]
