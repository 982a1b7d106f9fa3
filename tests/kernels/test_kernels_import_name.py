"""The import name `kernels` is Hugging Face's: transformers probes it on every model import
(`is_kernels_available`, then `from kernels import CUDAProperties, ...` in `hub_kernels`). Ours
is installed as `nif_lightning.kernels` only, so with HF's package on the path transformers gets
HF's and training still gets our fused LoRA path, and no metadata of ours claims the name.

Each check runs in a fresh interpreter: transformers caches what it found at first import."""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
KERNELS_VERSION = "0.18.2"  # transformers' KERNELS_MIN_VERSION: the oldest it accepts

_WITH_STAND_IN = """
import json, sys
import kernels
from transformers import LlamaForCausalLM  # noqa: F401  (runs the hub-kernels probe)
from transformers.utils.import_utils import is_kernels_available

import nif_lightning.kernels as ours
from nif_lightning.kernels import peft_patch
from nif_lightning.module import NifLoraModule

calls = []
real = peft_patch.lora_linear
peft_patch.lora_linear = lambda *a, **k: calls.append(1) or real(*a, **k)

module = NifLoraModule(sys.argv[1], packed_attention=False)
module.configure_model()
from peft.tuners.lora.layer import Linear as LoraLinear
layers = [m for m in module.model.modules() if type(m) is LoraLinear]
fused = [
    m for m in layers
    if getattr(m.__dict__.get("forward"), "__func__", None) is not None
    and getattr(m.__dict__["forward"].__func__, "func", None) is peft_patch._fused_forward
]
ids = [[1, 2, 3, 4, 5, 6]]
import torch
inputs = {"input_ids": torch.tensor(ids), "labels": torch.tensor(ids)}
loss, _, _ = module.lm_loss(inputs)
loss.backward()
grads = [p.grad is not None for n, p in module.model.named_parameters() if "lora_" in n]
print(json.dumps({
    "hf_available": is_kernels_available(),
    "kernels_file": kernels.__file__,
    "ours_has_use_fused_lora": hasattr(ours, "use_fused_lora"),
    "lora_layers": len(layers),
    "fused_layers": len(fused),
    "fused_calls": len(calls),
    "lora_grads": all(grads) and len(grads) > 0,
}))
"""

_FROM_CHECKOUT = """
import importlib.util, json, sys
from transformers import LlamaForCausalLM  # noqa: F401
from transformers.utils.import_utils import is_kernels_available

print(json.dumps({
    "origin": importlib.util.find_spec("kernels").origin,
    "hf_available": is_kernels_available(),
    "side_effects": sorted(m for m in sys.modules if m.startswith("kernels.")),
}))
"""


def _hub_kernels_names() -> list[str]:
    """Every name transformers imports from `kernels` at import time (hub_kernels.py)."""
    import transformers.integrations

    source = Path(transformers.integrations.__file__).with_name("hub_kernels.py").read_text()
    return sorted(
        {
            alias.name
            for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.ImportFrom) and node.module == "kernels"
            for alias in node.names
        }
    )


def _write_stand_in(site: Path) -> Path:
    """A distribution named `kernels` at KERNELS_VERSION whose names are harmless: classes that
    take anything, decorators that return what they wrap."""
    package = site / "kernels"
    package.mkdir(parents=True)
    lines = [
        '"""Stand-in for Hugging Face\'s kernels (tests only)."""',
        f'__version__ = "{KERNELS_VERSION}"',
        "class _StandIn:",
        "    def __init__(self, *args, **kwargs): pass",
        "    def __getattr__(self, name): return _StandIn()",
        "def _decorator(*args, **kwargs): return lambda obj: obj",
    ]
    for name in _hub_kernels_names():
        lines.append(f"{name} = _StandIn" if name[0].isupper() else f"{name} = _decorator")
    (package / "__init__.py").write_text("\n".join(lines) + "\n")
    info = site / f"kernels-{KERNELS_VERSION}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: kernels\nVersion: {KERNELS_VERSION}\n"
    )
    return package


def _run(script: str, *args: str, cwd: Path, pythonpath: Path | None) -> dict:
    env = dict(os.environ)
    if pythonpath is not None:  # first, ahead of any PYTHONPATH already set
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(pythonpath), env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_stand_in_covers_what_transformers_imports():
    names = _hub_kernels_names()
    assert {"CUDAProperties", "get_kernel", "kernelize", "use_kernel_forward_from_hub"} <= set(
        names
    )


def test_hf_kernels_on_the_path_and_our_fused_lora_both_work(tmp_path, tiny):
    stand_in = _write_stand_in(tmp_path / "site")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    got = _run(_WITH_STAND_IN, str(tiny), cwd=elsewhere, pythonpath=tmp_path / "site")
    assert got["hf_available"], "transformers should see the stand-in at a version it accepts"
    assert Path(got["kernels_file"]) == stand_in / "__init__.py"
    assert got["ours_has_use_fused_lora"]
    assert got["lora_layers"] > 0 and got["fused_layers"] == got["lora_layers"]
    assert got["fused_calls"] == got["lora_layers"]  # one forward: each layer through our op
    assert got["lora_grads"]


def _normalized(names) -> set[str]:
    return {re.sub(r"[-_.]+", "-", n).lower() for n in names}


def test_no_metadata_of_ours_claims_the_name_kernels():
    owners = importlib.metadata.packages_distributions()
    assert "nif-lightning" in _normalized(owners.get("nif_lightning", []))  # we are installed
    assert "nif-lightning" not in _normalized(owners.get("kernels", []))


def test_the_checkout_on_sys_path_is_not_taken_for_hf_kernels():
    """`python -m pytest` puts the repository root, and so the folder `kernels/`, on sys.path.
    transformers finds it, reads no version (N/A: not available) and imports nothing of it."""
    try:
        importlib.metadata.version("kernels")
    except importlib.metadata.PackageNotFoundError:
        pass
    else:  # HF's metadata would give our folder its version: run the tests from elsewhere
        pytest.skip("Hugging Face's kernels is installed: the checkout's kernels/ shadows it")
    got = _run(_FROM_CHECKOUT, cwd=REPO, pythonpath=None)
    assert Path(got["origin"]) == REPO / "kernels" / "__init__.py"
    assert got["hf_available"] is False
    assert got["side_effects"] == []  # lazy __init__: no custom op registered by the probe


# ---- a failed kernel import or patch is never hidden ----


def test_a_failing_kernel_patch_raises_instead_of_falling_back(tiny, monkeypatch):
    from nif_lightning.kernels import peft_patch
    from nif_lightning.module import NifLoraModule

    def broken(model):
        raise RuntimeError("kernel setup failed")

    monkeypatch.setattr(peft_patch, "use_fused_lora", broken)
    module = NifLoraModule(str(tiny), packed_attention=False)
    with pytest.raises(RuntimeError, match="kernel setup failed"):
        module.configure_model()


def test_cuda_without_triton_falls_back_with_a_warning_that_says_the_fix(monkeypatch, caplog):
    import importlib.util

    import torch

    from nif_lightning import module

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "triton" else real(name, *a)
    )
    with caplog.at_level("WARNING", logger=module.__name__):
        assert module._triton_usable() is False
    assert "pip install triton" in caplog.text and "fused_lora: false" in caplog.text
