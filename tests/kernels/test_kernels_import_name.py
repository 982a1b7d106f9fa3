"""The import name `kernels` is Hugging Face's: transformers (5.x requires the distribution)
imports it on every model import (`from kernels import CUDAProperties, ...` in `hub_kernels`).
Ours is `nif_kernels`, in `kernels/nif_kernels/`; the folder `kernels/` has no `__init__.py`, so
from the checkout root (first on sys.path under `python -m pytest` and `python -c`) it is at most
a namespace portion, which any installed `kernels` package outranks.

Each check runs in a fresh interpreter from the checkout root: transformers caches what it found
at first import, and the root on sys.path is the case that broke (`ImportError: cannot import name
'CUDAProperties' from 'kernels' (<checkout>/kernels/__init__.py)`)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

_FROM_THE_ROOT = """
import importlib.util, json, sys
from transformers import LlamaForCausalLM  # noqa: F401  (runs the hub-kernels probe)
from transformers.utils.import_utils import is_kernels_available
import kernels
import nif_lightning
import nif_kernels
from nif_kernels import peft_patch
from nif_lightning.module import NifLoraModule

try:
    import kernels.nif_kernels  # noqa: F401
    second_name = True
except ImportError:
    second_name = False

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
    "sys_path_0": sys.path[0],
    "hf_available": is_kernels_available(),
    "kernels_file": kernels.__file__,
    "nif_kernels_file": nif_kernels.__file__,
    "second_name": second_name,
    "ours_under_kernels": sorted(
        m for m in sys.modules if m.startswith("kernels.") and "nif" in m
    ),
    "lora_layers": len(layers),
    "fused_layers": len(fused),
    "fused_calls": len(calls),
    "lora_grads": all(grads) and len(grads) > 0,
}))
"""


def _run(script: str, *args: str) -> dict:
    """`python -c script` from the checkout root: sys.path[0] is the root, then site-packages."""
    done = subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _check_from_the_root(got: dict, hf_kernels: Path) -> None:
    assert got["sys_path_0"] == "", "python -c from the root: the root comes first"
    assert got["hf_available"], "transformers should see Hugging Face's kernels"
    assert Path(got["kernels_file"]) == hf_kernels
    assert Path(got["nif_kernels_file"]) == REPO / "kernels" / "nif_kernels" / "__init__.py"
    assert not got["second_name"] and got["ours_under_kernels"] == []  # one name: nif_kernels
    assert got["lora_layers"] > 0 and got["fused_layers"] == got["lora_layers"]
    assert got["fused_calls"] == got["lora_layers"]  # one forward: each layer through our op
    assert got["lora_grads"]


def test_from_the_root_transformers_gets_hf_kernels_and_training_gets_ours(tiny):
    """What a fresh machine runs, with the `kernels` that pip installed for transformers: `python
    -c "from transformers import LlamaConfig"` and `import nif_lightning` from the checkout root,
    then our fused LoRA path trains there. With a `kernels/__init__.py` at the root the
    transformers import fails (the ImportError above)."""
    spec = importlib.util.find_spec("kernels")
    assert spec is not None and spec.origin, "Hugging Face's kernels is not installed (test extra)"
    installed = Path(spec.origin)
    assert installed.parent != REPO / "kernels"  # this pytest process runs from the root too
    _run("from transformers import LlamaConfig; import nif_lightning; print('{}')")
    _check_from_the_root(_run(_FROM_THE_ROOT, str(tiny)), installed)


def _normalized(names) -> set[str]:
    return {re.sub(r"[-_.]+", "-", n).lower() for n in names}


def test_no_metadata_of_ours_claims_the_name_kernels():
    owners = importlib.metadata.packages_distributions()
    assert "nif-lightning" in _normalized(owners.get("nif_kernels", []))  # we are installed
    assert "nif-lightning" not in _normalized(owners.get("kernels", []))


def test_the_checkout_has_no_kernels_package_at_its_root():
    """No regular package and no module named `kernels` at the root (either would shadow Hugging
    Face's), and no link that gives the same code a second name."""
    assert not (REPO / "kernels" / "__init__.py").exists()
    assert not (REPO / "kernels.py").exists()
    links = []
    for folder, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if d not in (".git", ".venv")]
        links += [Path(folder, n) for n in dirs + files if Path(folder, n).is_symlink()]
    assert not [p for p in links if p.resolve().is_relative_to(REPO / "kernels")], links


# ---- a failed kernel import or patch is never hidden ----


def test_a_failing_kernel_patch_raises_instead_of_falling_back(tiny, monkeypatch):
    from nif_kernels import peft_patch
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
