"""The layering the README promises, checked on the source: `data_gen` never imports
`nif_lightning`, the kernels import nothing of ours, no library module or recipe calls the CLI,
and the configs import neither torch nor Lightning."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


def _imports(path: Path) -> set[str]:
    """Absolute module names imported anywhere in the file (also inside functions)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def _files(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


@pytest.mark.parametrize("path", _files("data_gen"), ids=lambda p: str(p.relative_to(ROOT)))
def test_data_gen_never_imports_nif_lightning(path):
    assert not {n for n in _imports(path) if n.split(".")[0] == "nif_lightning"}


@pytest.mark.parametrize("path", _files("kernels"), ids=lambda p: str(p.relative_to(ROOT)))
def test_kernels_import_nothing_of_ours(path):
    ours = {"nif_lightning", "data_gen", "kernels", "benchmarks"}
    assert not {n for n in _imports(path) if n.split(".")[0] in ours}


def test_no_library_module_or_recipe_calls_the_cli():
    for path in _files("nif_lightning"):
        if path.name.startswith("cli"):
            continue
        cli = {n for n in _imports(path) if n.startswith("nif_lightning.cli")}
        assert not cli, f"{path.relative_to(ROOT)} imports {cli}"


def test_the_llm_clients_have_no_cycle():
    """The factory imports the clients; no client imports the factory."""
    for path in _files("data_gen/llm"):
        if path.name in ("factory.py", "__init__.py"):
            continue
        assert "data_gen.llm.factory" not in _imports(path), path.name


def test_configs_import_neither_torch_nor_lightning():
    code = (
        "import sys\n"
        "import data_gen.config, nif_lightning.config, nif_lightning.evaluation.config\n"
        "from nif_lightning.cli import build_parser\n"
        "build_parser()\n"
        "heavy = sorted(m for m in ('torch', 'lightning', 'transformers') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
