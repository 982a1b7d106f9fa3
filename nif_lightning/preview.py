"""Before/after answers: greedy replies of the base and the fine-tuned model to a few instructions.

The paper's Table 10 / Appendix D make the point with examples: the base model rambles on and
never stops, the fine-tuned one answers and ends. The `preview` stage of `nif run` shows the same
for the user's own run, side by side, and records whether each reply ended with EOS.

Prompts go through the `vanilla` template the model was trained with: the prompt's tokens, no BOS,
no role tokens; the reply is whatever follows.
"""

from __future__ import annotations

from pathlib import Path

from data_gen.llm.local import Generation, generate_batched, load_for_generation
from data_gen.store import write_json_atomic
from nif_lightning.config import PreviewConfig


def greedy_replies(
    model_dir: str | Path, prompts: list[str], max_new_tokens: int
) -> list[Generation]:
    """Greedy continuation of each prompt by the model in `model_dir`, loaded with the shared
    dtype/device policy (`data_gen.llm.local`). One prompt at a time: no padding to get wrong,
    and a handful of prompts is not worth batching."""
    import torch

    model, tok = load_for_generation(model_dir)
    # The vanilla template: the prompt's tokens, no BOS.
    replies = generate_batched(
        model, tok, prompts, max_new_tokens=max_new_tokens, batch_size=1, add_special_tokens=False
    )
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # room for the next model
    return replies


def compare_models(
    base_dir: str | Path, tuned_dir: str | Path, settings: PreviewConfig
) -> list[dict]:
    """One record per prompt: the base model's and the tuned model's reply."""
    base = greedy_replies(base_dir, settings.prompts, settings.max_new_tokens)
    tuned = greedy_replies(tuned_dir, settings.prompts, settings.max_new_tokens)
    return [
        {
            "prompt": prompt,
            "base": b.text,
            "base_tokens": b.new_tokens,
            "base_stopped": b.stopped,
            "tuned": t.text,
            "tuned_tokens": t.new_tokens,
            "tuned_stopped": t.stopped,
        }
        for prompt, b, t in zip(settings.prompts, base, tuned, strict=True)
    ]


def write_previews(records: list[dict], path: Path) -> None:
    write_json_atomic(path, records)
