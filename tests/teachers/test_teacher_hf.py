"""The `hf` teacher on the project's tiny random Llama: concurrent calls are batched, and left
padding makes every batched continuation equal to the prompt generated alone."""

from __future__ import annotations

import asyncio

import pytest

from data_gen.llm import Completion, TeacherConfig, make_teacher

PROMPTS = [
    "The",
    "Lists may be constructed in several ways, for example",
    "A module is a file",
    "The with statement is used to wrap the execution of a block with methods defined by",
    "Exceptions",
]


def _run_all(cfg: TeacherConfig, prompts: list[str]):
    async def run():
        async with make_teacher(cfg) as teacher:
            results = await asyncio.gather(*(teacher.complete(p) for p in prompts))
            return teacher, results

    return asyncio.run(run())


def _alone(model_dir, prompt: str, max_new: int) -> list[int]:
    """The reference: one prompt, no padding, plain greedy generate."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    enc = tok(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(
            **enc, max_new_tokens=max_new, do_sample=False, pad_token_id=tok.eos_token_id
        )
    new = out[0, enc["input_ids"].shape[1] :].tolist()
    return new[: new.index(tok.eos_token_id)] if tok.eos_token_id in new else new


def test_batched_greedy_equals_one_by_one(tiny):
    from transformers import AutoTokenizer

    cfg = TeacherConfig(kind="hf", model=str(tiny), max_tokens=12, concurrency=8)
    teacher, results = _run_all(cfg, PROMPTS)
    assert teacher.name == f"hf:{tiny}"
    assert teacher.batch_sizes == [len(PROMPTS)]  # gathered into one batch, not five
    tok = AutoTokenizer.from_pretrained(tiny)
    for prompt, c in zip(PROMPTS, results, strict=True):
        assert isinstance(c, Completion)
        ids = _alone(tiny, prompt, 12)
        assert c.text == tok.decode(ids, skip_special_tokens=True)
        assert c.completion_tokens == len(ids)
        assert c.prompt_tokens == len(tok(prompt)["input_ids"])  # padding not counted
        assert c.finish_reason == ("length" if len(ids) == 12 else "stop")


def test_batches_are_capped_by_concurrency(tiny):
    cfg = TeacherConfig(kind="hf", model=str(tiny), max_tokens=2, concurrency=2)
    teacher, results = _run_all(cfg, PROMPTS)
    assert len(results) == len(PROMPTS)
    assert max(teacher.batch_sizes) <= 2 and sum(teacher.batch_sizes) == len(PROMPTS)


def test_missing_model_is_a_clear_error(tmp_path):
    cfg = TeacherConfig(kind="hf", model=str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="--model"):
        _run_all(cfg, ["x"])
