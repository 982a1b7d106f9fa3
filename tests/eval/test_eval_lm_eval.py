"""A small local lm-eval task on the tiny model, offline: the harness's accuracy agrees with the
log-likelihoods computed here by hand, and config errors name the flag."""

import json

import pytest

pytest.importorskip("lm_eval", reason="the [eval] extra (lm-eval) is not installed")

from nif_lightning.evaluation.lm_eval_suite import OLL_TASKS, LMEvalConfig, run_lm_eval  # noqa: E402

DOCS = [
    {"question": "Which one is a colour?", "choices": ["red", "seven", "quickly"], "label": 0},
    {"question": "What do bees make?", "choices": ["iron", "honey", "glass"], "label": 1},
    {"question": "Which animal barks?", "choices": ["dog", "fish", "owl"], "label": 0},
    {"question": "Where does the sun rise?", "choices": ["west", "north", "east"], "label": 2},
    {"question": "What is frozen water?", "choices": ["steam", "ice", "sand"], "label": 1},
]

_TASK_YAML = """\
task: nif_tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
output_type: multiple_choice
test_split: test
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def _task_dir(tmp_path):
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in DOCS), encoding="utf-8")
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "nif_tiny_mc.yaml").write_text(_TASK_YAML.format(data=data), encoding="utf-8")
    return tasks


def _by_hand(model_dir) -> list[list[float]]:
    """Sum of log p(choice tokens | question) per choice, as lm-eval defines it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    out = []
    for doc in DOCS:
        context = f"Question: {doc['question']}\nAnswer:"
        ctx = tok(context, add_special_tokens=False)["input_ids"]
        row = []
        for choice in doc["choices"]:
            whole = tok(context + " " + choice, add_special_tokens=False)["input_ids"]
            cont = whole[len(ctx) :]
            ids = torch.tensor([ctx + cont])
            with torch.no_grad():
                logp = model(ids).logits.log_softmax(-1)[0]  # (T, V)
            picks = [logp[len(ctx) - 1 + i, t].item() for i, t in enumerate(cont)]
            row.append(sum(picks))
        out.append(row)
    return out


def test_local_task_on_tiny_model_offline(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = LMEvalConfig(
        model=str(tiny),
        tasks={"nif_tiny_mc": (0, "acc,none", "Tiny")},
        include_path=str(_task_dir(tmp_path)),
        device="cpu",
        dtype="float32",
        batch_size=4,
    )
    got = run_lm_eval(cfg, log_samples=True)
    expected = _by_hand(tiny)
    samples = sorted(got["samples"]["nif_tiny_mc"], key=lambda s: s["doc_id"])
    assert len(samples) == len(DOCS)
    for sample, row in zip(samples, expected, strict=True):
        harness = [r[0][0] for r in sample["resps"]]  # (loglikelihood, is_greedy) per choice
        assert harness == pytest.approx(row, abs=1e-3)
    picked = [max(range(3), key=row.__getitem__) for row in expected]
    acc = sum(p == d["label"] for p, d in zip(picked, DOCS, strict=True))
    assert got["tasks"]["nif_tiny_mc"]["score"] == round(100.0 * acc / len(DOCS), 2)
    assert got["tasks"]["nif_tiny_mc"]["shots"] == 0
    assert "oll_average" not in got  # only with all six leaderboard tasks


def test_paper_shot_counts():
    shots = {task: spec[0] for task, spec in OLL_TASKS.items()}
    assert shots == {
        "arc_challenge": 25,
        "hellaswag": 10,
        "mmlu": 5,
        "truthfulqa_mc2": 0,
        "winogrande": 5,
        "gsm8k": 5,
    }


def test_bad_config_names_the_flag(tmp_path, tiny):
    missing = LMEvalConfig(model="m", include_path=str(tmp_path / "nope"))  # building is pure
    with pytest.raises(ValueError, match="`--include-path`"):
        run_lm_eval(missing)  # checked before lm-eval is imported
    with pytest.raises(ValueError, match="`--limit` must be >= 1"):
        LMEvalConfig(model="m", limit=0)
    cfg = LMEvalConfig(model=str(tiny), tasks={"no_such_task": (0, "acc,none", "X")}, device="cpu")
    with pytest.raises(ValueError, match=r"does not know task\(s\) \['no_such_task'\]"):
        run_lm_eval(cfg)
    with pytest.raises(ValueError, match="`--template chat`: this tokenizer has no chat"):
        run_lm_eval(LMEvalConfig(model=str(tiny), chat_template=True, device="cpu"))


# The six leaderboard tasks through the CLI offline: test_eval_offline.py runs the shipped demo
# stand-ins (`--include-path demo`).
