"""Every flag of `nif gen`, `nif filter` and `nif export` states its default in `--help` (or
that it is required), and a default that stands for something says what (issue 13, item 7)."""

from __future__ import annotations

import re

import pytest

from nif_lightning.cli import main


def _help(capsys, command: str) -> dict[str, str]:
    """`nif COMMAND --help`: each option's help text, by its flags, on one line."""
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    start = min(text.find(h) for h in ("\npositional arguments:\n", "\noptions:\n") if h in text)
    # An entry starts at two spaces then a flag or a positional name; its help follows.
    entries = re.split(r"\n  (?=[-\w{])", text[start:])
    found = {}
    for entry in entries:
        flat = " ".join(entry.split())
        if flat and not flat.endswith(":"):
            found[flat.split()[0].rstrip(",")] = flat
    return found


@pytest.mark.parametrize("command", ["gen", "filter", "export"])
def test_every_flag_states_its_default(capsys, command):
    options = _help(capsys, command)
    assert len(options) > 3
    missing = [
        flag
        for flag, text in options.items()
        if flag not in ("-h",)
        and "(default:" not in text
        and "(required" not in text
        and "is required)" not in text
    ]
    assert not missing, missing


def test_defaults_that_stand_for_something_say_what(capsys):
    gen = _help(capsys, "gen")
    assert "https://api.openai.com/v1 (openai)" in gen["--base-url"]
    assert "ANTHROPIC_API_KEY (anthropic)" in gen["--api-key-env"]
    assert "the paper's for `anthropic`" in gen["--system-prompt"]
    assert "(default: no limit)" in gen["--rpm"]
    flt = _help(capsys, "filter")
    assert "(default: none: no judge" in flt["--judge-teacher"]
    assert "(default: 16)" in flt["--judge-max-tokens"]  # the section's own default wins
    export = _help(capsys, "export")
    assert "(default: nif)" in export["--name"] and "(required)" in export["DIR"]
