"""The typed config of `nif eval`: the one schema of its flags (`data_gen.schema` derives them).

Pure: building an `EvalConfig` reads no file and asks no Hub; `check_inputs()` does, once, before
any answer is generated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from data_gen.llm.config import TeacherConfig
from data_gen.schema import option, section
from nif_lightning.evaluation import DATA_DIR

SUITES = ("ifeval", "oll", "judge")
TEMPLATES = ("chat", "one_shot", "vanilla")
# `auto`: the chat template when the tokenizer has one (Instruct models), else one_shot.
TEMPLATE_CHOICES = ("auto", *TEMPLATES)

# The judge takes the teacher client's options (prefixed `judge_`) but these: its temperature
# is 0 (a judge should give the same verdict twice) and it has no batch mode here.
_JUDGE_OPTIONS = (
    "kind",
    "model",
    "base_urls",
    "api_key_env",
    "max_tokens",
    "system_prompt",
    "concurrency",
    "rpm",
    "tpm",
    "max_retries",
    "timeout",
)


@dataclass
class GenerateConfig:
    """How answers are produced."""

    model: str = option("", cli=False)
    """Model folder or HF id (set from `MODEL_DIR`)."""
    template: Literal["auto", "chat", "one_shot", "vanilla"] = "auto"
    """Prompt template (the paper's Table 1): auto = chat if the tokenizer has one, else
    one_shot."""
    max_new_tokens: int = 512
    """Answer length cap in tokens."""
    batch_size: int = 8
    """Prompts per forward pass (answers and lm-eval)."""
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    """Weights dtype (`data_gen.llm.local` policy for auto)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto = cuda if present."""

    def __post_init__(self) -> None:
        if self.template not in TEMPLATE_CHOICES:
            raise ValueError(
                f"`--template` must be one of {TEMPLATE_CHOICES}, got {self.template!r}"
            )
        if self.max_new_tokens < 1:
            raise ValueError("`--max-new-tokens` must be >= 1")
        if self.batch_size < 1:
            raise ValueError("`--batch-size` must be >= 1")


@dataclass
class EvalConfig:
    """One `nif eval MODEL_DIR` run."""

    model: str = option(positional=True, metavar="MODEL_DIR")
    """The model folder or HF id (merged, or the base when `--adapter` is given)."""
    out: str | None = None
    """Output folder; none = MODEL_DIR/eval."""
    suites: tuple[Literal["auto", "ifeval", "oll", "judge", "all"], ...] = option(
        ("auto",), flag="suite"
    )
    """Suite to run: auto | ifeval | oll | judge | all; repeatable. auto = what needs no
    network and no key (ifeval), plus oll when `--include-path` or `--hf-cache` is given and
    judge when `--judge-teacher` is; all = every one."""
    name: str | None = None
    """Row label in `nif eval compare`, e.g. lora-base; none = the model folder's name."""
    adapter: str | None = None
    """A PEFT adapter to merge into MODEL_DIR first."""
    questions: str = option(
        str(DATA_DIR / "mt_questions.jsonl"), shown="the shipped mt_questions.jsonl"
    )
    """MT-Bench-format question file (question_id, category, turns)."""
    ifeval_prompts: str = option(
        str(DATA_DIR / "ifeval_prompts.jsonl"), shown="the shipped ifeval_prompts.jsonl"
    )
    """IFEval-format prompt file for the local checker."""
    ifeval_backend: Literal["local", "lm-eval"] = "local"
    """local: our checker on `--ifeval-prompts`; lm-eval: lm-eval's `ifeval` task."""
    baseline_answers: str | None = None
    """A baseline model's answers.jsonl, for the win rate."""
    judge_prompts: str | None = None
    """A judge prompt file in FastChat's judge_prompts.jsonl format (single-v1,
    single-v1-multi-turn, single-math-v1[-multi-turn], pair-v2, pair-math-v1) used instead of
    our own wording: grades comparable with published MT-Bench numbers need the official
    file; none = ours."""
    reference_answers: str | None = None
    """With `--judge-prompts`: reference answers in FastChat's answer jsonl format
    (question_id, choices[0].turns) for the math, reasoning and coding questions."""
    include_path: str | None = None
    """lm-eval: an extra task YAML folder, e.g. tasks on local files; `demo` = the tiny
    stand-in leaderboard tasks shipped with nif-lightning (try the path offline; not
    scores)."""
    hf_cache: str | None = None
    """lm-eval: a prepared HF cache folder; datasets/hub go offline."""
    limit: int | None = None
    """lm-eval: documents per task (a quick look, not a score)."""
    generate: GenerateConfig = section(
        GenerateConfig,
        flatten=True,
        title="answers",
        only=("template", "max_new_tokens", "batch_size", "dtype", "device"),
    )
    judge: TeacherConfig | None = section(
        None,
        flatten=True,
        prefix="judge_",
        title="judge",
        only=_JUDGE_OPTIONS,
        shown={
            "kind": "none: no judge; `--suite judge` needs one",
            "system_prompt": "ours, a careful impartial judge; with `--judge-prompts` each "
            "record's own",
        },
    )
    """The judge client of the `judge` suite: set `--judge-teacher` and `--judge-model`."""
    skipped: dict[str, str] = field(init=False, default_factory=dict, repr=False)
    """Suites `auto` left out -> why (said at the start of the run and kept in eval.json)."""

    def __post_init__(self) -> None:
        suites = tuple(self.suites)
        bad = [s for s in suites if s not in (*SUITES, "all", "auto")]
        if bad or not suites:
            raise ValueError(f"`--suite` must be from {SUITES}, auto or all, got {list(suites)}")
        if "all" in suites:
            self.suites = SUITES
        else:
            chosen = [s for s in suites if s != "auto"]
            if "auto" in suites:
                chosen += self._auto_suites()
            self.suites = tuple(s for s in SUITES if s in chosen)
            self.skipped = {s: r for s, r in self.skipped.items() if s not in self.suites}
        self.generate.model = self.model
        if self.limit is not None and self.limit < 1:
            raise ValueError("`--limit` must be >= 1")
        if self.judge is not None and self.judge.kind in ("original", "hf"):
            raise ValueError(
                f"`--judge-teacher {self.judge.kind}` cannot judge: pick an API client "
                "(openai, openai-completions, anthropic)"
            )
        if "judge" in self.suites and self.judge is None:
            raise ValueError(
                "`--suite judge` needs a judge: give `--judge-teacher` and `--judge-model`"
            )
        if self.reference_answers is not None and self.judge_prompts is None:
            raise ValueError(
                "`--reference-answers` goes with `--judge-prompts` (FastChat's reference-based "
                "judge prompts); our own prompts use no reference"
            )
        judge_system = self.judge.system_prompt if self.judge is not None else None
        if self.judge_prompts is not None and judge_system is not None:
            raise ValueError(
                "`--judge-system-prompt` and `--judge-prompts` both set the judge's system "
                "prompt: the file's records carry it; drop one"
            )

    def _auto_suites(self) -> list[str]:
        """`--suite auto`: the suites whose inputs are here; the others go to `skipped`."""
        chosen = ["ifeval"]
        if self.include_path is not None or self.hf_cache is not None:
            chosen.append("oll")
        else:
            self.skipped["oll"] = (
                "the leaderboard's datasets come from the Hugging Face Hub: `--suite oll` "
                "runs it where the Hub is reachable, `--hf-cache DIR` from a filled cache, "
                "`--include-path DIR` on local task files (`--include-path demo` tries the "
                "shipped stand-ins)"
            )
        if self.judge is not None:
            chosen.append("judge")
        else:
            self.skipped["judge"] = (
                "it needs a judge endpoint and its key: `--judge-teacher openai --judge-model "
                "NAME` (key in OPENAI_API_KEY; any OpenAI-compatible or Anthropic endpoint)"
            )
        return chosen

    @property
    def out_dir(self) -> Path:
        return Path(self.out) if self.out else Path(self.model) / "eval"

    def check_inputs(self) -> list[str]:
        from nif_lightning.hub import check_model

        problems = []
        try:
            check_model(self.model, what="`MODEL_DIR`")
        except (ValueError, FileNotFoundError) as err:
            problems.append(str(err))
        from data_gen.store import folder_problem

        out_problem = folder_problem(self.out, what="`--out`") if self.out is not None else None
        if out_problem:
            problems.append(out_problem)
        if self.out is None and not Path(self.model).is_dir():
            problems.append(f"`--out` is needed: {self.model!r} is not a local folder")
        if self.adapter is not None and not Path(self.adapter).is_dir():
            problems.append(f"`--adapter` {self.adapter!r} is not a folder")
        files = [
            ("--baseline-answers", self.baseline_answers),
            ("--judge-prompts", self.judge_prompts),
            ("--reference-answers", self.reference_answers),
        ]
        if "judge" in self.suites:
            files.append(("--questions", self.questions))
        if "ifeval" in self.suites and self.ifeval_backend == "local":
            files.append(("--ifeval-prompts", self.ifeval_prompts))
        missing = [(flag, p) for flag, p in files if p and not Path(p).is_file()]
        problems += [f"`{flag}` {p!r} does not exist" for flag, p in missing]
        if "judge" in self.suites and self.judge_prompts and not missing:
            problems += self._judge_prompt_problems()
        return problems + self._lm_eval_problems()

    def _judge_prompt_problems(self) -> list[str]:
        """The judge prompt file, the reference answers and the questions fit together (read
        now, so a bad file is named before any answer is generated)."""
        from nif_lightning.evaluation.judge import (
            load_judge_prompts,
            load_questions,
            load_reference_answers,
            plan_prompts,
        )

        try:
            prompts = load_judge_prompts(self.judge_prompts)
            refs = load_reference_answers(self.reference_answers)
            plan_prompts(
                prompts,
                load_questions(self.questions),
                refs,
                pairwise=self.baseline_answers is not None,
            )
        except ValueError as err:
            return [str(err)]
        return []

    def _lm_eval_problems(self) -> list[str]:
        """lm-eval installed, the include folder there, and the datasets reachable or local."""
        tasks, flag = {}, "--suite oll"
        if "ifeval" in self.suites and self.ifeval_backend == "lm-eval":
            tasks, flag = {"ifeval": None}, "--ifeval-backend lm-eval"
        if "oll" in self.suites:
            from nif_lightning.evaluation.lm_eval_suite import OLL_TASKS

            tasks, flag = {**tasks, **OLL_TASKS}, "--suite oll"
        if not tasks:
            return []
        import importlib.util

        from nif_lightning.evaluation.lm_eval_suite import offline_problem, resolve_include_path

        problems = []
        folders = (
            ("--include-path", resolve_include_path(self.include_path)),
            ("--hf-cache", self.hf_cache),
        )
        for name, folder in folders:
            if folder is not None and not Path(folder).is_dir():
                problems.append(f"`{name}` {folder!r} is not a folder")
        if importlib.util.find_spec("lm_eval") is None:
            problems.append(f"`{flag}` needs lm-eval: pip install 'nif-lightning[eval]'")
        elif not problems:
            offline = offline_problem(tasks, self.include_path, self.hf_cache, flag=flag)
            problems += [offline] if offline else []
        return problems
