"""Models by local folder or Hugging Face Hub id, checked before any heavy work starts.

A run that first generates data for hours and then finds its base model gated or misspelled has
wasted the day; so every command that takes a model checks it up front by fetching only its
`config.json` (from the Hub or the local cache), never the weights.
"""

from __future__ import annotations

from pathlib import Path


def check_model(path: str | Path, *, what: str = "`--model`") -> None:
    """Raise a clear error naming `what` unless `path` is a local Hugging Face model folder or a
    Hub id whose config can be fetched (or is cached)."""
    text = str(path)
    local = Path(text)
    if local.exists():
        if not (local / "config.json").is_file():
            raise FileNotFoundError(f"{what} {text} has no config.json (not a Hugging Face model)")
        return
    if text.startswith((".", "/", "~")) or text.count("/") > 1:
        raise FileNotFoundError(f"{what} {text} is neither a local folder nor a Hub id (org/name)")
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(text)
    except (OSError, ValueError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise FileNotFoundError(
            f"{what} {text}: not a local folder, and the Hub gave no config for it ({reason}). "
            "Gated models (Llama) need `hf auth login` or HF_TOKEN; offline, download the model "
            "first and pass its folder"
        ) from None
