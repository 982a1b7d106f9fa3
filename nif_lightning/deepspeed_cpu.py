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
import signal
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
    descriptor open while it builds), matched by inode, so a path through a link or a relative
    TORCH_EXTENSIONS_DIR matches too; None where /proc cannot tell. Other users' processes
    cannot be read, and are taken not to hold it (the extensions cache is per user)."""
    proc = Path("/proc")
    if not (proc / "self" / "fd").is_dir():
        return None
    try:
        target = lock.stat()
    except FileNotFoundError:
        return []
    pids = []
    for fds in proc.glob("[0-9]*/fd"):
        try:
            entries = list(fds.iterdir())
        except OSError:  # gone, or another user's process
            continue
        for fd in entries:
            try:
                info = fd.stat()
            except OSError:  # closed while we looked
                continue
            if (info.st_dev, info.st_ino) == (target.st_dev, target.st_ino):
                pids.append(int(fds.parent.name))
                break
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
    # A session of its own: on a timeout the compilers it started (ninja, c++) stop with it.
    proc = subprocess.Popen(
        [sys.executable, "-c", _LOAD],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=left)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        lock = lock_path()
        if lock.exists() and _holders(lock) == []:  # our build's, killed just now
            lock.unlink(missing_ok=True)
        raise RuntimeError(
            f"building DeepSpeed's CPU comm op took longer than {limit_s:.0f} s; stopped"
        ) from None
    if proc.returncode != 0:
        tail = (stderr or stdout).strip().splitlines()[-15:]
        raise RuntimeError("building DeepSpeed's CPU comm op failed:\n" + "\n".join(tail))
    return time.monotonic() - start
