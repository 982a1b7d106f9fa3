"""A local transformers causal LM: loading it (dtype and device policy) and batched decoding.

Three stages run a model on this machine: the before/after replies of `nif run`'s preview stage,
the answers `nif eval` grades, and the `hf` teacher of `nif gen`. They load and decode here, so
`--dtype auto` means the same thing everywhere:

    device  auto   -> cuda if torch sees a GPU, else cpu
    dtype   auto   -> on cuda: bfloat16 where the GPU supports it, else float16
                      on cpu:  float32
            float32 | float16 | bfloat16 -> that dtype, on any device

The checkpoint's own dtype is not consulted: an fp32 checkpoint on a GPU would take twice the
memory and decode at half the speed for no gain in greedy answers, and half precision on a CPU is
slow or unsupported. (Before this module `nif eval --dtype auto` kept the checkpoint's dtype,
while the preview stage and the hf teacher already used half precision on GPUs; lm-eval's
`--dtype auto` follows this policy too.) On cuda the weights are placed with
`device_map="auto"`: one GPU when the model fits, spread over the visible GPUs when it does not
(a 70B model fits on no single one).

Decoding pads on the left, so every row of a batch ends where its continuation begins, and a
batched greedy answer equals the answer to the prompt alone. A prompt too long for the model's
context keeps its end (the part that is continued). Generation stops at any end-of-sequence id
the tokenizer or the model's generation config names; the stop token is not part of the text.
Chat templates and stop strings are the callers' business: they pass finished prompt text in and
post-process the text that comes out.

Torch and transformers are imported inside the functions: the names above are read by configs
and CLIs that must not pay for importing torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DTYPES = ("auto", "float32", "float16", "bfloat16")
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class Generation:
    """One prompt's continuation."""

    text: str
    """The new text, without the stop token and without special tokens."""
    prompt_tokens: int
    """Prompt length in tokens after truncation, padding not counted."""
    new_tokens: int
    """Tokens in `text` (the stop token not counted)."""
    stopped: bool
    """Ended with an end-of-sequence token before the `max_new_tokens` cap."""


def resolve_device(name: str) -> str:
    """`auto` -> "cuda" if torch sees a GPU, else "cpu"; "cuda" without one is an error."""
    if name not in DEVICES:
        raise ValueError(f"device must be one of {'|'.join(DEVICES)}, got {name!r}")
    import torch

    cuda = torch.cuda.is_available()
    if name == "cuda" and not cuda:
        raise ValueError("device 'cuda' was asked for, but torch sees no CUDA device")
    if name == "auto":
        return "cuda" if cuda else "cpu"
    return name


def resolve_dtype(name: str, device: str):
    """The torch dtype for dtype `name` on a resolved `device` ("cpu" or "cuda"); see the policy
    in the module docstring."""
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {'|'.join(DTYPES)}, got {name!r}")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"resolve_dtype needs a resolved device (cpu or cuda), got {device!r}")
    import torch

    if name != "auto":
        return getattr(torch, name)
    if device == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def load_for_generation(path: str | Path, *, dtype: str = "auto", device: str = "auto"):
    """(model, tokenizer) from a model folder or hub id: the model in eval mode on `device`,
    the tokenizer padding and truncating on the left, with a pad token (EOS if it has none)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    where = resolve_device(device)  # bad names fail before anything is read
    kwargs: dict[str, Any] = {"dtype": resolve_dtype(dtype, where)}
    if where == "cuda":
        kwargs["device_map"] = "auto"
    if Path(path).is_dir() and any(Path(path).glob("*.safetensors")):
        kwargs["use_safetensors"] = True  # never fall back to a pickle in the same folder
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    tokenizer.truncation_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    model.eval()
    return model, tokenizer


def generate_batched(
    model,
    tokenizer,
    prompts: list[str],
    *,
    max_new_tokens: int,
    batch_size: int = 8,
    temperature: float = 0.0,
    add_special_tokens: bool = True,
    progress: Callable[[int], None] | None = None,
) -> list[Generation]:
    """Continue each prompt, `batch_size` at a time; greedy at temperature 0, sampled above.

    `tokenizer` must pad on the left (as `load_for_generation` sets it). `add_special_tokens=False`
    for prompts that already hold them (a chat template's output) or that the model was trained
    to see without them (the vanilla template: no BOS). `progress` is called with each finished
    batch's size (`tqdm.update` fits)."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if tokenizer.padding_side != "left" or tokenizer.pad_token_id is None:
        raise ValueError(
            "the tokenizer must pad on the left with a pad token (load_for_generation)"
        )
    out: list[Generation] = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        out += _generate_batch(
            model, tokenizer, batch, max_new_tokens, temperature, add_special_tokens
        )
        if progress is not None:
            progress(len(batch))
    return out


def greedy_generate(
    model,
    tokenizer,
    prompts: list[str],
    *,
    max_new_tokens: int,
    batch_size: int = 8,
    add_special_tokens: bool = True,
    progress: Callable[[int], None] | None = None,
) -> list[str]:
    """The greedy continuation text of each prompt (see `generate_batched`)."""
    gens = generate_batched(
        model,
        tokenizer,
        prompts,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        add_special_tokens=add_special_tokens,
        progress=progress,
    )
    return [g.text for g in gens]


def stop_token_ids(model, tokenizer) -> list[int]:
    """Every end-of-sequence id the tokenizer or the model's generation config names (chat
    models often end a turn with a token other than the tokenizer's EOS)."""
    ids: list[int] = []
    config = getattr(model, "generation_config", None)
    for source in (tokenizer.eos_token_id, getattr(config, "eos_token_id", None)):
        if isinstance(source, int):
            ids.append(source)
        elif source is not None:
            ids.extend(source)
    return list(dict.fromkeys(ids))


def _generate_batch(
    model,
    tokenizer,
    prompts: list[str],
    max_new_tokens: int,
    temperature: float,
    add_special_tokens: bool,
) -> list[Generation]:
    import torch

    stop = stop_token_ids(model, tokenizer)
    room = getattr(model.config, "max_position_embeddings", None)
    max_len = max(1, room - max_new_tokens) if room else None
    enc = tokenizer(
        prompts,
        return_tensors="pt",
        padding=True,
        truncation=max_len is not None,
        max_length=max_len,
        add_special_tokens=add_special_tokens,
    ).to(model.device)
    sampling = temperature > 0
    extra = {"temperature": temperature} if sampling else {}
    with torch.inference_mode():
        out = model.generate(  # (B, P + new), finished rows padded with pad_token_id
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=sampling,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=stop or None,
            **extra,
        )
    new = out[:, enc["input_ids"].shape[1] :].tolist()  # (B, new)
    prompt_lens = enc["attention_mask"].sum(dim=1).tolist()  # (B,)
    gens = []
    for row, n_prompt in zip(new, prompt_lens, strict=True):
        cut = next((i for i, t in enumerate(row) if t in stop), None)
        ids = row if cut is None else row[:cut]
        text = tokenizer.decode(ids, skip_special_tokens=True)
        gens.append(Generation(text, int(n_prompt), len(ids), cut is not None))
    return gens
