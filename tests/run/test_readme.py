"""The README's promises that can be executed: its Python example runs, and its two commands
are the ones `.ci/run` and a new user would type."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parents[2]


def _python_example() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Use it from your own Lightning code", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_python_example_runs(tmp_path, monkeypatch):
    from data_gen.generate import GenConfig, generate
    from nif_lightning.tiny_model import save_tiny_model

    # What `nif run` leaves behind, in miniature.
    run = tmp_path / "runs" / "quickstart"
    generate(GenConfig(corpus="builtin", out=str(run / "data"), num_docs=30), progress=False)
    save_tiny_model(run / "base-model")
    monkeypatch.chdir(tmp_path)
    exec(compile(_python_example(), "README.md", "exec"), {"__name__": "readme"})
    assert (tmp_path / "runs" / "my-adapter" / "adapter_model.safetensors").is_file()


def test_readme_commands_match_ci():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "pip install torch==2.13.0" in text and "nif run" in text
    for step in ("torch==2.13.0", '-e ".[test,eval]"', "deepspeed", "ruff check .", "pytest"):
        assert step in ci and step in text, step
