"""A tiny random-initialised Llama with a locally trained tokenizer: an offline base model.

Nothing can be downloaded in CI or on an air-gapped box, yet the whole pipeline (training,
adapter export, merge) must run against something that loads exactly like a real hub
checkpoint. So we train a byte-level BPE tokenizer in about a second on the built-in corpus
(CPython's own documentation prose) and save it as a `PreTrainedTokenizerFast`, then save a
`LlamaForCausalLM` with hidden size 64 and 2 layers with `save_pretrained` (safetensors).
Both reload with the stock `AutoTokenizer.from_pretrained` / `AutoModelForCausalLM.from_pretrained`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
# Byte-level BPE starts from 256 byte tokens; a few hundred merges on top are plenty for a model
# whose job is to exercise the code paths, and keep the embedding (and so training) cheap.
_DEFAULT_VOCAB = 512


@dataclass
class TinyModelConfig:
    """Architecture of the tiny model; defaults match DESIGN.md ("Offline defaults")."""

    vocab_size: int = _DEFAULT_VOCAB
    """Target BPE vocabulary (>= 260: 256 bytes plus the special tokens)."""
    hidden_size: int = 64
    """Model width."""
    intermediate_size: int = 128
    """MLP width (gate/up/down projections)."""
    num_hidden_layers: int = 2
    """Decoder layers."""
    num_attention_heads: int = 4
    """Query heads; head dim = hidden_size / num_attention_heads."""
    num_key_value_heads: int = 2
    """Key/value heads (grouped-query attention, as in Llama-3 and Mistral)."""
    max_position_embeddings: int = 2048
    """Longest sequence RoPE is set up for; >= the quickstart cutoff."""

    def __post_init__(self) -> None:
        if self.vocab_size < 260:
            raise ValueError(
                f"`vocab_size` must be >= 260 (256 bytes + specials), got {self.vocab_size}"
            )
        for name in (
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "max_position_embeddings",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"`{name}` must be > 0, got {getattr(self, name)}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"`hidden_size` ({self.hidden_size}) must be divisible by "
                f"`num_attention_heads` ({self.num_attention_heads})"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"`num_attention_heads` ({self.num_attention_heads}) must be divisible by "
                f"`num_key_value_heads` ({self.num_key_value_heads})"
            )


def build_tiny_tokenizer(vocab_size: int = _DEFAULT_VOCAB):
    """A byte-level BPE `PreTrainedTokenizerFast` trained on the built-in corpus (~1 s)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from data_gen.builtin import builtin_texts

    tok = Tokenizer(models.BPE())
    # add_prefix_space=False: the vanilla template concatenates tok(prompt) + tok(response), and
    # a forced leading space would change how the response's first word is split.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(builtin_texts(), trainer=trainer)
    # No BOS and no post-processor: the paper's `vanilla` template adds no special tokens
    # except the EOS the data pipeline appends itself.
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        model_max_length=2048,
    )


def build_tiny_model(tokenizer, cfg: TinyModelConfig | None = None, *, seed: int = 0):
    """A random-initialised `LlamaForCausalLM` sized to `tokenizer`'s vocabulary."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = cfg or TinyModelConfig()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
        torch_dtype="float32",
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def save_tiny_model(
    out_dir: str | Path,
    *,
    seed: int = 0,
    cfg: TinyModelConfig | None = None,
    vocab_size: int | None = None,
) -> Path:
    """Write tokenizer + model to `out_dir` (created); returns it as a `Path`.

    The result loads with `AutoTokenizer.from_pretrained(out_dir)` and
    `AutoModelForCausalLM.from_pretrained(out_dir)`. Deterministic given `seed`.
    """
    cfg = cfg or TinyModelConfig()
    if vocab_size is not None:
        cfg = TinyModelConfig(**{**cfg.__dict__, "vocab_size": vocab_size})
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"`out_dir` {out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tiny_tokenizer(cfg.vocab_size)
    model = build_tiny_model(tokenizer, cfg, seed=seed)
    tokenizer.save_pretrained(out)
    model.save_pretrained(out, safe_serialization=True)
    return out
