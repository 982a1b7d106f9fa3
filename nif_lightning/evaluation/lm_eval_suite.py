"""The Open LLM Leaderboard (and IFEval) through EleutherAI's lm-evaluation-harness.

`lm-eval` is the optional extra `[eval]`, imported only when a suite runs. The shot counts are
the ones the paper's leaderboard used (Table 4 / 15): ARC-challenge 25, HellaSwag 10, MMLU 5,
TruthfulQA-mc2 0, Winogrande 5, GSM8K 5; the OLL score is the mean of the six. Each task is
scored with the leaderboard's metric (`OLL_TASKS`), reported in %.

Offline clusters: `include_path` adds a folder of task YAMLs (lm-eval's `--include_path`), e.g.
copies of the tasks whose `dataset_path: json` points at local files; a task defined there
overrides the built-in one of the same name. `hf_cache` points Hugging Face at a cache filled
beforehand on a machine with internet (`HF_HOME=DIR nif eval ... --suite oll` once) and switches
datasets and hub to offline mode.

Template (the paper's Table 1): with `chat_template=True` every request (few-shot examples as
turns) goes through the tokenizer's chat template, as for Instruct models; otherwise the
harness's plain text, as for base models.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data_gen.llm.local import DEVICES, DTYPES, resolve_device, resolve_dtype

# task -> (shots, metric key in lm-eval's results, short column name)
OLL_TASKS: dict[str, tuple[int, str, str]] = {
    "arc_challenge": (25, "acc_norm,none", "ARC"),
    "hellaswag": (10, "acc_norm,none", "HellaSwag"),
    "mmlu": (5, "acc,none", "MMLU"),
    "truthfulqa_mc2": (0, "acc,none", "TruthfulQA"),
    "winogrande": (5, "acc,none", "Winogrande"),
    "gsm8k": (5, "exact_match,strict-match", "GSM8K"),
}
IFEVAL_TASK: dict[str, tuple[int, str, str]] = {
    "ifeval": (0, "prompt_level_strict_acc,none", "IFEval"),
}
_IFEVAL_EXTRA = (
    "inst_level_strict_acc,none",
    "prompt_level_loose_acc,none",
    "inst_level_loose_acc,none",
)


@dataclass
class LMEvalConfig:
    """One lm-eval run. Errors name the `nif eval` flag."""

    model: str
    """Model folder or HF id (`MODEL_DIR`)."""
    tasks: dict[str, tuple[int, str, str]] = field(default_factory=lambda: dict(OLL_TASKS))
    """task -> (shots, metric, column); the leaderboard by default (`--suite oll|ifeval`)."""
    include_path: str | None = None
    """Extra folder of task YAMLs, e.g. with local data files (`--include-path`)."""
    hf_cache: str | None = None
    """A prepared Hugging Face cache to use offline (`--hf-cache`)."""
    chat_template: bool = False
    """Format requests with the tokenizer's chat template (`--template chat`)."""
    batch_size: int = 8
    """Requests per forward pass (`--batch-size`)."""
    limit: int | None = None
    """Documents per task, for a quick look; None = all (`--limit`)."""
    device: str = "auto"
    """auto | cpu | cuda (`--device`)."""
    dtype: str = "auto"
    """auto | float32 | float16 | bfloat16 (`--dtype`)."""

    def __post_init__(self) -> None:
        if not self.tasks:
            raise ValueError("lm-eval needs at least one task")
        for task, (shots, _, _) in self.tasks.items():
            if shots < 0:
                raise ValueError(f"task {task!r}: the number of shots must be >= 0")
        if self.batch_size < 1:
            raise ValueError("`--batch-size` must be >= 1")
        if self.limit is not None and self.limit < 1:
            raise ValueError("`--limit` must be >= 1")
        if self.device not in DEVICES:
            raise ValueError(f"`--device` must be {'|'.join(DEVICES)}, got {self.device!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"`--dtype` must be {'|'.join(DTYPES)}, got {self.dtype!r}")


def _import_lm_eval():
    try:
        import lm_eval
    except ImportError:
        raise RuntimeError(
            "the oll/ifeval suites need lm-eval: pip install 'nif-lightning[eval]'"
        ) from None
    return lm_eval


def _offline(hf_cache: str) -> None:
    # Read by huggingface_hub / datasets when they are imported: set before lm_eval loads them.
    os.environ["HF_HOME"] = str(Path(hf_cache).resolve())
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"


def run_lm_eval(cfg: LMEvalConfig, *, log_samples: bool = False) -> dict[str, Any]:
    """Run every task with its own shot count; returns the scores (in %) by task, their mean,
    and (with `log_samples`) lm-eval's per-document records."""
    for flag, folder in (("--include-path", cfg.include_path), ("--hf-cache", cfg.hf_cache)):
        if folder is not None and not Path(folder).is_dir():
            raise ValueError(f"`{flag}` {folder!r} is not a folder")
    if cfg.hf_cache:
        _offline(cfg.hf_cache)
    lm_eval = _import_lm_eval()
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    if cfg.chat_template:
        from transformers import AutoTokenizer

        if not getattr(AutoTokenizer.from_pretrained(cfg.model), "chat_template", None):
            raise ValueError(
                "`--template chat`: this tokenizer has no chat template; use "
                "`--template one_shot` or `vanilla` (plain harness prompts) for a base model"
            )
    manager = TaskManager(include_path=cfg.include_path)
    unknown = [t for t in cfg.tasks if t not in manager.all_tasks]
    if unknown:
        raise ValueError(
            f"lm-eval does not know task(s) {unknown}; add their YAMLs with `--include-path`"
        )
    # `--dtype auto` as for the answers `nif eval` generates (data_gen.llm.local), not lm-eval's
    # own "the checkpoint's dtype".
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    # One model for every task: loading a 7B model six times would dominate the run.
    model = HFLM(pretrained=cfg.model, device=device, dtype=dtype, batch_size=cfg.batch_size)
    by_shots: dict[int, list[str]] = {}
    for task, (shots, _, _) in cfg.tasks.items():
        by_shots.setdefault(shots, []).append(task)
    scores: dict[str, dict[str, Any]] = {}
    samples: dict[str, list] = {}
    for shots, tasks in sorted(by_shots.items()):
        out = lm_eval.simple_evaluate(
            model=model,
            tasks=tasks,
            num_fewshot=shots,
            limit=cfg.limit,
            task_manager=manager,
            apply_chat_template=cfg.chat_template,
            fewshot_as_multiturn=cfg.chat_template and shots > 0,
            log_samples=log_samples,
            bootstrap_iters=0,  # no stderr: it costs minutes on MMLU and the tables omit it
            random_seed=0,
            numpy_random_seed=1234,
            torch_random_seed=1234,
            fewshot_random_seed=1234,
        )
        for task in tasks:
            _, metric, column = cfg.tasks[task]
            result = out["results"].get(task, {})
            if metric not in result:
                raise RuntimeError(
                    f"lm-eval gave no {metric!r} for task {task!r} (it reported {sorted(result)})"
                )
            entry = {"score": round(100.0 * result[metric], 2), "metric": metric}
            # The shots lm-eval reports having used (None if it reports none for the task).
            used = out.get("n-shot", {}).get(task)
            entry.update({"shots": used, "column": column})
            if task == "ifeval":
                entry.update({m: round(100.0 * result[m], 2) for m in _IFEVAL_EXTRA if m in result})
            scores[task] = entry
        if log_samples:
            samples.update(out.get("samples", {}))
    summary: dict[str, Any] = {"tasks": scores}
    if set(OLL_TASKS) <= set(scores):
        summary["oll_average"] = round(
            sum(scores[t]["score"] for t in OLL_TASKS) / len(OLL_TASKS), 2
        )
    if log_samples:
        summary["samples"] = samples
    return summary
