"""The typed config of `nif eval`: the one schema of its flags (`data_gen.schema` derives them).

Pure: building an `EvalConfig` reads no file and asks no Hub; `check_inputs()` does, once, before
any answer is generated.
"""

from __future__ import annotations

from dataclasses import dataclass
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
    suites: tuple[Literal["ifeval", "oll", "judge", "all"], ...] = option(("all",), flag="suite")
    """Suite to run; repeatable; all = every one."""
    name: str | None = None
    """Row label in `nif eval compare`, e.g. lora-base; none = the model folder's name."""
    adapter: str | None = None
    """A PEFT adapter to merge into MODEL_DIR first."""
    questions: str = str(DATA_DIR / "mt_questions.jsonl")
    """MT-Bench-format question file (default: the shipped one)."""
    ifeval_prompts: str = str(DATA_DIR / "ifeval_prompts.jsonl")
    """IFEval-format prompt file for the local checker (default: the shipped one)."""
    ifeval_backend: Literal["local", "lm-eval"] = "local"
    """local: our checker on `--ifeval-prompts`; lm-eval: lm-eval's `ifeval` task."""
    baseline_answers: str | None = None
    """A baseline model's answers.jsonl, for the win rate."""
    include_path: str | None = None
    """lm-eval: an extra task YAML folder, e.g. tasks on local files."""
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
        None, flatten=True, prefix="judge_", title="judge", only=_JUDGE_OPTIONS
    )
    """The judge client of the `judge` suite: set `--judge-teacher` and `--judge-model`."""

    def __post_init__(self) -> None:
        suites = tuple(self.suites)
        self.suites = SUITES if "all" in suites else tuple(dict.fromkeys(suites))
        bad = [s for s in self.suites if s not in SUITES]
        if bad or not self.suites:
            raise ValueError(f"`--suite` must be from {SUITES} or all, got {list(suites)}")
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
        files = [("--baseline-answers", self.baseline_answers)]
        if "judge" in self.suites:
            files.append(("--questions", self.questions))
        if "ifeval" in self.suites and self.ifeval_backend == "local":
            files.append(("--ifeval-prompts", self.ifeval_prompts))
        problems += [
            f"`{flag}` {p!r} does not exist" for flag, p in files if p and not Path(p).is_file()
        ]
        for flag, folder in (("--include-path", self.include_path), ("--hf-cache", self.hf_cache)):
            if folder is not None and not Path(folder).is_dir():
                problems.append(f"`{flag}` {folder!r} is not a folder")
        return problems
