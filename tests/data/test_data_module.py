"""The DataModule on real `nif gen` output: bad folders fail early with clear errors, the
validation split is stable, ranks get disjoint batches of equal count, padded mode works, a
run resumed mid-epoch trains each batch exactly once."""

from __future__ import annotations

import warnings

import lightning as L
import pyarrow as pa
import pytest
import torch

from data_gen.generate import GenConfig, generate
from nif_lightning.data import DataConfig, NifDataModule, is_validation
from nif_lightning.tiny_model import save_tiny_model


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("dm")
    generate(GenConfig(corpus="builtin", out=str(root / "data"), num_docs=60), progress=False)
    return root / "data", save_tiny_model(root / "tiny", seed=0)


def _ids(batch):
    return batch["inputs"]["input_ids"][0].tolist()


def test_split_and_batches_are_deterministic(env):
    data, tiny = env
    cfg = DataConfig(cutoff_len=96, micro_batch_size=3, val_fraction=0.1, seed=5)
    a, b = NifDataModule(data, tiny, cfg), NifDataModule(data, tiny, cfg)
    a.setup(), b.setup()
    assert len(a.train_examples) + len(a.val_examples) == 60 and a.val_examples
    assert [_ids(x) for x in a.train_dataloader()] == [_ids(x) for x in b.train_dataloader()]
    assert max(len(s) for s in a.train_examples) <= 96
    # The split depends on the id only, not on the seed.
    assert is_validation("doc-1", 0.5) == is_validation("doc-1", 0.5)
    c = NifDataModule(data, tiny, DataConfig(cutoff_len=96, val_fraction=0.1, seed=6))
    c.setup()
    assert [s.input_ids.tolist() for s in c.val_examples] == [
        s.input_ids.tolist() for s in a.val_examples
    ]
    # Every packed batch stays within the token budget; no padding is computed.
    for batch in a.train_dataloader():
        assert batch["stats"]["tokens"] == batch["stats"]["slots"] <= 3 * 96
    assert a.packing_efficiency() == 1.0


def test_ranks_get_disjoint_batches_of_equal_count(env):
    data, tiny = env
    dm = NifDataModule(data, tiny, DataConfig(cutoff_len=96, micro_batch_size=2))
    dm.setup()
    groups = dm.epoch_batches(dm.train_examples, seed=0, shuffle=True)
    per_rank = [dm.rank_batches(groups, r, 3) for r in range(3)]
    assert len({len(p) for p in per_rank}) == 1  # no rank waits in an all-reduce alone
    seen = [i for p in per_rank for g in p for i in g]
    assert set(seen) == set(range(len(dm.train_examples)))  # every sample is trained on
    assert len(seen) - len(set(seen)) < 2 * 96  # only the top-up batches repeat


@pytest.mark.parametrize(("groups", "world", "accumulation"), [(22, 2, 4), (22, 2, 1), (3, 2, 4)])
def test_each_rank_gets_whole_optimizer_steps(groups, world, accumulation):
    """Every rank's count is the same multiple of the accumulation, filled cyclically with the
    epoch's first batches, so no step is cut short and no batch is dropped."""
    dm = NifDataModule.__new__(NifDataModule)  # dealing needs no data
    batches = [[i] for i in range(groups)]
    per_rank = [dm.rank_batches(batches, r, world, accumulation) for r in range(world)]
    count = len(per_rank[0])
    assert all(len(p) == count for p in per_rank) and count % accumulation == 0
    assert count < -(-groups // world) + accumulation  # the least whole number of steps
    dealt = [b for i in range(count) for p in per_rank for b in p[i : i + 1]]
    assert dealt == [batches[i % groups] for i in range(count * world)]  # in order, cyclic


def test_many_repeated_batches_are_said_once(env, recwarn):
    from types import SimpleNamespace

    data, tiny = env
    dm = NifDataModule(data, tiny, DataConfig(cutoff_len=96, micro_batch_size=2))
    dm.setup()
    groups = len(dm.epoch_batches(dm.train_examples, seed=0, shuffle=True))
    world, accumulation = 2, groups  # each rank: one step of `groups` micro-batches
    dm.trainer = SimpleNamespace(
        global_rank=0, world_size=world, accumulate_grad_batches=accumulation, current_epoch=0
    )
    assert len(dm.train_dataloader()) == accumulation
    list(dm.train_dataloader())
    said = [str(w.message) for w in recwarn if "repeat its first ones" in str(w.message)]
    assert said == [
        f"{groups} of the {2 * groups} training batches of an epoch repeat its first ones, so "
        f"that each of 2 rank(s) gets whole optimizer steps of {groups} micro-batches: a small "
        "dataset for this many ranks and this `accumulate_grad_batches`"
    ]


def test_padded_mode(env):
    data, tiny = env
    dm = NifDataModule(data, tiny, DataConfig(cutoff_len=1024, micro_batch_size=4, packing=False))
    dm.setup()
    batches = list(dm.train_dataloader())
    assert sum(b["stats"]["examples"] for b in batches) == len(dm.train_examples)
    assert all(b["inputs"]["input_ids"].shape[0] <= 4 for b in batches)
    assert all("attention_mask" in b["inputs"] for b in batches)
    assert 0 < dm.packing_efficiency() < 1.0  # padding is computed


def test_bad_folders_fail_before_any_model_loads(tmp_path, env):
    _, tiny = env
    with pytest.raises(FileNotFoundError, match="does not exist"):
        NifDataModule(tmp_path / "nope", tiny)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"holds no shards/\*\.arrow"):
        NifDataModule(tmp_path / "empty", tiny)
    foreign = tmp_path / "foreign" / "shards"
    foreign.mkdir(parents=True)
    table = pa.table({"id": ["a"], "question": ["q"], "answer": ["x"]})
    with (
        pa.OSFile(str(foreign / "part-00000.arrow"), "wb") as f,
        pa.ipc.new_stream(f, table.schema) as w,
    ):
        w.write_table(table)
    with pytest.raises(ValueError, match=r"lack column\(s\) \['completion', 'prompt'\]"):
        NifDataModule(tmp_path / "foreign", tiny)
    (foreign / "part-00000.arrow").write_bytes(b"not arrow at all")
    with pytest.raises(ValueError, match="not an Arrow IPC file"):
        NifDataModule(tmp_path / "foreign", tiny)


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"cutoff_len": 1}, "data.cutoff_len"),
        ({"micro_batch_size": 0}, "data.micro_batch_size"),
        ({"cutoff_len": 64, "max_tokens_per_batch": 32}, "data.max_tokens_per_batch"),
        ({"val_fraction": 1.0}, "data.val_fraction"),
    ],
)
def test_bad_settings_name_the_key(kwargs, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        DataConfig(**kwargs)


class _Crash(Exception):
    pass


class _Probe(L.LightningModule):
    """Records the first token ids of every batch it trains on; crashes at `crash_at` if set."""

    def __init__(self, seen: list, crash_at: int | None = None) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen, self.crash_at = seen, crash_at

    def training_step(self, batch, batch_idx):
        if self.global_step == self.crash_at:
            raise _Crash
        self.seen.append((self.current_epoch, _ids(batch)[:8]))
        return (self.w - 1.0).pow(2).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(dm, seen, out, steps, *, crash_at=None, resume=False):
    trainer = L.Trainer(
        max_steps=steps,
        max_epochs=-1,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[L.pytorch.callbacks.ModelCheckpoint(out, save_last=True, every_n_train_steps=1)],
    )
    ckpt = str(out / "last.ckpt") if resume else None
    trainer.fit(_Probe(seen, crash_at), datamodule=dm, ckpt_path=ckpt)


@pytest.mark.parametrize("crash_epoch_offset", [3, 0])  # mid-epoch; at an epoch boundary
def test_resume_mid_epoch_repeats_and_skips_no_batch(env, tmp_path, crash_epoch_offset):
    data, tiny = env
    cfg = DataConfig(cutoff_len=96, micro_batch_size=2, val_fraction=0.0, seed=3)
    dm = NifDataModule(data, tiny, cfg)
    dm.setup()
    per_epoch = len(dm.train_dataloader())
    steps = 2 * per_epoch + 2  # two whole epochs and the start of a third

    straight: list = []
    _fit(NifDataModule(data, tiny, cfg), straight, tmp_path / "a", steps)
    assert len(straight) == steps

    crash_at = per_epoch + crash_epoch_offset  # a crash in the second epoch
    resumed: list = []
    with pytest.raises(_Crash):
        _fit(NifDataModule(data, tiny, cfg), resumed, tmp_path / "b", steps, crash_at=crash_at)
    assert len(resumed) == crash_at
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _fit(NifDataModule(data, tiny, cfg), resumed, tmp_path / "b", steps, resume=True)
    assert resumed == straight  # same batches, same order, each exactly once
    # ... so Lightning's "your dataloader is not resumable" would be false: it is not given.
    assert not [w for w in caught if "not resumable" in str(w.message)]


def test_resume_on_another_world_size_restarts_the_epoch(env):
    data, tiny = env
    dm = NifDataModule(data, tiny, DataConfig(cutoff_len=96, micro_batch_size=2, seed=3))
    dm.setup()
    full = [_ids(b) for b in dm.train_dataloader()]
    dm.load_state_dict({"epoch": 0, "batches_trained": 3, "world": 1})
    assert [_ids(b) for b in dm.train_dataloader()] == full[3:]  # same world: goes on
    assert [_ids(b) for b in dm.train_dataloader()] == full  # only once: the next epoch is whole
    with pytest.warns(UserWarning, match="saved on 4"):
        dm.load_state_dict({"epoch": 0, "batches_trained": 3, "world": 4})
    assert [_ids(b) for b in dm.train_dataloader()] == full
