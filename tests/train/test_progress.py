"""The training progress bar under a step budget: `Epoch 6 (step 0/360)`, never `Epoch 6/-2`
(Lightning's Rich bar prints max_epochs - 1, and a step budget sets max_epochs=-1). Without
rich, Lightning's tqdm bar is used, which prints `Epoch N` alone."""

from __future__ import annotations

import lightning as L
import pytest
from lightning.pytorch.callbacks import TQDMProgressBar

from nif_lightning.callbacks import progress_bar


def _description(**budget) -> str:
    pytest.importorskip("rich")
    bar = progress_bar()
    kwargs = dict(accelerator="cpu", logger=False, enable_model_summary=False, **budget)
    trainer = L.Trainer(callbacks=[bar], **kwargs)
    assert trainer.progress_bar_callback is bar
    bar.setup(trainer, None, stage="fit")
    return bar._get_train_description(6).strip()


def test_a_step_budget_shows_steps_not_a_negative_epoch_count():
    assert _description(max_steps=360, max_epochs=-1) == "Epoch 6 (step 0/360)"


def test_an_epoch_budget_keeps_lightnings_epoch_count():
    assert _description(max_epochs=8) == "Epoch 6/7"


def test_without_rich_it_is_lightnings_tqdm_bar(monkeypatch):
    import lightning.pytorch.utilities.imports as imports

    monkeypatch.setattr(imports, "_RICH_AVAILABLE", False)
    assert type(progress_bar()) is TQDMProgressBar
