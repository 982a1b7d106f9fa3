"""Before/after answers: greedy replies of the base and the fine-tuned model to a few instructions.

The paper's Table 10 / Appendix D make the point with examples: the base model rambles on and
never stops, the fine-tuned one answers and ends. The `sample` stage of `nif run` shows the same
for the user's own run, side by side, and records whether each reply ended with EOS.

Prompts go through the `vanilla` template the model was trained with: the prompt's tokens, no BOS,
no role tokens; the reply is whatever follows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

# Written for this project, in the spirit of the paper's Appendix D: everyday instructions of
# different kinds (advice, explanation, writing, comparison, summary, planning).
DEFAULT_PROMPTS = (
    "Give me three practical tips for keeping a houseplant alive in a dark apartment.",
    "Explain to a ten-year-old why the sky is blue.",
    "Write a four-line poem about a train arriving late at night.",
    "What is the difference between a list and a tuple in Python?",
    "Summarize in two sentences why regular exercise is good for sleep.",
    "Plan a one-day itinerary for a first visit to a city by the sea.",
)


@dataclass
class SampleSettings:
    """The `sample` section of a run config."""

    prompts: list[str] = field(default_factory=lambda: list(DEFAULT_PROMPTS))
    """Instructions to answer; empty = skip the stage."""
    max_new_tokens: int = 128
    """Reply length cap (greedy decoding)."""

    def __post_init__(self) -> None:
        if not isinstance(self.prompts, list) or not all(
            isinstance(p, str) and p.strip() for p in self.prompts
        ):
            raise ValueError("`sample.prompts` must be a list of non-empty strings")
        if self.max_new_tokens < 1:
            raise ValueError(f"`sample.max_new_tokens` must be >= 1, got {self.max_new_tokens}")


@dataclass(frozen=True)
class Reply:
    text: str
    new_tokens: int
    stopped: bool  # ended with EOS before the length cap


def greedy_replies(model_dir: str | Path, prompts: list[str], max_new_tokens: int) -> list[Reply]:
    """Greedy continuation of each prompt by the model in `model_dir` (one at a time: no padding
    to get wrong, and a handful of prompts is not worth batching)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    if torch.cuda.is_available():
        # Half precision, spread over the GPUs a model needs (a 70B model fits on no single one).
        half = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=half, device_map="auto")
    else:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    eos = tok.eos_token_id
    replies = []
    for prompt in prompts:
        ids = tok(prompt, add_special_tokens=False, return_tensors="pt").input_ids  # (1, P)
        ids = ids.to(model.device)
        with torch.no_grad():
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=eos,
                pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else eos,
            )
        new = out[0, ids.shape[1] :].tolist()
        stopped = eos is not None and eos in new
        if stopped:
            new = new[: new.index(eos)]
        replies.append(Reply(tok.decode(new, skip_special_tokens=True), len(new), stopped))
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # room for the next model
    return replies


def compare_models(
    base_dir: str | Path, tuned_dir: str | Path, settings: SampleSettings
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


def write_samples(records: list[dict], path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(records, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)
