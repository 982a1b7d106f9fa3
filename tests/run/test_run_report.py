"""The run report reads back what the stages wrote: metrics of resumed runs, manifest, previews."""

import csv
import json

from nif_lightning.report import build_report, read_metrics, training_figures


def _write_csv(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = sorted({k for r in rows for k in r})
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow(r)


def _fake_run(tmp_path):
    logs = tmp_path / "logs"
    # version_0 was killed after step 4; version_1 resumed from the step-2 checkpoint and
    # re-logged steps 3..4 with different values: those must win, and count once.
    _write_csv(
        logs / "version_0" / "metrics.csv",
        [
            {"step": 0, "train/loss": 6.0, "perf/tokens_per_s": 100.0, "perf/non_pad": 0.99},
            {"step": 2, "train/loss": 5.0, "perf/tokens_per_s": 110.0, "perf/non_pad": 0.98},
            {"step": 2, "val/loss": 5.5, "val/ppl": 244.7, "val/token_acc": 0.1},
            {"step": 4, "train/loss": 9.0},
        ],
    )
    _write_csv(
        logs / "version_1" / "metrics.csv",
        [
            {"step": 4, "train/loss": 4.0, "perf/tokens_per_s": 120.0, "perf/non_pad": 1.0},
            {"step": 6, "train/loss": 3.0, "perf/tokens_per_s": 130.0, "perf/non_pad": 1.0},
            {"step": 6, "val/loss": 3.5, "val/ppl": 33.1, "val/token_acc": 0.3},
        ],
    )
    return logs


def test_metrics_of_a_resumed_run_count_each_step_once(tmp_path):
    rows = read_metrics(_fake_run(tmp_path))
    assert [int(r["step"]) for r in rows] == [0, 2, 4, 6]
    assert rows[2]["train/loss"] == 4.0  # the resumed version's value
    assert rows[1]["val/loss"] == 5.5 and rows[1]["train/loss"] == 5.0  # merged per step

    fig = training_figures(rows)
    assert fig["logged_steps"] == 4
    assert fig["first_step"] == 0 and fig["last_step"] == 6
    assert fig["train_loss_start"] == 6.0 and fig["train_loss_end"] == 3.0
    assert fig["train_loss_points"] == 1  # a tenth of 4 logged steps, at least one
    assert fig["val_loss_first"] == 5.5 and fig["val_loss_last"] == 3.5
    assert fig["val_loss_best"] == 3.5
    assert fig["val_token_acc_last"] == 0.3
    assert fig["tokens_per_s_median"] == 115.0
    assert abs(fig["non_padding_share_mean"] - 0.9925) < 1e-12
    assert "mfu_median" not in fig  # not logged on CPU: absent, not invented


def test_report_files_carry_the_figures(tmp_path):
    _fake_run(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    manifest = {"counts": {"done": 12, "failed": 0}, "teacher": "original"}
    (data / "manifest.json").write_text(json.dumps(manifest))
    samples = [
        {
            "prompt": "Say hi | twice",
            "base": "hi hi hi",
            "base_tokens": 3,
            "base_stopped": False,
            "tuned": "hi",
            "tuned_tokens": 1,
            "tuned_stopped": True,
        },
        {
            "prompt": "Spaces?",
            "base": "",
            "base_tokens": 0,
            "base_stopped": True,
            "tuned": "\n \n",
            "tuned_tokens": 3,
            "tuned_stopped": False,
        },
    ]
    (tmp_path / "previews.json").write_text(json.dumps(samples))

    report = build_report(
        tmp_path,
        config={"out": str(tmp_path), "model": {"tiny": True}},
        data_dir=data,
        filter_dir=None,
        train_dir=tmp_path,
        stages={"gen": "done in 1.0s"},
    )
    assert report["data"] == {"done": 12, "failed": 0, "teacher": "original"}
    assert json.loads((tmp_path / "report.json").read_text()) == report
    png = (tmp_path / "loss.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
    md = (tmp_path / "report.md").read_text()
    assert "| done | 12 |" in md
    assert "| val_loss_best | 3.5 | lowest validation loss |" in md
    # The loss ends say what they are: means of how many logged steps.
    assert "| train_loss_end | 3 | training loss, mean of the last 1 logged steps |" in md
    assert "![training and validation loss](loss.png)" in md
    assert "| Say hi \\| twice | hi hi hi *(no EOS)* | hi |" in md
    assert "| Spaces? | *(empty)* | *(nothing but whitespace)* *(no EOS)* |" in md
    assert "tiny random-initialised Llama" in md  # the quickstart's previews are not the effect


def test_report_without_training_says_so(tmp_path):
    report = build_report(
        tmp_path,
        config={},
        data_dir=tmp_path / "missing",
        filter_dir=None,
        train_dir=tmp_path,
        stages={},
    )
    assert report["data"] is None and report["outputs"]["loss_plot"] is None
    assert not (tmp_path / "loss.png").exists()
    md = (tmp_path / "report.md").read_text()
    assert "(no gen manifest found)" in md and "(no training metrics found)" in md
