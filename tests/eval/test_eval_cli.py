"""`nif eval` end to end on the tiny model with a local judge: the files it writes, a rerun that
generates and asks nothing, answer generation resumed after a kill, and bad input refused."""

import contextlib
import json

import pytest

from fake_provider import FakeTeacherServer
from nif_lightning.cli import main
from nif_lightning.evaluation import DATA_DIR, answers
from nif_lightning.evaluation.answers import (
    format_prompt,
    generate_answers,
    read_cache,
)
from nif_lightning.evaluation.config import GenerateConfig


def _judge(prompt: str) -> str:
    if "[Answer A]" in prompt:
        return "A reads better. [[A>B]]"  # a position-biased judge
    return "Reasonable.\n[[5]]"


def _args(tiny, out, url, *extra):
    return [
        "eval",
        str(tiny),
        "--out",
        str(out),
        "--suite",
        "ifeval",
        "--suite",
        "judge",
        "--max-new-tokens",
        "6",
        "--judge-teacher",
        "openai",
        "--judge-model",
        "judge-test",
        "--judge-base-url",
        url,
        "--judge-max-retries",
        "0",
        *extra,
    ]


def test_eval_end_to_end_and_rerun(tiny, tmp_path, monkeypatch, capsys):
    out = tmp_path / "eval"
    with FakeTeacherServer(reply_fn=_judge) as server:
        assert main(_args(tiny, out, server.url, "--name", "base")) == 0
        assert server.requests == 16  # 8 questions x 2 turns
    assert len((out / "answers.jsonl").read_text().splitlines()) == 16
    assert len((out / "ifeval_answers.jsonl").read_text().splitlines()) == 17
    assert len((out / "verdicts.jsonl").read_text().splitlines()) == 16
    result = json.loads((out / "eval.json").read_text())
    assert result["name"] == "base" and result["template"] == "one_shot"  # no chat template
    assert set(result["suites"]) == {"ifeval", "judge"}
    assert result["suites"]["judge"]["single"]["score"] == 5.0
    assert result["suites"]["ifeval"]["prompts"] == 17
    assert json.loads(capsys.readouterr().out)["suites"]["judge"]["single"]["graded"] == 16

    # Everything is cached: the rerun loads no model and asks the judge nothing new; a
    # pairwise run against the model's own answers only asks for the 2 x 8 games.
    def no_model(cfg):
        raise AssertionError("the model was loaded although every answer is cached")

    monkeypatch.setattr(answers, "_Model", no_model)
    baseline = str(out / "answers.jsonl")
    with FakeTeacherServer(reply_fn=_judge) as server:
        args = _args(tiny, out, server.url, "--name", "base", "--baseline-answers", baseline)
        assert main(args) == 0
        assert server.requests == 16
    result = json.loads((out / "eval.json").read_text())
    pair = result["suites"]["judge"]["pairwise"]
    assert pair["win_rate"] == 50.0 and pair["order_inconsistent_questions"] == 8
    assert pair["win_rate_ci95"] == [50.0, 50.0]  # every question a win and a loss: no spread

    assert main(["eval", "compare", str(out), "--out", str(tmp_path / "cmp")]) == 0
    row = capsys.readouterr().out.splitlines()[-1]
    assert row.startswith("| base | one_shot | 5.00 | 50.00 | 50.00 | - |")  # win rate, AH %


def test_generation_resumes_after_kill(tiny, tmp_path, monkeypatch):
    questions = [("a", ["Say hi.", "Again."]), ("b", ["Count to three."]), ("c", ["Name a fruit."])]
    cfg = GenerateConfig(model=str(tiny), template="vanilla", max_new_tokens=5, batch_size=2)
    full = generate_answers(cfg, questions, tmp_path / "full.jsonl")
    assert [len(v) for v in full.values()] == [2, 1, 1]

    # A kill after the first batch, in the middle of writing the next line.
    lines = (tmp_path / "full.jsonl").read_text().splitlines()
    (tmp_path / "cut.jsonl").write_text(lines[0] + "\n" + lines[1] + "\n" + lines[2][:9])
    asked = []
    real = answers._Model.generate

    def counting(self, prompts, cfg):
        asked.extend(prompts)
        return real(self, prompts, cfg)

    monkeypatch.setattr(answers._Model, "generate", counting)
    resumed = generate_answers(cfg, questions, tmp_path / "cut.jsonl")
    assert len(asked) == 2  # question c's turn 1 and question a's turn 2, nothing else
    assert resumed == full  # greedy: the same answers as the uninterrupted run
    assert len(read_cache(tmp_path / "cut.jsonl")) == 4


def test_templates(tiny):
    from transformers import AutoTokenizer

    one_shot = format_prompt("one_shot", ["Q1", "Q2"], ["A1"])
    assert one_shot.endswith("### Human: Q1\n### Assistant: A1\n### Human: Q2\n### Assistant:")
    assert format_prompt("vanilla", ["Q1", "Q2"], ["A1"]) == "Q1\n\nA1\n\nQ2\n\n"
    with pytest.raises(ValueError, match="`--template chat`: this tokenizer has no chat"):
        format_prompt("chat", ["Q"], [], AutoTokenizer.from_pretrained(tiny))
    assert answers._clean("one_shot", " Sure.\n### Human: more") == "Sure."


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--suite", "judge"], "`--suite judge` needs a judge"),
        (["--questions", "/nonexistent.jsonl"], "`--questions`"),
        (["--max-new-tokens", "0"], "`--max-new-tokens` must be >= 1"),
        (["--suite", "judge", "--judge-teacher", "openai"], "`--teacher openai` needs `--model`"),
        (["--baseline-answers", "/none.jsonl"], "`--baseline-answers`"),
        (["--adapter", "/no/adapter"], "`--adapter` '/no/adapter' is not a folder"),
    ],
)
def test_bad_input_refused_before_work(tiny, tmp_path, capsys, extra, message):
    argv = ["eval", str(tiny), "--out", str(tmp_path / "o"), *extra]
    if "--suite" not in extra:
        argv += ["--suite", "judge", "--judge-teacher", "openai", "--judge-model", "j"]
        argv += ["--judge-base-url", "http://127.0.0.1:9/v1"]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # nothing started


def test_missing_model_dir_refused(tmp_path, capsys):
    argv = [
        "eval",
        str(tmp_path / "no" / "model"),
        "--out",
        str(tmp_path / "o"),
        "--suite",
        "ifeval",
    ]
    assert main(argv) == 2
    assert "neither a local folder nor a Hub id" in capsys.readouterr().err


def test_shipped_questions_are_two_turn():
    from nif_lightning.evaluation.judge import load_questions

    questions = load_questions(DATA_DIR / "mt_questions.jsonl")
    assert len(questions) == 8 and all(len(q["turns"]) == 2 for q in questions)
    assert len({q["category"] for q in questions}) == 8


def test_sigkill_mid_judging_then_resume(tiny, tmp_path):
    """SIGKILL `nif eval` while the judge is answering; the rerun asks only what is missing."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "eval"
    verdicts = out / "verdicts.jsonl"
    with FakeTeacherServer(reply_fn=_judge, latency=0.3) as server:
        argv = _args(tiny, out, server.url, "--judge-concurrency", "1")
        proc = subprocess.Popen(
            [sys.executable, "-m", "nif_lightning.cli", *argv],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if verdicts.is_file() and len(verdicts.read_text().splitlines()) >= 3:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    kept = len(_read_lines(verdicts))
    assert 3 <= kept < 16, "the kill should land in the middle of judging"
    assert not (out / "eval.json").is_file() or "judge" not in (out / "eval.json").read_text()

    with FakeTeacherServer(reply_fn=_judge) as server:
        assert main(_args(tiny, out, server.url)) == 0
        assert server.requests == 16 - kept  # nothing is asked twice
    single = json.loads((out / "eval.json").read_text())["suites"]["judge"]["single"]
    assert single["graded"] == 16 and single["score"] == 5.0


def _read_lines(path):
    lines = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):  # the line the kill cut short
            lines.append(json.loads(line))
    return lines


def test_base_plus_adapter_is_merged_once(tiny, tmp_path, monkeypatch):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():  # a non-zero B, so the merge changes the weights
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.fill_(0.01)
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)
    out = tmp_path / "eval"
    argv = ["eval", str(tiny), "--adapter", str(adapter), "--out", str(out), "--suite", "ifeval"]
    argv += ["--max-new-tokens", "4"]
    assert main(argv) == 0
    merged = AutoModelForCausalLM.from_pretrained(out / "merged-model")
    base_q = AutoModelForCausalLM.from_pretrained(tiny).model.layers[0].self_attn.q_proj.weight
    assert not torch.equal(merged.model.layers[0].self_attn.q_proj.weight, base_q)
    assert json.loads((out / "eval.json").read_text())["adapter"] == str(adapter)

    import nif_lightning.merge

    def no_merge(*a, **k):
        raise AssertionError("merged again although OUT/merged-model is up to date")

    monkeypatch.setattr(nif_lightning.merge, "merge_adapter", no_merge)
    assert main(argv) == 0


def test_help_usage_and_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    text = capsys.readouterr().out
    usage = text.split("\n\n", 1)[0]
    assert usage == (
        "usage: nif eval MODEL_DIR [--suite SUITE ...] [options]\n"
        "       nif eval compare RUN_DIR [RUN_DIR ...] [--out OUT]"
    )
    assert str(DATA_DIR) not in text  # the shipped files by name
    assert "(default: the shipped mt_questions.jsonl)" in " ".join(text.split())
    flat = " ".join(text.split())
    assert "(default: none: no judge; `--suite judge` needs one)" in flat
    assert "(default: ours, a careful impartial judge; with `--judge-prompts` each" in flat
    assert "(default: original)" not in flat  # the teacher's default cannot judge
    assert "not comparable with published MT-Bench numbers unless --judge-prompts" in flat
