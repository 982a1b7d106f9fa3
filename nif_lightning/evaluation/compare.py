"""`nif eval compare RUN_DIR...`: every suite of several models in one table.

The rows are models (e.g. base / lora / lora-base), the columns follow the paper: the template
and MT-Bench score of Table 1, the Arena-Hard-style win rate of Table 5 and the Arena-Hard
(Bradley-Terry) score of the same games, the six Open LLM
Leaderboard tasks and their mean (Table 4 / 15), and IFEval. A suite a model was not run on
shows "-", as the paper's tables do. The same figures go to JSON for plotting or diffing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nif_lightning.evaluation.lm_eval_suite import OLL_TASKS

# (column header, how to read it from an eval.json, decimals)
_COLUMNS: list[tuple[str, tuple[str, ...], int]] = [
    ("MT-Bench", ("judge", "single", "score"), 2),
    ("WR %", ("judge", "pairwise", "win_rate"), 2),
    ("AH %", ("judge", "pairwise", "arena_hard_score"), 2),
    *[(spec[2], ("oll", "tasks", task, "score"), 2) for task, spec in OLL_TASKS.items()],
    ("OLL", ("oll", "oll_average"), 2),
    ("IFEval strict", ("ifeval", "prompt_level_strict"), 2),
    ("IFEval loose", ("ifeval", "inst_level_loose"), 2),
]


def find_eval_json(run_dir: str | Path) -> Path:
    """RUN_DIR/eval.json, or RUN_DIR/eval/eval.json (the `nif run` layout)."""
    run_dir = Path(run_dir)
    for path in (run_dir / "eval.json", run_dir / "eval" / "eval.json"):
        if path.is_file():
            return path
    raise ValueError(f"`RUN_DIR` {str(run_dir)!r} holds no eval.json (run `nif eval` on it first)")


def _get(data: dict[str, Any], path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(data, dict) or data.get(key) is None:
            return None
        data = data[key]
    return data


def collect(run_dirs: list[str | Path]) -> list[dict[str, Any]]:
    """One row per run: its name, template and every column's value (None when not run)."""
    if not run_dirs:
        raise ValueError("`nif eval compare` needs at least one RUN_DIR")
    rows = []
    for run_dir in run_dirs:
        path = find_eval_json(run_dir)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err.msg})") from None
        suites = data.get("suites", {})
        row = {"name": data.get("name") or Path(run_dir).name, "template": data.get("template")}
        row.update({header: _get(suites, where) for header, where, _ in _COLUMNS})
        rows.append(row)
    return rows


def render_markdown(rows: list[dict[str, Any]]) -> str:
    headers = ["Model", "Template", *[h for h, _, _ in _COLUMNS]]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        cells = [row["name"], row["template"] or "-"]
        for header, _, decimals in _COLUMNS:
            value = row[header]
            cells.append("-" if value is None else f"{value:.{decimals}f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def compare(run_dirs: list[str | Path], out: str | Path) -> str:
    """Write OUT/compare.md and OUT/compare.json; returns the Markdown table."""
    rows = collect(run_dirs)
    table = render_markdown(rows)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.md").write_text(table, encoding="utf-8")
    payload = {"columns": ["Model", "Template", *[h for h, _, _ in _COLUMNS]], "rows": rows}
    (out / "compare.json").write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return table
