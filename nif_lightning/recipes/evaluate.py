"""`nif eval MODEL_DIR`: run the chosen suites on one model and keep everything in one folder.

    OUT/answers.jsonl          the model's answers to the judge questions (cache, resumable)
    OUT/ifeval_answers.jsonl   its answers to the IFEval prompts (cache, resumable)
    OUT/verdicts.jsonl         single-answer grades from the judge (cache, resumable)
    OUT/pairwise.jsonl         pairwise verdicts against the baseline (cache, resumable)
    OUT/eval.json              every suite's scores; `nif eval compare` reads it

Each suite's result is merged into `eval.json` when it finishes, so suites can be run one at a
time (or re-run after a crash) and the file still holds them all. A base model plus an adapter
is merged once into OUT/merged-model first (the paper's "lora" model).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from data_gen.store import write_json_atomic
from nif_lightning.evaluation.answers import resolve_template
from nif_lightning.evaluation.config import EvalConfig, GenerateConfig


def _update_results(out: Path, cfg: EvalConfig, suite: str, result: dict[str, Any]) -> None:
    path = out / "eval.json"
    data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    data.update(
        {
            "name": cfg.name or Path(cfg.model.rstrip("/")).name,
            "model": cfg.model,
            "adapter": cfg.adapter,
            "template": cfg.generate.template,
        }
    )
    data.setdefault("suites", {})[suite] = result
    data["skipped"] = {s: why for s, why in cfg.skipped.items() if s not in data["suites"]}
    write_json_atomic(path, data)  # a kill never leaves half a file


def _merged_model(cfg: EvalConfig, out: Path) -> str:
    from nif_lightning.merge import merge_adapter

    target = out / "merged-model"
    marker = target / "merged_from.json"
    source = {"base": str(cfg.model), "adapter": str(cfg.adapter)}
    if not (marker.is_file() and json.loads(marker.read_text()) == source):
        merge_adapter(cfg.model, cfg.adapter, target)
        marker.write_text(json.dumps(source) + "\n", encoding="utf-8")
    return str(target)


def run_eval(cfg: EvalConfig, *, log=print) -> dict[str, Any]:
    """Run every suite in `cfg.suites`; returns the contents of OUT/eval.json."""
    from dataclasses import replace

    out = cfg.out_dir
    out.mkdir(parents=True, exist_ok=True)
    model = _merged_model(cfg, out) if cfg.adapter else cfg.model
    gen = replace(cfg.generate, model=model)
    gen.template = resolve_template(gen.template, model)
    cfg.generate = gen  # eval.json records the template actually used
    for suite, why in cfg.skipped.items():
        log(f"nif eval: {suite} skipped: {why}")
    for suite in cfg.suites:
        start = time.perf_counter()
        if suite == "ifeval":
            result = _ifeval(cfg, gen, out)
        elif suite == "oll":
            result = _oll(cfg, gen, model)
        else:
            result = _judge(cfg, gen, out)
        result["seconds"] = round(time.perf_counter() - start, 1)
        _update_results(out, cfg, suite, result)
        log(f"nif eval: {suite} done in {result['seconds']} s")
    return json.loads((out / "eval.json").read_text(encoding="utf-8"))


def _ifeval(cfg: EvalConfig, gen: GenerateConfig, out: Path) -> dict[str, Any]:
    if cfg.ifeval_backend == "lm-eval":
        from nif_lightning.evaluation.lm_eval_suite import IFEVAL_TASK

        result = _lm_eval(cfg, gen, gen.model, IFEVAL_TASK)["tasks"]["ifeval"]
        return {"backend": "lm-eval", **{k: v for k, v in result.items() if k != "column"}}
    from nif_lightning.evaluation.answers import generate_answers
    from nif_lightning.evaluation.ifeval import load_prompts, score

    prompts = load_prompts(cfg.ifeval_prompts)
    answers = generate_answers(
        gen, [(p.key, [p.prompt]) for p in prompts], out / "ifeval_answers.jsonl"
    )
    result = score(prompts, {k: v[0] for k, v in answers.items()})
    result.pop("per_prompt")
    return {"backend": "local", "prompt_file": cfg.ifeval_prompts, **result}


def _lm_eval(cfg: EvalConfig, gen: GenerateConfig, model: str, tasks) -> dict[str, Any]:
    from nif_lightning.evaluation.lm_eval_suite import LMEvalConfig, run_lm_eval

    lm_cfg = LMEvalConfig(
        model=model,
        tasks=dict(tasks),
        chat_template=gen.template == "chat",
        device=gen.device,
        dtype=gen.dtype,
        include_path=cfg.include_path,
        hf_cache=cfg.hf_cache,
        limit=cfg.limit,
        batch_size=gen.batch_size,
    )
    return run_lm_eval(lm_cfg)


def _oll(cfg: EvalConfig, gen: GenerateConfig, model: str) -> dict[str, Any]:
    from nif_lightning.evaluation.lm_eval_suite import OLL_TASKS

    result = _lm_eval(cfg, gen, model, OLL_TASKS)
    if cfg.include_path is not None:
        result["include_path"] = cfg.include_path
    if cfg.include_path == "demo":
        result["note"] = "the shipped demo stand-ins: made-up documents, not leaderboard scores"
    return result


def _judge(cfg: EvalConfig, gen: GenerateConfig, out: Path) -> dict[str, Any]:
    from nif_lightning.evaluation.answers import generate_answers
    from nif_lightning.evaluation.judge import (
        grade_single,
        load_answers,
        load_judge_prompts,
        load_questions,
        load_reference_answers,
        pairwise,
    )

    questions = load_questions(cfg.questions)
    prompts = load_judge_prompts(cfg.judge_prompts) if cfg.judge_prompts else None
    refs = load_reference_answers(cfg.reference_answers)
    answers = generate_answers(
        gen, [(str(q["question_id"]), q["turns"]) for q in questions], out / "answers.jsonl"
    )
    result: dict[str, Any] = {
        "questions": cfg.questions,
        "judge": cfg.judge.model,
        "judge_prompts": cfg.judge_prompts,
        "single": grade_single(
            cfg.judge,
            questions,
            answers,
            out / "verdicts.jsonl",
            prompts=prompts,
            references=refs,
        ),
        "pairwise": None,
    }
    if cfg.baseline_answers:
        baseline = load_answers(cfg.baseline_answers)
        result["pairwise"] = pairwise(
            cfg.judge,
            questions,
            answers,
            baseline,
            out / "pairwise.jsonl",
            prompts=prompts,
            references=refs,
        )
        result["pairwise"]["baseline"] = cfg.baseline_answers
    return result
