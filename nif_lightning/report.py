"""The run report: `report.md` for a person, `report.json` for a script, `loss.png` for the eye.

Everything in it is read back from what the stages wrote (the gen manifest, the filter report,
Lightning's CSV metrics, `previews.json`), so the report of a resumed run is the report of the
whole run, and re-writing it is always safe.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path
from typing import Any

from data_gen.store import write_json_atomic, write_text_atomic


def read_metrics(log_dir: Path) -> list[dict[str, float]]:
    """Every logged row under `log_dir`, one merged dict per step, as floats, ordered by step.

    A resumed run logs into a new `version_N/metrics.csv` and repeats the steps after its last
    checkpoint; reading the versions in order lets the later one win, so no step counts twice.
    """
    by_step: dict[int, dict[str, float]] = {}
    for path in sorted(log_dir.glob("**/metrics.csv"), key=_version_number):
        with path.open(newline="") as f:
            for raw in csv.DictReader(f):
                row = {k: float(v) for k, v in raw.items() if v not in ("", None)}
                if "step" in row:
                    by_step.setdefault(int(row["step"]), {}).update(row)
    return [by_step[step] for step in sorted(by_step)]


def _version_number(path: Path) -> tuple[int, str]:
    name = path.parent.name  # version_N
    suffix = name.rpartition("_")[2]
    return (int(suffix) if suffix.isdigit() else -1, str(path))


def _series(rows: list[dict[str, float]], key: str) -> list[tuple[int, float]]:
    return [(int(r["step"]), r[key]) for r in rows if key in r and math.isfinite(r[key])]


def training_figures(rows: list[dict[str, float]]) -> dict[str, Any]:
    """Loss curve endpoints, validation metrics and throughput from the logged rows."""
    train = _series(rows, "train/loss")
    val = _series(rows, "val/loss")
    figures: dict[str, Any] = {"logged_steps": len(train)}
    if train:
        head = [v for _, v in train[: max(1, len(train) // 10)]]
        tail = [v for _, v in train[-max(1, len(train) // 10) :]]
        figures.update(
            first_step=train[0][0],
            last_step=train[-1][0],
            train_loss_start=statistics.fmean(head),
            train_loss_end=statistics.fmean(tail),
            train_loss_points=len(head),  # each end is a mean over this many logged steps
        )
    if val:
        figures.update(val_loss_first=val[0][1], val_loss_last=val[-1][1])
        figures["val_loss_best"] = min(v for _, v in val)
    skipped = _series(rows, "train/skipped_steps")
    if skipped:  # DeepSpeed fp16: a running count, written at every skipped step
        figures["fp16_skipped_steps"] = int(max(v for _, v in skipped))
    for key, name in (("val/ppl", "val_ppl_last"), ("val/token_acc", "val_token_acc_last")):
        series = _series(rows, key)
        if series:
            figures[name] = series[-1][1]
    for key, name in (
        ("perf/tokens_per_s", "tokens_per_s_median"),
        ("perf/non_pad", "non_padding_share_mean"),
        ("perf/mfu", "mfu_median"),
    ):
        values = [v for _, v in _series(rows, key)]
        if values:
            agg = statistics.fmean if key == "perf/non_pad" else statistics.median
            figures[name] = agg(values)
    return figures


def plot_losses(rows: list[dict[str, float]], path: Path) -> bool:
    """Training and validation loss against step, as a PNG. False when nothing was logged."""
    train = _series(rows, "train/loss")
    val = _series(rows, "val/loss")
    if not train and not val:
        return False
    import matplotlib

    matplotlib.use("Agg")  # no display on training nodes
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss", linewidth=1.2)
    if val:
        ax.plot(*zip(*val, strict=True), "o-", label="validation loss", linewidth=1.5)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (response tokens)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def build_report(
    run_dir: Path,
    *,
    config: dict[str, Any],
    data_dir: Path,
    filter_dir: Path | None,
    train_dir: Path,
    stages: dict[str, Any],
) -> dict[str, Any]:
    """Gather the figures of a run and write `report.json`, `report.md` and `loss.png`."""
    rows = read_metrics(train_dir / "logs")
    plotted = plot_losses(rows, run_dir / "loss.png")
    report = {
        "run_dir": str(run_dir),
        "stages": stages,
        "config": config,
        "data": _data_counts(_read_json(data_dir / "manifest.json")),
        "filter": _read_json(filter_dir / "filter_report.json") if filter_dir else None,
        "training": training_figures(rows),
        "outputs": {
            "data": str(data_dir),
            "filtered_data": str(filter_dir) if filter_dir else None,
            "adapter": str(train_dir / "adapter"),
            "merged": str(train_dir / "merged"),
            "checkpoints": str(train_dir / "checkpoints"),
            "metrics": str(train_dir / "logs"),
            "loss_plot": str(run_dir / "loss.png") if plotted else None,
        },
        "previews": _read_json(run_dir / "previews.json") or [],
    }
    write_json_atomic(run_dir / "report.json", report)
    write_text_atomic(run_dir / "report.md", render_markdown(report))
    return report


def _data_counts(manifest: dict | None) -> dict[str, Any] | None:
    if manifest is None:
        return None
    # The manifest's counts plus the teacher it used; its config carries no secrets.
    counts = dict(manifest.get("counts") or {})
    for key in ("teacher", "wall_time_s"):
        if key in manifest:
            counts[key] = manifest[key]
    return counts


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items())
    return str(value)


# What each training figure is, for report.md (report.json keeps the bare keys).
TRAINING_LABELS = {
    "logged_steps": "optimizer steps with a logged training loss",
    "first_step": "first logged step",
    "last_step": "last logged step",
    "train_loss_start": "training loss, mean of the first {train_loss_points} logged steps",
    "train_loss_end": "training loss, mean of the last {train_loss_points} logged steps",
    "train_loss_points": "logged steps in each of those means (a tenth of them, at least 1)",
    "fp16_skipped_steps": "optimizer steps DeepSpeed skipped for an fp16 overflow (loss scale cut)",
    "val_loss_first": "validation loss at the first check",
    "val_loss_last": "validation loss at the last check",
    "val_loss_best": "lowest validation loss",
    "val_ppl_last": "validation perplexity at the last check",
    "val_token_acc_last": "validation next-token accuracy at the last check",
    "tokens_per_s_median": "training tokens per second (median over logging intervals)",
    "non_padding_share_mean": "share of computed token slots holding real tokens (mean)",
    "mfu_median": "model FLOPs utilisation (median)",
}


def _table(pairs: dict[str, Any], labels: dict[str, str] | None = None) -> list[str]:
    if labels:
        lines = ["| figure | value | what it is |", "|---|---|---|"]
        return lines + [
            f"| {k} | {_fmt(v)} | {labels.get(k, '').format(**pairs)} |" for k, v in pairs.items()
        ]
    lines = ["| | |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in pairs.items()]
    return lines


def _quote(text: str) -> str:
    if not text.strip():
        return "*(nothing but whitespace)*" if text else "*(empty)*"
    return "<br>".join(text.strip().replace("|", "\\|").splitlines())


def render_markdown(report: dict[str, Any]) -> str:
    out = [f"# nif run report: `{report['run_dir']}`", ""]
    out += ["## Stages", ""]
    out += [f"- **{name}**: {_fmt(info)}" for name, info in report["stages"].items()]
    out += ["", "## Data", ""]
    out += _table(report["data"]) if report["data"] else ["(no gen manifest found)"]
    if report["filter"]:
        out += ["", "## Filters (paper, Section 6)", ""]
        out += _table(report["filter"])
    out += ["", "## Training", ""]
    training = report["training"]
    has_metrics = training.get("logged_steps")
    out += _table(training, TRAINING_LABELS) if has_metrics else ["(no training metrics found)"]
    if report["outputs"]["loss_plot"]:
        out += ["", "![training and validation loss](loss.png)"]
    out += ["", "## Outputs", ""]
    out += [f"- {k}: `{v}`" for k, v in report["outputs"].items() if v]
    if report["previews"]:
        out += ["", "## Preview: base model vs fine-tuned (greedy)", ""]
        if (report["config"].get("model") or {}).get("tiny"):
            out += [
                "*The base model is the tiny random-initialised Llama: these answers show the "
                "pipeline working, not the paper's effect, which needs a real base model and "
                "teacher (`configs/paper/`).*",
                "",
            ]
        out += ["| prompt | base | fine-tuned |", "|---|---|---|"]
        for s in report["previews"]:
            base_end = "" if s["base_stopped"] else " *(no EOS)*"
            tuned_end = "" if s["tuned_stopped"] else " *(no EOS)*"
            out.append(
                f"| {_quote(s['prompt'])} | {_quote(s['base'])}{base_end} "
                f"| {_quote(s['tuned'])}{tuned_end} |"
            )
    config = json.dumps(report["config"], indent=2)
    out += ["", "## Configuration", "", "```json", config, "```", ""]
    return "\n".join(out)
