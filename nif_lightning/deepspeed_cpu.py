"""DeepSpeed's CPU comm op (`deepspeed_shm_comm`): built once, and never an endless wait.

On CPU ranks DeepSpeed's torch backend JIT-builds a shared-memory all-reduce op the first time a
process group starts (torch's cpp_extension: about 1 min on 2 idle cores, 5-8 min on busy ones),
into the torch extensions cache. The build holds `<cache>/deepspeed_shm_comm/lock` (torch's
`FileBaton`), and every other process, and every later load of the built op, sleeps while that
file exists, with no limit. A build killed half way (a test timeout, Ctrl-C) leaves the file
behind, and from then on every DeepSpeed run on the machine hangs at start.

`check_build_lock` runs before DeepSpeed starts on CPU ranks: a lock that a live process on this
machine holds open (another rank building) is waited for, up to a limit; a lock that no process
holds is named in a `StaleBuildLock` error with the command that clears it. `build` builds the op
in a process of its own with a time limit, so that a slow build happens once, outside any run or
test (the test suite calls it before its first test), and removes the lock if it had to kill it.
GPU ranks use NCCL and never build this op.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from data_gen.store import FolderError

NAME = "deepspeed_shm_comm"
BUILD_LIMIT_S = 1800.0  # 5-8 min measured on 2 busy cores; generous on purpose
_LOAD = (
    "from deepspeed.accelerator import get_accelerator\n"
    "get_accelerator().create_op_builder('ShareMemCommBuilder').load()\n"
)


class StaleBuildLock(FolderError):
    """A build lock of DeepSpeed's CPU comm op that no process holds (or holds past the limit)."""


def lock_path() -> Path:
    """Torch's build folder for the op (TORCH_EXTENSIONS_DIR or its default cache) / `lock`."""
    from torch.utils.cpp_extension import _get_build_directory

    return Path(_get_build_directory(NAME, verbose=False)) / "lock"


def _holders(lock: Path) -> list[int] | None:
    """Pids of this machine's processes that hold `lock` open (a `FileBaton` keeps its file
    descriptor open while it builds); None where /proc cannot tell."""
    proc = Path("/proc")
    if not (proc / "self" / "fd").is_dir():
        return None
    target, pids = str(lock), []
    for fds in proc.glob("[0-9]*/fd"):
        try:
            if any(os.readlink(fd) == target for fd in fds.iterdir()):
                pids.append(int(fds.parent.name))
        except OSError:  # gone, or another user's process
            continue
    return pids


def check_build_lock(
    wait_s: float = BUILD_LIMIT_S, poll_s: float = 1.0, log=lambda message: None
) -> None:
    """Return once no build lock of the op is left; wait while a live process builds, up to
    `wait_s`. Raises `StaleBuildLock` for a lock that no process holds, or one held too long."""
    lock = lock_path()
    deadline = time.monotonic() + wait_s
    told = False
    while lock.exists():
        holders = _holders(lock)
        if holders == [] and lock.exists():
            time.sleep(min(poll_s, 0.5))  # a build that just started or ended: look again
            if lock.exists() and _holders(lock) == []:
                raise StaleBuildLock(_stale_message(lock))
            continue
        if time.monotonic() > deadline:
            who = f"pid {', '.join(map(str, holders))}" if holders else "an unknown process"
            raise StaleBuildLock(
                f"DeepSpeed's CPU comm op build lock {lock} is still held by {who} after "
                f"{wait_s:.0f} s; if that build is stuck, stop it and remove the lock: rm {lock}"
            )
        if not told:
            who = f" (pid {', '.join(map(str, holders))})" if holders else ""
            log(f"waiting for the build of DeepSpeed's CPU comm op{who} to finish: {lock}")
            told = True
        time.sleep(poll_s)


def _stale_message(lock: Path) -> str:
    try:
        since = datetime.fromtimestamp(lock.stat().st_mtime).isoformat(sep=" ", timespec="seconds")
    except OSError:
        since = "an unknown time"
    return (
        f"DeepSpeed's CPU comm op build lock {lock} is held by no process: a build killed at "
        f"{since} left it, and DeepSpeed would wait on it forever. Remove it and run again: "
        f"rm {lock}"
    )


def build(limit_s: float = BUILD_LIMIT_S, log=lambda message: None) -> float:
    """Build the op (or load it, when built already) in a process of its own; returns the
    seconds it took. Raises `StaleBuildLock` (see `check_build_lock`) or `RuntimeError` when the
    build fails or runs past `limit_s` (its lock is then removed: the build was ours)."""
    start = time.monotonic()
    check_build_lock(wait_s=limit_s, log=log)
    env = {**os.environ, "DS_ACCELERATOR": "cpu"}
    left = max(1.0, limit_s - (time.monotonic() - start))
    try:
        done = subprocess.run(
            [sys.executable, "-c", _LOAD], env=env, capture_output=True, text=True, timeout=left
        )
    except subprocess.TimeoutExpired:
        lock = lock_path()
        if lock.exists() and _holders(lock) == []:  # our build's, killed just now
            lock.unlink(missing_ok=True)
        raise RuntimeError(
            f"building DeepSpeed's CPU comm op took longer than {limit_s:.0f} s; stopped"
        ) from None
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-15:]
        raise RuntimeError("building DeepSpeed's CPU comm op failed:\n" + "\n".join(tail))
    return time.monotonic() - start
