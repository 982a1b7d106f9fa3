"""The shared local-model helper (`data_gen.llm.local`): one dtype/device policy, and batched
left-padded decoding that gives what each prompt generated alone gives."""

from __future__ import annotations

import pytest
import torch

from data_gen.llm import local
from data_gen.llm.local import (
    generate_batched,
    greedy_generate,
    load_for_generation,
    resolve_device,
    resolve_dtype,
)

# Different lengths, so a batch really is padded; five prompts with batch_size=2 leave a
# batch of one at the end.
PROMPTS = [
    "The",
    "Lists may be constructed in several ways, for example",
    "A module is a file",
    "The with statement is used to wrap the execution of a block with methods defined by",
    "Exceptions",
]


@pytest.fixture(scope="module")
def loaded(tiny):
    return load_for_generation(tiny)


def _alone(model, tok, prompt: str, max_new: int) -> list[int]:
    """The reference: one prompt, no padding, plain greedy `generate`, cut at EOS."""
    enc = tok(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(
            **enc, max_new_tokens=max_new, do_sample=False, pad_token_id=tok.eos_token_id
        )
    new = out[0, enc["input_ids"].shape[1] :].tolist()
    return new[: new.index(tok.eos_token_id)] if tok.eos_token_id in new else new


def test_load_puts_the_model_in_eval_mode_with_a_left_padding_tokenizer(loaded):
    model, tok = loaded
    assert not model.training
    assert (model.dtype, model.device.type) == (torch.float32, "cpu")  # auto on a CPU
    assert tok.padding_side == "left" and tok.truncation_side == "left"
    assert tok.pad_token_id is not None


@pytest.mark.parametrize("batch_size", [1, 2, 8])
def test_batched_greedy_equals_one_prompt_at_a_time(tiny, loaded, batch_size):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tok = loaded
    gens = generate_batched(model, tok, PROMPTS, max_new_tokens=12, batch_size=batch_size)
    texts = greedy_generate(model, tok, PROMPTS, max_new_tokens=12, batch_size=batch_size)
    # The reference loads the model by hand, as a user of plain transformers would.
    ref_tok = AutoTokenizer.from_pretrained(tiny)
    ref_model = AutoModelForCausalLM.from_pretrained(tiny).eval()
    for prompt, gen, text in zip(PROMPTS, gens, texts, strict=True):
        ids = _alone(ref_model, ref_tok, prompt, 12)
        assert gen.text == text == ref_tok.decode(ids, skip_special_tokens=True)
        assert gen.new_tokens == len(ids)
        assert gen.prompt_tokens == len(ref_tok(prompt)["input_ids"])  # padding not counted
        assert gen.stopped == (len(ids) < 12)


def test_progress_hears_each_batch(loaded):
    model, tok = loaded
    sizes: list[int] = []
    greedy_generate(model, tok, PROMPTS, max_new_tokens=1, batch_size=2, progress=sizes.append)
    assert sizes == [2, 2, 1]


def test_stops_at_the_generation_configs_eos_too(tiny):
    """A chat model may end its turn with a token that is not the tokenizer's EOS but is in its
    generation config: that stops the reply as well, and is not part of the text."""
    model, tok = load_for_generation(tiny)
    end_of_turn = 300  # any id but the tokenizer's EOS
    assert end_of_turn != tok.eos_token_id
    with torch.no_grad():  # end_of_turn is the argmax everywhere
        model.lm_head.weight.zero_()
        model.lm_head.weight[end_of_turn] = 1.0
        model.model.norm.weight.fill_(1.0)
    model.generation_config.eos_token_id = end_of_turn
    (gen,) = generate_batched(model, tok, ["Hello there"], max_new_tokens=5)
    assert gen.stopped and gen.new_tokens == 0 and gen.text == ""
    assert local.stop_token_ids(model, tok) == [tok.eos_token_id, end_of_turn]


def test_a_prompt_too_long_for_the_context_keeps_its_end(tiny):
    model, tok = load_for_generation(tiny)
    model.config.max_position_embeddings = 8  # room for 8 - 3 = 5 prompt tokens
    long = PROMPTS[3]
    (gen,) = generate_batched(model, tok, [long], max_new_tokens=3)
    tail = tok.decode(tok(long)["input_ids"][-5:])
    (alone,) = generate_batched(model, tok, [tail], max_new_tokens=3)
    assert gen.prompt_tokens == 5 and gen == alone


def test_sampling_above_temperature_zero(loaded):
    model, tok = loaded
    torch.manual_seed(0)
    a = generate_batched(model, tok, PROMPTS, max_new_tokens=8, temperature=5.0)
    torch.manual_seed(0)
    b = generate_batched(model, tok, PROMPTS, max_new_tokens=8, temperature=5.0)
    greedy = generate_batched(model, tok, PROMPTS, max_new_tokens=8)
    assert a == b  # the global RNG decides
    assert a != greedy  # a random tiny model at temperature 5 does not stay on the argmax


# device, bf16 supported by the GPU -> dtype for `auto`
@pytest.mark.parametrize(
    "name, device, bf16_ok, expected",
    [
        ("auto", "cpu", False, torch.float32),
        ("auto", "cuda", True, torch.bfloat16),
        ("auto", "cuda", False, torch.float16),  # pre-Ampere GPUs
        ("float32", "cuda", True, torch.float32),
        ("float16", "cpu", False, torch.float16),  # an explicit dtype is taken as asked
        ("bfloat16", "cuda", False, torch.bfloat16),
    ],
)
def test_dtype_policy(monkeypatch, name, device, bf16_ok, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_ok)
    assert resolve_dtype(name, device) is expected


def test_every_listed_name_resolves(monkeypatch):
    """The names the configs and CLIs offer (`DTYPES`, `DEVICES`) are the ones accepted."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert [resolve_dtype(n, "cuda") for n in local.DTYPES] == [
        torch.bfloat16,
        torch.float32,
        torch.float16,
        torch.bfloat16,
    ]
    assert [resolve_device(n) for n in local.DEVICES] == ["cuda", "cpu", "cuda"]


@pytest.mark.parametrize(
    "name, cuda, expected", [("auto", True, "cuda"), ("auto", False, "cpu"), ("cpu", True, "cpu")]
)
def test_device_policy(monkeypatch, name, cuda, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert resolve_device(name) == expected


def test_cuda_without_a_gpu_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="'cuda'.*no CUDA device"):
        resolve_device("cuda")


@pytest.mark.parametrize(
    "call, value",
    [
        (lambda: resolve_dtype("fp16", "cpu"), "'fp16'"),
        (lambda: resolve_device("gpu"), "'gpu'"),
        (lambda: resolve_dtype("auto", "auto"), "'auto'"),  # needs a resolved device
    ],
)
def test_bad_names_are_a_clear_error(call, value):
    with pytest.raises(ValueError, match=value):
        call()


def test_load_checks_the_names_before_reading_anything(tmp_path):
    missing = tmp_path / "no-model"
    with pytest.raises(ValueError, match="dtype must be one of auto|float32.*'half'"):
        load_for_generation(missing, dtype="half")
    with pytest.raises(ValueError, match="device must be one of auto|cpu|cuda.*'tpu'"):
        load_for_generation(missing, device="tpu")


@pytest.mark.gpu
def test_auto_on_a_gpu_is_half_precision_on_cuda(tiny):
    model, tok = load_for_generation(tiny)
    half = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    assert (model.dtype, model.device.type) == (half, "cuda")
    (text,) = greedy_generate(model, tok, ["The"], max_new_tokens=4)
    assert isinstance(text, str)
