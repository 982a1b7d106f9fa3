"""Merge a PEFT LoRA adapter into a full model: the paper's "lora" and "lora-base" models.

"lora": the adapter goes back into the backbone it was trained on (stock PEFT
`merge_and_unload`). "lora-base": an adapter trained on a base model is added to another model
of the same architecture, typically its Instruct/chat variant — W_target + scaling * B @ A for
every adapted Linear (the chat-vector style transfer of the paper). Every adapted weight is
checked for presence and shape before anything is written.

The merged model is written to a hidden folder beside `out_dir` and renamed into place when
complete: a kill during a merge never leaves a half-written `merged/`, and an older one is
replaced only by a whole new one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

_ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
# PEFT saves keys as "base_model.model.<module path>.lora_A.weight" (adapter name dropped).
_LORA_KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?P<which>[AB])\.weight$")


def check_adapter_dir(adapter_dir: str | Path) -> Path:
    """The adapter folder as a Path, or a clear error naming what is missing."""
    path = Path(adapter_dir)
    if not path.is_dir():
        raise FileNotFoundError(f"`--adapter` {path} is not a directory")
    missing = [name for name in _ADAPTER_FILES if not (path / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"`--adapter` {path} is not a PEFT adapter: missing {', '.join(missing)}"
        )
    return path


def lora_deltas(adapter_dir: str | Path) -> dict[str, torch.Tensor]:  # noqa: F821
    """`{"<module path>.weight": scaling * B @ A}` (fp32) for every adapted Linear."""
    from safetensors.torch import load_file

    path = check_adapter_dir(adapter_dir)
    config = json.loads((path / "adapter_config.json").read_text())
    r, alpha = int(config["r"]), float(config["lora_alpha"])
    # rsLoRA scales by alpha / sqrt(r) instead of alpha / r.
    scaling = alpha / (r**0.5) if config.get("use_rslora") else alpha / r
    tensors = load_file(str(path / "adapter_model.safetensors"))
    pairs: dict[str, dict[str, object]] = {}
    for key, value in tensors.items():
        match = _LORA_KEY.match(key)
        if match is None:
            continue  # e.g. modules_to_save; not part of the low-rank delta
        pairs.setdefault(match["module"], {})[match["which"]] = value
    deltas = {}
    for module, ab in sorted(pairs.items()):
        if set(ab) != {"A", "B"}:
            raise ValueError(f"adapter {path}: module {module} lacks lora_A or lora_B")
        a, b = ab["A"].float(), ab["B"].float()  # A: (r, in), B: (out, r)
        deltas[f"{module}.weight"] = scaling * (b @ a)  # (out, in)
    if not deltas:
        raise ValueError(f"adapter {path} holds no LoRA weights")
    return deltas


def merge_lora_into(model, adapter_dir: str | Path):
    """Add the adapter's deltas to `model`'s weights in place (lora-base); returns `model`.

    Raises before touching any weight when a target module is missing or its shape differs.
    """
    import torch

    deltas = lora_deltas(adapter_dir)
    params = dict(model.named_parameters())
    problems = []
    for name, delta in deltas.items():
        weight = params.get(name)
        if weight is None:
            problems.append(f"{name}: not in the target model")
        elif tuple(weight.shape) != tuple(delta.shape):
            problems.append(
                f"{name}: target shape {tuple(weight.shape)} != adapter shape {tuple(delta.shape)}"
            )
    if problems:
        shown = "; ".join(problems[:5]) + (
            f"; ... ({len(problems)} in all)" if len(problems) > 5 else ""
        )
        raise ValueError(f"adapter {adapter_dir} does not fit the target model: {shown}")
    with torch.no_grad():
        for name, delta in deltas.items():
            weight = params[name]
            # Add in fp32, then round once to the target's dtype.
            weight.copy_((weight.float() + delta.to(weight.device)).to(weight.dtype))
    return model


def merge_adapter(
    base: str | Path,
    adapter_dir: str | Path,
    out_dir: str | Path,
    *,
    into: str | Path | None = None,
) -> Path:
    """Merge and save (safetensors + tokenizer) to `out_dir`.

    Without `into`: "lora" merge of the adapter into `base` with stock PEFT. With `into`:
    "lora-base" merge into that model instead (`base` is then only checked to exist).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from nif_lightning.hub import check_model

    adapter = check_adapter_dir(adapter_dir)
    target = str(into) if into is not None else str(base)
    check_model(base, what="`--base`")
    if into is not None:
        check_model(into, what="`--into`")
    out = Path(out_dir)
    if into is None:
        from peft import PeftModel

        model = AutoModelForCausalLM.from_pretrained(target, dtype="auto")
        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    else:
        model = merge_lora_into(AutoModelForCausalLM.from_pretrained(target, dtype="auto"), adapter)
    partial = out.with_name(f".partial-{out.name}")
    shutil.rmtree(partial, ignore_errors=True)  # a killed merge's
    partial.mkdir(parents=True)
    try:
        model.save_pretrained(partial, safe_serialization=True)
        AutoTokenizer.from_pretrained(target).save_pretrained(partial)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    swap_in(partial, out)
    return out


def swap_in(partial: Path, path: Path) -> None:
    """`partial` (written completely beside `path`) becomes `path`: a file atomically
    (`os.replace`); a folder with two renames, the old one moved aside first and removed after.

    The one place where a whole output (merged model, adapter, checkpoint) replaces the previous
    one: a kill at any point leaves either the old output or the new one under `path`, or, only
    between the two renames of a folder, the old one under `.old-<name>`.
    """
    partial, path = Path(partial), Path(path)
    if not partial.is_dir():
        os.replace(partial, path)
        return
    old = path.with_name(f".old-{path.name}")
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        path.rename(old)
    partial.rename(path)
    shutil.rmtree(old, ignore_errors=True)
