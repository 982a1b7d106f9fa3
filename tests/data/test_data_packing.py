"""Packing is exact: a packed batch's loss equals the token-weighted loss of its samples run
alone, and no token attends across samples; plus the template, truncation and bin packing."""

from __future__ import annotations

import math
import random

import pytest
import torch

from nif_lightning.attention import use_packed_attention
from nif_lightning.packing import (
    IGNORE,
    TokenizedExample,
    collate_packed,
    collate_padded,
    pack,
    split_budget,
    tokenize_vanilla,
)


def _model(path, packed: bool):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    if packed:
        assert use_packed_attention(model) == "nif_packed_sdpa"  # no GPU here
    return model


def _samples(seed=0, n=4):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        prompt = [rng.randrange(3, 500) for _ in range(rng.randint(3, 30))]
        response = [rng.randrange(3, 500) for _ in range(rng.randint(1, 30))]
        out.append(tokenize_vanilla(prompt, response, eos_id=0, cutoff_len=64))
    return out


def _alone_loss(model, samples):
    total = count = 0.0
    for s in samples:
        out = model(input_ids=s.input_ids.long()[None], labels=s.labels[None])
        k = int((s.labels[1:] != IGNORE).sum())
        total += out.loss.item() * k
        count += k
    return total / count


def test_packed_loss_equals_token_weighted_loss_of_samples_alone(tiny):
    samples = _samples()
    batch = collate_packed(samples)
    with torch.no_grad():
        packed = _model(tiny, packed=True)(**batch["inputs"]).loss.item()
        alone = _alone_loss(_model(tiny, packed=False), samples)
    assert packed == pytest.approx(alone, abs=1e-5)
    # And the padded batch (attention mask) gives the same loss.
    with torch.no_grad():
        padded = _model(tiny, packed=False)(**collate_padded(samples, pad_id=1)["inputs"]).loss
    assert padded.item() == pytest.approx(alone, abs=1e-5)


def test_no_token_attends_across_samples(tiny):
    model = _model(tiny, packed=True)
    samples = _samples(seed=1, n=3)
    batch = collate_packed(samples)
    cu = batch["inputs"]["cu_seq_lens_q"].tolist()
    with torch.no_grad():
        base = model(**batch["inputs"]).logits[0]
        for victim in range(3):  # scramble one sample; every other sample's logits must not move
            inputs = dict(batch["inputs"])
            ids = inputs["input_ids"].clone()
            s, e = cu[victim], cu[victim + 1]
            ids[0, s:e] = torch.randint(3, 500, (e - s,))
            inputs["input_ids"] = ids
            logits = model(**inputs).logits[0]
            for other in range(3):
                a, b = cu[other], cu[other + 1]
                same = torch.allclose(logits[a:b], base[a:b], atol=1e-6)
                assert same == (other != victim), (victim, other)


def test_positions_restart_and_boundaries_carry_no_loss():
    samples = _samples(seed=2, n=3)
    inputs = collate_packed(samples)["inputs"]
    cu = inputs["cu_seq_lens_q"].tolist()
    assert cu[0] == 0 and cu[-1] == inputs["input_ids"].shape[1]
    for s, e in zip(cu[:-1], cu[1:], strict=True):
        assert inputs["position_ids"][0, s:e].tolist() == list(range(e - s))
        assert inputs["labels"][0, s].item() == IGNORE  # nothing predicts across a boundary
    assert inputs["max_length_q"] == max(len(s) for s in samples)


def test_vanilla_template_exact_ids():
    s = tokenize_vanilla([11, 12, 13], [21, 22], eos_id=2, cutoff_len=100)
    assert s.input_ids.tolist() == [11, 12, 13, 21, 22, 2]  # no BOS, EOS last
    assert s.labels.tolist() == [IGNORE, IGNORE, IGNORE, 21, 22, 2]


@pytest.mark.parametrize(
    "p, r, cutoff, expect",
    [
        (10, 10, 100, (10, 10)),  # fits: untouched
        (300, 100, 100, (75, 25)),  # 3:1 -> 75:25
        (100, 300, 100, (25, 75)),
        (1000, 1, 100, (99, 1)),  # the response always keeps a token
        (1, 1000, 100, (1, 99)),  # and so does the prompt
    ],
)
def test_truncation_splits_the_budget_in_proportion(p, r, cutoff, expect):
    assert split_budget(p, r, cutoff) == expect
    s = tokenize_vanilla(list(range(3, 3 + p)), list(range(3, 3 + r - 1)), 2, cutoff)
    assert len(s) == min(p + r, cutoff)


def test_bin_packing_is_complete_tight_and_seeded():
    rng = random.Random(0)
    # A realistic mix: log-normal lengths (median ~330 tokens), capped at the cutoff 1024.
    lengths = [min(1024, max(8, int(math.exp(rng.gauss(5.8, 0.6))))) for _ in range(3000)]
    bins = pack(lengths, budget=8 * 1024, seed=0)
    flat = sorted(i for b in bins for i in b)
    assert flat == list(range(len(lengths)))  # every sample exactly once
    assert all(sum(lengths[i] for i in b) <= 8 * 1024 for b in bins)
    fill = sum(lengths) / (len(bins) * 8 * 1024)
    assert fill >= 0.98, fill
    assert bins == pack(lengths, 8 * 1024, seed=0) and bins != pack(lengths, 8 * 1024, seed=1)
    with pytest.raises(ValueError, match="exceeds the batch budget"):
        pack([5, 11], budget=10, seed=0)


def test_padded_batch_stats():
    samples = [TokenizedExample(torch.tensor([5, 6, 7]), 1), TokenizedExample(torch.tensor([8]), 1)]
    batch = collate_padded(samples, pad_id=1)
    assert batch["inputs"]["input_ids"].tolist() == [[5, 6, 7], [8, 1, 1]]
    assert batch["inputs"]["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["stats"] == {"tokens": 4, "slots": 6, "examples": 2, "loss_tokens": 2}
