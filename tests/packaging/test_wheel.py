"""What the wheel ships: the kernels as `nif_kernels` (from `kernels/nif_kernels/`) and never
as a top-level `kernels` (Hugging Face's import name), and no test support (the fake provider is
an aiohttp web server). The wheel is built from a copy of the checkout, so nothing is written
into it."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
_NOT_SOURCE = (".git", ".venv", ".whl", "runs", "build", "dist", "__pycache__", "*.egg-info")
_NOT_SOURCE += (".pytest_cache", ".ruff_cache", "lightning_logs", "out")


def _build_wheel(tmp_path: Path) -> zipfile.ZipFile:
    src = tmp_path / "src"
    shutil.copytree(REPO, src, symlinks=True, ignore=shutil.ignore_patterns(*_NOT_SOURCE))
    out = tmp_path / "wheel"
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    cmd += ["--no-index", "-v", "-w", str(out), str(src)]  # -v: the build backend's warnings
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-4000:]
    # No setuptools banner on install (data folders not declared as packages, say).
    assert "BuildBackendWarning" not in done.stdout + done.stderr
    (wheel,) = out.glob("*.whl")
    return zipfile.ZipFile(wheel)


def test_wheel_ships_nif_kernels_and_no_fake_provider(tmp_path):
    wheel = _build_wheel(tmp_path)
    names = wheel.namelist()
    ours = {p.name for p in (REPO / "kernels" / "nif_kernels").glob("*.py")}
    assert ours and {n.split("/")[-1] for n in names if n.startswith("nif_kernels/")} == ours
    (top_level,) = [n for n in names if n.endswith(".dist-info/top_level.txt")]
    assert wheel.read(top_level).decode().split() == ["data_gen", "nif_kernels", "nif_lightning"]
    assert not [n for n in names if n.startswith(("kernels/", "tests/"))]
    assert not [n for n in names if "fake_server" in n or "fake_provider" in n]
    sources = {n: wheel.read(n).decode() for n in names if n.endswith(".py")}
    servers = [
        n for n, text in sources.items() if "aiohttp import web" in text or "aiohttp.web" in text
    ]
    assert servers == []  # aiohttp is a client dependency only
    # `nif run` with no argument runs the quickstart shipped inside the package.
    quickstart = "nif_lightning/configs/quickstart.yaml"
    assert quickstart in names
    assert wheel.read(quickstart) == (REPO / quickstart).read_bytes()
