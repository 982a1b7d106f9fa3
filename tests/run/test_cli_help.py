"""The CLI help shows every default, and the flags of `nif gen` / `nif filter` / `nif eval` /
`nif train` are exactly their configs' fields: one place to add an option."""

from __future__ import annotations

import argparse

import pytest

from data_gen.schema import options, sections
from nif_lightning.cli import build_parser


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


_COMMANDS = sorted(_subparsers(build_parser()))


@pytest.mark.parametrize("command", _COMMANDS)
def test_every_option_says_its_default(command):
    sub = _subparsers(build_parser())[command]
    for action in sub._actions:
        if isinstance(action, argparse._HelpAction) or not action.option_strings:
            continue
        text = action.help or ""
        assert "default" in text or "(required)" in text, f"nif {command} {action.option_strings}"


def _flags(command: str) -> set[str]:
    sub = _subparsers(build_parser())[command]
    return {s for a in sub._actions for s in a.option_strings if s.startswith("--")}


def test_flags_are_the_config_fields():
    from data_gen.config import FilterConfig, GenConfig
    from nif_lightning.config import TrainConfig
    from nif_lightning.evaluation.config import EvalConfig

    for command, cls in (("gen", GenConfig), ("filter", FilterConfig), ("eval", EvalConfig)):
        expected = {o.flag for o in options(cls) if not o.positional and o.key != "model"}
        assert expected <= _flags(command), command
    expected = {
        f"--{name}.{o.key.replace('_', '-')}"
        for name, sub in sections(TrainConfig)
        for o in options(sub)
    }
    assert expected <= _flags("train")
    # The old hand-written flags still work: they are derived now.
    assert {"--teacher", "--base-url", "--no-wait", "--judge-teacher", "--dry-run"} <= (
        _flags("gen") | _flags("filter")
    )
    assert {"--no-uppercase", "--keep-instructional", "--judge-batch"} <= _flags("filter")
    assert {"--model", "--data", "--max-steps", "--lora.r", "--trainer.zero-stage"} <= _flags(
        "train"
    )
