"""The LightningDataModule: Arrow shards of `nif gen` / `nif filter` -> packed (or padded) batches.

- Reads `DIR/shards/*.arrow` (columns `id`, `prompt`, `completion`), checks the folder before
  anything heavy, tokenizes with the `vanilla` template (`packing.py`) and truncates at
  `cutoff_len`.
- Holds out a validation split chosen by a hash of each row's id: stable across runs, machines
  and world sizes, and independent of the seed.
- Packed (default): samples are binned into `micro_batch_size * cutoff_len` tokens per batch.
  Padded: `micro_batch_size` samples per batch, right-padded.
- Distributed: the batches of an epoch are dealt round-robin to the ranks, and the list is
  topped up by repeating its first batches so every rank gets the same number (a rank with fewer
  batches would hang the others in the gradient all-reduce). Lightning's sampler injection is
  not involved: the loaders iterate over ready batches.
- Deterministic given the seed: epoch e uses seed + e for the shuffle and the bin order.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch

from nif_lightning.packing import Sample, collate_packed, collate_padded, pack, vanilla_sample


@dataclass
class DataConfig:
    """The `data` section of a train config (besides `dir`)."""

    cutoff_len: int = 1024
    """Max tokens per sample, prompt + response + EOS (the paper: 1024)."""
    micro_batch_size: int = 8
    """Samples per padded batch; packed batches hold micro_batch_size * cutoff_len tokens."""
    packing: bool = True
    """Pack samples into token-budget rows (no padding computed) instead of padding."""
    max_tokens_per_batch: int | None = None
    """Packed token budget per batch; default micro_batch_size * cutoff_len."""
    val_fraction: float = 0.02
    """Share of rows held out for validation (by id hash); at least one row when > 0."""
    seed: int = 0
    """Shuffle and bin-order seed."""

    def __post_init__(self) -> None:
        if self.cutoff_len < 2:
            raise ValueError(f"`data.cutoff_len` must be >= 2, got {self.cutoff_len}")
        if self.micro_batch_size < 1:
            raise ValueError(f"`data.micro_batch_size` must be >= 1, got {self.micro_batch_size}")
        if self.max_tokens_per_batch is not None and self.max_tokens_per_batch < self.cutoff_len:
            raise ValueError(
                f"`data.max_tokens_per_batch` ({self.max_tokens_per_batch}) must be >= "
                f"`data.cutoff_len` ({self.cutoff_len}): a full-length sample must fit"
            )
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"`data.val_fraction` must be in [0, 1), got {self.val_fraction}")

    @property
    def token_budget(self) -> int:
        return self.max_tokens_per_batch or self.micro_batch_size * self.cutoff_len


def check_data_dir(data_dir: str | Path) -> list[Path]:
    """The shard files, or a clear error naming the folder and what is wrong."""
    import pyarrow as pa

    data = Path(data_dir)
    if not data.is_dir():
        raise FileNotFoundError(f"data folder {data} does not exist (run `nif gen` first)")
    shards = sorted((data / "shards").glob("*.arrow"))
    if not shards:
        raise ValueError(f"data folder {data} holds no shards/*.arrow (run `nif gen` first)")
    try:
        names = read_arrow(shards[0]).schema.names
    except pa.ArrowInvalid as err:
        raise ValueError(f"{shards[0]} is not an Arrow IPC file ({err})") from None
    missing = sorted({"id", "prompt", "completion"} - set(names))
    if missing:
        raise ValueError(f"data folder {data}: shards lack column(s) {missing} (have {names})")
    return shards


def read_examples(data_dir: str | Path) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    for shard in check_data_dir(data_dir):
        rows += read_arrow(shard).select(["id", "prompt", "completion"]).to_pylist()
    return rows


def read_arrow(path: Path):
    """A shard as a table: the IPC stream format (`nif gen`, `datasets`) or the file format."""
    import pyarrow as pa

    try:
        with pa.OSFile(str(path), "rb") as f:
            return pa.ipc.open_stream(f).read_all()
    except pa.ArrowInvalid:
        with pa.OSFile(str(path), "rb") as f:
            return pa.ipc.open_file(f).read_all()


def is_validation(row_id: str, fraction: float) -> bool:
    digest = hashlib.sha256(row_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def _hash(row_id: str) -> bytes:
    return hashlib.sha256(row_id.encode("utf-8")).digest()


class _Batches(torch.utils.data.IterableDataset):
    """This rank's batches of the current epoch, built when iteration starts."""

    def __init__(self, build, epoch_fn) -> None:
        super().__init__()
        self._build, self._epoch_fn = build, epoch_fn

    def __iter__(self):
        yield from self._build(self._epoch_fn())

    def __len__(self) -> int:
        return len(self._build(0, count_only=True))


class NifDataModule(L.LightningDataModule):
    def __init__(self, data_dir: str | Path, tokenizer_or_path, cfg: DataConfig | None = None):
        super().__init__()
        self.cfg = cfg or DataConfig()
        self.data_dir = Path(data_dir)
        check_data_dir(self.data_dir)  # a bad folder fails here, before any model loads
        self._tokenizer_or_path = tokenizer_or_path
        self.train_samples: list[Sample] = []
        self.val_samples: list[Sample] = []
        self._pad_id = 0

    # ---- setup ----------------------------------------------------------------------------------

    def setup(self, stage: str | None = None) -> None:
        if self.train_samples:
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
        self.train_samples = self._tokenize(tok, train)
        self.val_samples = self._tokenize(tok, val)
        self._pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    def _tokenizer(self):
        if not isinstance(self._tokenizer_or_path, (str, Path)):
            return self._tokenizer_or_path
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(self._tokenizer_or_path))

    def _tokenize(self, tok, rows: list[dict[str, str]]) -> list[Sample]:
        if not rows:
            return []
        if tok.eos_token_id is None:
            raise ValueError("the tokenizer has no EOS token; the vanilla template needs one")
        prompts = tok([r["prompt"] for r in rows], add_special_tokens=False)["input_ids"]
        responses = tok([r["completion"] for r in rows], add_special_tokens=False)["input_ids"]
        return [
            vanilla_sample(p, c, tok.eos_token_id, self.cfg.cutoff_len)
            for p, c in zip(prompts, responses, strict=True)
        ]

    # ---- batches --------------------------------------------------------------------------------

    def _rank(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0, 1
        return trainer.global_rank, trainer.world_size

    def _epoch(self) -> int:
        trainer = getattr(self, "trainer", None)
        return trainer.current_epoch if trainer is not None else 0

    def epoch_batches(self, samples: list[Sample], seed: int, *, shuffle: bool) -> list[list[int]]:
        """Index groups of one epoch for all ranks (before dealing)."""
        if self.cfg.packing:
            return pack([len(s) for s in samples], self.cfg.token_budget, seed)
        order = list(range(len(samples)))
        if shuffle:
            g = torch.Generator().manual_seed(seed)
            order = torch.randperm(len(samples), generator=g).tolist()
        size = self.cfg.micro_batch_size
        return [order[i : i + size] for i in range(0, len(order), size)]

    def rank_batches(self, groups: list[list[int]], rank: int, world: int) -> list[list[int]]:
        """Deal groups round-robin; top up so every rank has the same count."""
        if world > 1 and groups:
            per_rank = -(-len(groups) // world)
            groups = groups + groups[: per_rank * world - len(groups)]
        return groups[rank::world]

    def _builder(self, samples: list[Sample], *, train: bool):
        def build(epoch: int, count_only: bool = False):
            rank, world = self._rank()
            seed = self.cfg.seed + (epoch if train else 0)
            groups = self.epoch_batches(samples, seed, shuffle=train)
            groups = self.rank_batches(groups, rank, world)
            if count_only:
                return groups
            return [self.collate([samples[i] for i in g]) for g in groups]

        return build

    def collate(self, samples: list[Sample]) -> dict:
        if self.cfg.packing:
            return collate_packed(samples)
        return collate_padded(samples, self._pad_id)

    def _loader(self, samples: list[Sample], *, train: bool):
        epoch_fn = self._epoch if train else (lambda: 0)  # validation: one fixed order
        dataset = _Batches(self._builder(samples, train=train), epoch_fn)
        return torch.utils.data.DataLoader(dataset, batch_size=None)

    def train_dataloader(self):
        return self._loader(self.train_samples, train=True)

    def val_dataloader(self):
        return self._loader(self.val_samples, train=False)

    # ---- figures --------------------------------------------------------------------------------

    def packing_efficiency(self) -> float:
        """Real tokens / computed token slots over one training epoch."""
        batches = self._builder(self.train_samples, train=True)(0)
        tokens = sum(b["stats"]["tokens"] for b in batches)
        slots = sum(b["stats"]["slots"] for b in batches)
        return tokens / max(slots, 1)
