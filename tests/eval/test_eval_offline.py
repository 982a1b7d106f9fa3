"""Offline evaluation: `nif eval MODEL` with no flags runs what needs no network and no key and
says what it skipped; the lm-eval suites without the Hub stop in one line naming the task and
the dataset, in seconds; the shipped demo tasks run the leaderboard path offline through lm-eval;
too few few-shot documents name the task."""

import json
import time

import pytest

from nif_lightning.cli import main
from nif_lightning.evaluation import DATA_DIR
from nif_lightning.evaluation.config import EvalConfig


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No Hub and an empty Hugging Face cache."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HF_DATASETS_CACHE", raising=False)


def test_auto_suites():
    cfg = EvalConfig(model="m")
    assert cfg.suites == ("ifeval",) and set(cfg.skipped) == {"oll", "judge"}
    assert "--include-path demo" in cfg.skipped["oll"]
    assert "--judge-teacher" in cfg.skipped["judge"]
    cfg = EvalConfig(model="m", include_path="tasks")
    assert cfg.suites == ("ifeval", "oll") and set(cfg.skipped) == {"judge"}
    cfg = EvalConfig(model="m", suites=("oll",))
    assert cfg.suites == ("oll",) and cfg.skipped == {}
    with pytest.raises(ValueError, match="`--suite judge` needs a judge"):
        EvalConfig(model="m", suites=("all",))


def test_no_flags_runs_offline_and_says_what_it_skipped(tiny, tmp_path, capsys, offline):
    prompts = tmp_path / "ifeval.jsonl"
    lines = (DATA_DIR / "ifeval_prompts.jsonl").read_text(encoding="utf-8").splitlines()
    prompts.write_text("\n".join(lines[:2]) + "\n", encoding="utf-8")
    out = tmp_path / "eval"
    argv = ["eval", str(tiny), "--out", str(out), "--ifeval-prompts", str(prompts)]
    assert main([*argv, "--max-new-tokens", "4", "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "nif eval: oll skipped: " in err and "nif eval: judge skipped: " in err
    data = json.loads((out / "eval.json").read_text())
    assert list(data["suites"]) == ["ifeval"]
    assert set(data["skipped"]) == {"oll", "judge"}


@pytest.mark.parametrize(
    "extra, dataset",
    [(["--suite", "oll"], "allenai/ai2_arc"), (["--ifeval-backend", "lm-eval"], "google/IFEval")],
)
def test_lm_eval_suites_offline_fail_in_one_line(tiny, tmp_path, capsys, offline, extra, dataset):
    pytest.importorskip("lm_eval")
    out = tmp_path / "eval"
    start = time.monotonic()
    assert main(["eval", str(tiny), "--out", str(out), *extra]) == 2
    assert time.monotonic() - start < 20  # no Hub retries (~25 s of them before the fix)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err
    assert f"needs dataset {dataset!r}" in lines[0] and "--include-path DIR" in lines[0]
    assert not out.exists()  # refused before any work


def _lm_cfg(tiny, tasks, include_path, **kw):
    from nif_lightning.evaluation.lm_eval_suite import LMEvalConfig

    return LMEvalConfig(
        model=str(tiny), tasks=tasks, include_path=str(include_path), device="cpu", **kw
    )


def test_unknown_hub_dataset_offline_is_named_before_the_model_loads(tiny, tmp_path, offline):
    # A task the quick pre-check cannot know: lm-eval itself fails offline, and the error is
    # still one line naming the task and the dataset.
    pytest.importorskip("lm_eval")
    from nif_lightning.evaluation.lm_eval_suite import run_lm_eval

    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "nif_hub_task.yaml").write_text(
        "task: nif_hub_task\ndataset_path: nif-test/not-cached\ntest_split: test\n"
        "output_type: multiple_choice\ndoc_to_text: q\ndoc_to_choice: ['a', 'b']\n"
        "doc_to_target: 0\nmetric_list: [{metric: acc}]\n",
        encoding="utf-8",
    )
    cfg = _lm_cfg(tiny, {"nif_hub_task": (0, "acc,none", "X")}, tasks)
    with pytest.raises(
        ValueError, match=r"task 'nif_hub_task' needs dataset 'nif-test/not-cached'"
    ):
        run_lm_eval(cfg)


def test_too_few_documents_names_the_task(tiny, tmp_path, offline):
    pytest.importorskip("lm_eval")
    from nif_lightning.evaluation.lm_eval_suite import DEMO_TASKS, run_lm_eval

    # The demo ARC has 30 few-shot documents: 40 shots cannot be drawn from them.
    cfg = _lm_cfg(tiny, {"arc_challenge": (40, "acc_norm,none", "ARC")}, DEMO_TASKS, limit=1)
    with pytest.raises(ValueError, match=r"task 'arc_challenge' has fewer few-shot documents"):
        run_lm_eval(cfg)


def test_shipped_demo_tasks_run_the_leaderboard_path_offline(tiny, tmp_path, offline):
    pytest.importorskip("lm_eval")
    from nif_lightning.evaluation.lm_eval_suite import OLL_TASKS

    out = tmp_path / "eval"
    argv = ["eval", str(tiny), "--suite", "oll", "--out", str(out), "--device", "cpu"]
    assert main([*argv, "--include-path", "demo", "--limit", "2"]) == 0
    oll = json.loads((out / "eval.json").read_text())["suites"]["oll"]
    assert {t: r["shots"] for t, r in oll["tasks"].items()} == {
        t: spec[0] for t, spec in OLL_TASKS.items()
    }
    scores = [oll["tasks"][t]["score"] for t in OLL_TASKS]
    assert all(s in (0.0, 50.0, 100.0) for s in scores)  # 2 documents per task
    assert oll["oll_average"] == round(sum(scores) / 6, 2)
    assert oll["tasks"]["gsm8k"]["metric"] == "exact_match,strict-match"
    assert "not leaderboard scores" in oll["note"]


def test_hub_probe(monkeypatch):
    import socket

    from nif_lightning.evaluation.lm_eval_suite import _connects, hub_reachable

    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("ALL_PROXY", raising=False)
    monkeypatch.delenv("all_proxy", raising=False)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
        assert hub_reachable(timeout=2.0)
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        assert not hub_reachable(timeout=2.0)  # offline mode wins over a reachable Hub
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")  # closed now
    _connects.cache_clear()  # the probe is remembered for the process
    assert not hub_reachable(timeout=2.0)
