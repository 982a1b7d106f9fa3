"""The LightningDataModule: Arrow shards of `nif gen` / `nif filter` -> packed (or padded) batches.

- Reads `DIR/shards/*.arrow` (columns `id`, `prompt`, `completion`), checks the folder before
  anything heavy, tokenizes with the `vanilla` template (`packing.py`) and truncates at
  `cutoff_len`.
- Holds out a validation split chosen by a hash of each row's id: stable across runs, machines
  and world sizes, and independent of the seed.
- Packed (default): examples are binned into `micro_batch_size * cutoff_len` tokens per batch.
  Padded: `micro_batch_size` examples per batch, right-padded.
- Distributed: the batches of an epoch are dealt round-robin to the ranks, and the list is
  topped up by repeating its first batches so every rank gets the same number (a rank with fewer
  batches would hang the others in the gradient all-reduce). Lightning's sampler injection is
  not involved: the loaders iterate over ready batches.
- Whole optimizer steps: in training, that number is also a multiple of the Trainer's
  `accumulate_grad_batches` (N), topped up the same way. An epoch's last accumulation is never
  cut short, so every optimizer step averages exactly N micro-batches per rank, with or without
  DeepSpeed (which counts accumulation across epochs, where Lightning restarts it each epoch:
  with a cut-short last step the two step counts drift apart), and no batch is dropped.
- Deterministic given the seed: epoch e uses seed + e for the shuffle and the bin order.
- Resumable mid-epoch: each checkpoint records how many batches of the current epoch were
  trained (`state_dict`), and a resumed run starts that epoch at the next batch, so a crash
  never repeats or skips data.
"""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path
from typing import TYPE_CHECKING

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn

from data_gen.store import REQUIRED_COLUMNS, check_dataset_dir, read_dataset
from nif_lightning.config import DataConfig
from nif_lightning.packing import (
    TokenizedExample,
    collate_packed,
    collate_padded,
    pack,
    tokenize_vanilla,
)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

_TOKENIZE_CHUNK = 2048


def read_examples(data_dir: str | Path) -> list[dict[str, str]]:
    """The `id`, `prompt` and `completion` of every row (`store`'s dataset folder)."""
    check_dataset_dir(data_dir)
    return read_dataset(data_dir, REQUIRED_COLUMNS).to_pylist()


def is_validation(row_id: str, fraction: float) -> bool:
    digest = hashlib.sha256(row_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def _hash(row_id: str) -> bytes:
    return hashlib.sha256(row_id.encode("utf-8")).digest()


class _EpochBatches(torch.utils.data.IterableDataset):
    """This rank's batches of the current epoch: index groups fixed when iteration starts,
    collated one at a time from the epoch's first untrained batch."""

    def __init__(self, groups_fn, collate, epoch_fn, start_fn) -> None:
        super().__init__()
        self._groups_fn, self._collate = groups_fn, collate
        self._epoch_fn, self._start_fn = epoch_fn, start_fn

    def __iter__(self):
        epoch = self._epoch_fn()
        for group in self._groups_fn(epoch)[self._start_fn(epoch) :]:
            yield self._collate(group)

    def __len__(self) -> int:
        return len(self._groups_fn(0))


class _ResumableLoader(torch.utils.data.DataLoader):
    """The training loader, marked resumable for Lightning (it has `state_dict` /
    `load_state_dict`, so Lightning does not warn that a mid-epoch resume is inexact). Its
    position is the data module's state (`NifDataModule.state_dict`), which Lightning restores
    before the loader is iterated: the loader itself has nothing more to keep."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class NifDataModule(L.LightningDataModule):
    """Packed (or padded) training and validation batches from a `nif gen` / `nif filter` folder.

    Usable as is from Python, a lab's own Trainer or `LightningCLI(NifLoraModule,
    NifDataModule)` (every argument below is a YAML key under `data:`).

    Args:
        data_dir: Dataset folder (`shards/*.arrow` with `id`, `prompt`, `completion`); checked
            here, before any model loads.
        tokenizer: The base model's Hub id or folder (its tokenizer is loaded in `setup`), or a
            tokenizer object.
        config: Cutoff length, batch size, packing, validation share and seed (its `dir` is not
            read here: `data_dir` is the folder).
    """

    def __init__(
        self,
        data_dir: str | Path,
        tokenizer: str | Path | PreTrainedTokenizerBase,
        config: DataConfig | None = None,
    ) -> None:
        super().__init__()
        self.cfg = config or DataConfig()
        self.data_dir = Path(data_dir)
        check_dataset_dir(self.data_dir)  # a bad folder fails here, before any model loads
        self._tokenizer_or_path = tokenizer
        self.train_examples: list[TokenizedExample] = []
        self.val_examples: list[TokenizedExample] = []
        self._pad_id = 0
        self._resume_at: tuple[int, int] | None = None  # (epoch, batches trained) from a ckpt
        self._told_repeats = False

    # ---- setup ----------------------------------------------------------------------------------

    def setup(self, stage: str | None = None) -> None:
        if self.train_examples:
            return
        tok = self._tokenizer()
        rows = read_examples(self.data_dir)
        if not rows:
            raise ValueError(f"data folder {self.data_dir} has shards but no rows")
        val = [r for r in rows if is_validation(r["id"], self.cfg.val_fraction)]
        if not val and self.cfg.val_fraction > 0 and len(rows) > 1:
            val = [min(rows, key=lambda r: _hash(r["id"]))]  # a tiny set still validates
        val_ids = {r["id"] for r in val}
        train = [r for r in rows if r["id"] not in val_ids]
        self.train_examples = self._tokenize(tok, train)
        self.val_examples = self._tokenize(tok, val)
        self._pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    def _tokenizer(self):
        if not isinstance(self._tokenizer_or_path, (str, Path)):
            return self._tokenizer_or_path
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(self._tokenizer_or_path))

    def _tokenize(self, tok, rows: list[dict[str, str]]) -> list[TokenizedExample]:
        if not rows:
            return []
        if tok.eos_token_id is None:
            raise ValueError("the tokenizer has no EOS token; the vanilla template needs one")
        examples: list[TokenizedExample] = []
        # In chunks: the tokenizer's Python lists take ~7x the memory of the examples kept.
        for start in range(0, len(rows), _TOKENIZE_CHUNK):
            chunk = rows[start : start + _TOKENIZE_CHUNK]
            prompts = tok([r["prompt"] for r in chunk], add_special_tokens=False)["input_ids"]
            responses = tok([r["completion"] for r in chunk], add_special_tokens=False)["input_ids"]
            examples += [
                tokenize_vanilla(p, c, tok.eos_token_id, self.cfg.cutoff_len)
                for p, c in zip(prompts, responses, strict=True)
            ]
        return examples

    # ---- batches --------------------------------------------------------------------------------

    def _rank(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0, 1
        return trainer.global_rank, trainer.world_size

    def _accumulation(self) -> int:
        trainer = getattr(self, "trainer", None)
        return int(trainer.accumulate_grad_batches) if trainer is not None else 1

    def _epoch(self) -> int:
        trainer = getattr(self, "trainer", None)
        return trainer.current_epoch if trainer is not None else 0

    # ---- resume ---------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Saved in every checkpoint: the epoch and how many of its batches this rank trained."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return {}
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return {"epoch": trainer.current_epoch, "batches_trained": done, "world": self._rank()[1]}

    def load_state_dict(self, state: dict) -> None:
        if not state:
            return
        if state["world"] != self._rank()[1]:
            # Another world size deals other batches to each rank: no position carries over.
            rank_zero_warn(
                f"resuming on {self._rank()[1]} rank(s) a run saved on {state['world']}: the "
                f"interrupted epoch {state['epoch']} starts again from its first batch"
            )
            return
        self._resume_at = (state["epoch"], state["batches_trained"])

    def _first_batch(self, epoch: int) -> int:
        """Where `epoch` starts: after the batches a resumed checkpoint trained (once), else 0."""
        if self._resume_at is None or self._resume_at[0] != epoch:
            return 0
        done, self._resume_at = self._resume_at[1], None
        return done

    def epoch_batches(
        self, examples: list[TokenizedExample], seed: int, *, shuffle: bool
    ) -> list[list[int]]:
        """Index groups of one epoch for all ranks (before dealing)."""
        if self.cfg.packing:
            return pack([len(s) for s in examples], self.cfg.token_budget, seed)
        order = list(range(len(examples)))
        if shuffle:
            g = torch.Generator().manual_seed(seed)
            order = torch.randperm(len(examples), generator=g).tolist()
        size = self.cfg.micro_batch_size
        return [order[i : i + size] for i in range(0, len(order), size)]

    def rank_batches(
        self, groups: list[list[int]], rank: int, world: int, multiple: int = 1
    ) -> list[list[int]]:
        """Deal groups round-robin, topped up with the first ones (cyclically) so every rank
        has the same count, a multiple of `multiple` (the accumulation, in training)."""
        if groups:
            per_rank = -(-len(groups) // world)
            per_rank = -(-per_rank // multiple) * multiple
            groups = list(itertools.islice(itertools.cycle(groups), per_rank * world))
        return groups[rank::world]

    def _rank_groups(
        self, examples: list[TokenizedExample], epoch: int, *, train: bool
    ) -> list[list[int]]:
        """This rank's index groups of `epoch` (validation: one fixed order)."""
        seed = self.cfg.seed + (epoch if train else 0)
        groups = self.epoch_batches(examples, seed, shuffle=train)
        rank, world = self._rank()
        multiple = self._accumulation() if train else 1
        dealt = self.rank_batches(groups, rank, world, multiple)
        repeats = len(dealt) * world - len(groups)
        if train and repeats > 0.1 * len(groups) and not self._told_repeats:
            self._told_repeats = True
            rank_zero_warn(
                f"{repeats} of the {len(groups) + repeats} training batches of an epoch repeat "
                f"its first ones, so that each of {world} rank(s) gets whole optimizer steps of "
                f"{multiple} micro-batches: a small dataset for this many ranks and this "
                "`accumulate_grad_batches`"
            )
        return dealt

    def collate(self, examples: list[TokenizedExample]) -> dict:
        if self.cfg.packing:
            return collate_packed(examples)
        return collate_padded(examples, self._pad_id)

    def _loader(self, examples: list[TokenizedExample], *, train: bool):
        dataset = _EpochBatches(
            lambda epoch: self._rank_groups(examples, epoch, train=train),
            lambda group: self.collate([examples[i] for i in group]),
            epoch_fn=self._epoch if train else (lambda: 0),
            start_fn=self._first_batch if train else (lambda epoch: 0),
        )
        loader = _ResumableLoader if train else torch.utils.data.DataLoader
        return loader(dataset, batch_size=None)

    def train_dataloader(self):
        return self._loader(self.train_examples, train=True)

    def val_dataloader(self):
        return self._loader(self.val_examples, train=False)

    # ---- figures --------------------------------------------------------------------------------

    def packing_efficiency(self) -> float:
        """Real tokens / computed token slots over one training epoch."""
        tokens = slots = 0
        for group in self._rank_groups(self.train_examples, 0, train=True):
            stats = self.collate([self.train_examples[i] for i in group])["stats"]
            tokens, slots = tokens + stats["tokens"], slots + stats["slots"]
        return tokens / max(slots, 1)
