"""`data_gen.schema` on a small config: one dataclass gives the flags, the YAML reading, the
coercions and the collected errors; `to_dict` and `build` are inverses."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Literal

import pytest

from data_gen.schema import (
    ConfigError,
    add_arguments,
    build,
    coerce,
    field_docs,
    from_args,
    option,
    section,
    to_dict,
)


@dataclass
class Client:
    kind: Literal["none", "api"] = option("none", flag="client")
    """Who answers."""
    urls: tuple[str, ...] = option((), flag="url")
    """Servers."""
    max_tokens: int = 100
    """Reply cap."""
    wait: bool = True
    """Wait for it."""

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError("`--max-tokens` must be >= 1")


@dataclass
class Job:
    src: str = option(positional=True, metavar="DIR")
    """Input folder."""
    steps: int | Literal["auto"] = "auto"
    """How many."""
    lr: float = 1e-3
    """Step size."""
    client: Client = section(Client, flatten=True, title="client")
    judge: Client | None = section(None, flatten=True, prefix="judge_", defaults={"max_tokens": 8})


def test_attribute_docstrings_are_the_help():
    assert field_docs(Job)["steps"] == "How many."
    assert field_docs(Client)["kind"] == "Who answers."


@pytest.mark.parametrize(
    "value, tp, expected",
    [
        ("5e-3", float, 5e-3),  # PyYAML leaves exponent-only floats as strings
        (3, float, 3.0),
        ("12", int, 12),
        ("8", int | Literal["auto"], 8),
        ("auto", int | Literal["auto"], "auto"),
        ("x", tuple[str, ...], ("x",)),
        (["a", "b"], list[str], ["a", "b"]),
        (None, int | None, None),
        ("false", bool, False),
    ],
)
def test_coercion(value, tp, expected):
    got = coerce(value, tp)
    assert got == expected and type(got) is type(expected)


@pytest.mark.parametrize("value, tp", [(True, int), (1, bool), ("many", float), ("x", int | None)])
def test_coercion_refuses(value, tp):
    with pytest.raises(Exception, match="expected"):
        coerce(value, tp)


def test_optional_section_is_built_only_when_asked_for_with_its_own_defaults():
    assert build(Job, {"src": "d"}).judge is None
    job = build(Job, {"src": "d", "judge_client": "api", "url": ["http://a"]})
    assert job.judge == Client(kind="api", max_tokens=8)
    assert job.client.urls == ("http://a",)


def test_every_problem_is_collected_with_its_path():
    with pytest.raises(ConfigError) as err:
        build(Job, {"stpes": 1, "lr": "fast", "client": "nobody", "wait": "maybe"}, path="job")
    problems = err.value.problems
    assert len(problems) == 5, problems
    for text in ("job.stpes", "job.lr", "job.client", "job.wait", "job.src` is required"):
        assert any(text in p for p in problems), text


def test_the_class_checks_run_after_the_types():
    with pytest.raises(ConfigError, match="max-tokens"):
        build(Job, {"src": "d", "max_tokens": 0})


def test_round_trip():
    job = build(Job, {"src": "d", "steps": "7", "judge_client": "api", "wait": False})
    assert build(Job, to_dict(job)) == job


def test_flags_and_their_defaults():
    parser = argparse.ArgumentParser()
    add_arguments(parser, Job)
    text = parser.format_help()
    assert "--judge-max-tokens" in text and "(default: 8)" in text  # the section's own default
    assert "--no-wait" in text and "(default: on)" in text
    args = parser.parse_args(["d", "--url", "http://a", "--url", "http://b", "--no-wait"])
    job = from_args(Job, args)
    assert job.client.urls == ("http://a", "http://b") and job.client.wait is False
    with pytest.raises(ConfigError, match="--lr"):  # flags are named as flags
        from_args(Job, parser.parse_args(["d", "--lr", "fast"]))
