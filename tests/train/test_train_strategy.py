"""Strategy choice and the DeepSpeed config, built on CPU against the installed DeepSpeed."""

from __future__ import annotations

import pytest

from nif_lightning.strategy import StrategyConfig, build_strategy, deepspeed_config, uses_deepspeed


def test_fp16_config_has_the_recipe_loss_scaling():
    cfg = deepspeed_config(2, "16-mixed")
    assert cfg["zero_optimization"]["stage"] == 2
    assert cfg["fp16"] == {
        "enabled": True,
        "loss_scale": 0,
        "initial_scale_power": 16,
        "loss_scale_window": 1000,
        "hysteresis": 2,
        "min_loss_scale": 1,
    }
    assert "gradient_accumulation_steps" not in cfg  # Lightning's Trainer owns accumulation
    assert "bf16" not in deepspeed_config(3, "32-true") and "fp16" not in deepspeed_config(
        3, "32-true"
    )
    assert deepspeed_config(3, "bf16-mixed")["bf16"] == {"enabled": True}


def test_strategy_choice():
    assert build_strategy(StrategyConfig(), cuda_available=False) == "auto"
    assert uses_deepspeed(StrategyConfig(), cuda_available=True)
    assert not uses_deepspeed(StrategyConfig(strategy="ddp"), cuda_available=True)
    # DeepSpeed on CPU ranks is a real option now (tests/train/test_train_deepspeed.py runs it).
    assert uses_deepspeed(StrategyConfig(strategy="deepspeed"), cuda_available=False)


def test_micro_batch_and_offload_are_in_the_config():
    """Lightning guesses the micro-batch size from `loader.batch_sampler` unless the config has
    it; our loaders have none (batch_size=None), which crashed every DeepSpeed run at setup."""
    assert deepspeed_config(2, "16-mixed")["train_micro_batch_size_per_gpu"] == 1
    zero = deepspeed_config(3, "16-mixed", "params")["zero_optimization"]
    assert zero["offload_param"]["device"] == "cpu" and "offload_optimizer" not in zero
    zero = deepspeed_config(2, "16-mixed", "optimizer")["zero_optimization"]
    assert zero["offload_optimizer"]["device"] == "cpu" and "offload_param" not in zero
    with pytest.raises(ValueError, match="trainer.zero_stage: 3"):
        StrategyConfig(strategy="deepspeed", zero_stage=2, offload="params")
    with pytest.raises(ValueError, match="trainer.offload"):
        StrategyConfig(offload="gpu")
    with pytest.raises(ValueError, match="needs DeepSpeed"):
        StrategyConfig(strategy="ddp", offload="optimizer")


def test_deepspeed_strategy_builds_on_cpu():
    pytest.importorskip("deepspeed")
    from deepspeed.runtime.config import DeepSpeedConfig
    from lightning.pytorch.strategies import DeepSpeedStrategy

    from nif_lightning.strategy import NifDeepSpeedStrategy

    strategy = build_strategy(
        StrategyConfig(strategy="deepspeed", zero_stage=3, precision="16-mixed"),
        cuda_available=True,
    )
    assert isinstance(strategy, NifDeepSpeedStrategy) and isinstance(strategy, DeepSpeedStrategy)
    assert strategy.exclude_frozen_parameters
    assert strategy.config["zero_optimization"]["stage"] == 3
    # DeepSpeed itself accepts the dict once Lightning adds the accumulation.
    ds = DeepSpeedConfig({**deepspeed_config(2, "16-mixed"), "gradient_accumulation_steps": 4})
    assert ds.float16_config.enabled and ds.zero_optimization_stage == 2
    fp16 = ds.float16_config
    assert fp16.initial_scale_power == 16 and fp16.hysteresis == 2 and fp16.min_loss_scale == 1


@pytest.mark.parametrize(
    ("kwargs", "flag"),
    [
        ({"strategy": "fsdp9"}, "trainer.strategy"),
        ({"zero_stage": 4}, "trainer.zero_stage"),
        ({"precision": "8"}, "trainer.precision"),
        ({"num_nodes": 0}, "trainer.num_nodes"),
        ({"devices": 0}, "trainer.devices"),
    ],
)
def test_bad_strategy_config_names_the_key(kwargs, flag):
    with pytest.raises(ValueError, match=flag):
        StrategyConfig(**kwargs)
