"""From (prompt, completion) rows to training batches: the `vanilla` template, proportional
truncation, and packing into a token budget or padding.

Template (LLaMA-Factory `vanilla`, the paper's): input_ids = tok(prompt) + tok(completion) + [eos],
no BOS, no role tokens; labels are -100 over the prompt, so the loss is on the response and EOS.

Packed batches are one row of concatenated samples (B = 1, T = sum of lengths <= budget): no
padding at all. `position_ids` restart at 0 per sample (RoPE sees each sample alone), and
`cu_seq_lens_q/k` + `max_length_q/k` (the names flash-attn varlen and transformers use) give the
sample boundaries to the attention function, which must keep every sample to itself
(`nif_lightning.attention`). HF shifts labels inside the model, so position t predicts label t+1;
the first token of every sample is a prompt token (label -100), so no loss crosses a boundary.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

IGNORE = -100


@dataclass(frozen=True)
class Sample:
    input_ids: list[int]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)


def split_budget(prompt_len: int, response_len: int, cutoff_len: int) -> tuple[int, int]:
    """Token budgets (prompt, response) for a sample longer than `cutoff_len`, shared in
    proportion to the two lengths (as LLaMA-Factory's `infer_max_len`), each at least 1."""
    if prompt_len + response_len <= cutoff_len:
        return prompt_len, response_len
    response_max = int(cutoff_len * response_len / (prompt_len + response_len))
    response_max = min(max(response_max, 1), cutoff_len - 1)
    return cutoff_len - min(response_max, response_len), response_max


def vanilla_sample(
    prompt_ids: Sequence[int], response_ids: Sequence[int], eos_id: int, cutoff_len: int
) -> Sample:
    """One training sample; the response carries the EOS (and loses it if truncated, as in the
    paper's LLaMA-Factory 0.5.2). Truncation keeps the start of each part."""
    response = list(response_ids) + [eos_id]
    p_max, r_max = split_budget(len(prompt_ids), len(response), cutoff_len)
    prompt, response = list(prompt_ids[:p_max]), response[:r_max]
    return Sample(prompt + response, [IGNORE] * len(prompt) + response)


def pack(lengths: Sequence[int], budget: int, seed: int) -> list[list[int]]:
    """Indices grouped into bins of total length <= `budget` (best-fit decreasing: ~99%+ full
    for realistic length mixes), bins in a seeded random order."""
    if lengths and max(lengths) > budget:
        raise ValueError(f"a sample of {max(lengths)} tokens exceeds the batch budget {budget}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    # Bins open for more samples, as (room left, bin index), sorted by room.
    rooms: list[tuple[int, int]] = []
    for i in order:
        n = lengths[i]
        j = bisect.bisect_left(rooms, (n, -1))  # the tightest bin with room >= n
        if j < len(rooms):
            room, b = rooms.pop(j)
        else:
            room, b = budget, len(bins)
            bins.append([])
        bins[b].append(i)
        if room - n > 0:
            bisect.insort(rooms, (room - n, b))
    random.Random(seed).shuffle(bins)
    return bins


def collate_packed(samples: Sequence[Sample]) -> dict:
    """One packed row (1, T) with per-sample positions and varlen boundaries."""
    ids = [t for s in samples for t in s.input_ids]
    labels = [t for s in samples for t in s.labels]
    positions = [p for s in samples for p in range(len(s))]
    lengths = [len(s) for s in samples]
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    longest = max(lengths)
    return {
        "inputs": {
            "input_ids": torch.tensor([ids]),
            "labels": torch.tensor([labels]),
            "position_ids": torch.tensor([positions]),
            "cu_seq_lens_q": cu,
            "cu_seq_lens_k": cu,
            "max_length_q": longest,
            "max_length_k": longest,
        },
        "stats": _stats(len(ids), len(ids), len(samples), labels),
    }


def collate_padded(samples: Sequence[Sample], pad_id: int) -> dict:
    """(B, T_max) right-padded with an attention mask: the paper's stack's batches."""
    width = max(len(s) for s in samples)
    ids = torch.full((len(samples), width), pad_id)
    labels = torch.full((len(samples), width), IGNORE)
    mask = torch.zeros((len(samples), width), dtype=torch.long)
    for row, s in enumerate(samples):
        ids[row, : len(s)] = torch.tensor(s.input_ids)
        labels[row, : len(s)] = torch.tensor(s.labels)
        mask[row, : len(s)] = 1
    positions = torch.arange(width).expand(len(samples), width).clone()
    flat_labels = [t for s in samples for t in s.labels]
    return {
        "inputs": {
            "input_ids": ids,
            "labels": labels,
            "attention_mask": mask,
            "position_ids": positions,
        },
        "stats": _stats(int(mask.sum()), mask.numel(), len(samples), flat_labels),
    }


def _stats(tokens: int, slots: int, samples: int, labels: Sequence[int]) -> dict[str, int]:
    return {
        "tokens": tokens,
        "slots": slots,
        "samples": samples,
        "loss_tokens": sum(1 for t in labels if t != IGNORE),
    }
