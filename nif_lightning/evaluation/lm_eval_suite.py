"""The Open LLM Leaderboard (and IFEval) through EleutherAI's lm-evaluation-harness.

`lm-eval` is the optional extra `[eval]`, imported only when a suite runs. The shot counts are
the ones the paper's leaderboard used (Table 4 / 15): ARC-challenge 25, HellaSwag 10, MMLU 5,
TruthfulQA-mc2 0, Winogrande 5, GSM8K 5; the OLL score is the mean of the six. Each task is
scored with the leaderboard's metric (`OLL_TASKS`), reported in %.

Offline clusters: `include_path` adds a folder of task YAMLs (lm-eval's `--include_path`), e.g.
copies of the tasks whose `dataset_path: json` points at local files; a task defined there
overrides the built-in one of the same name. `include_path="demo"` names the stand-ins shipped
in `data/lm-eval-demo/` (a few made-up documents per leaderboard task: the path runs offline,
the scores mean nothing). `hf_cache` points Hugging Face at a cache filled beforehand on a
machine with internet (`HF_HOME=DIR nif eval ... --suite oll` once) and switches datasets and
hub to offline mode.

Without network a Hub dataset fails fast and in one line: when the Hub is unreachable (a 3 s
probe, or `HF_HUB_OFFLINE` set), datasets and hub run in offline mode (the local cache still
serves), and a task whose data is neither cached nor local stops the run with the task, the
dataset and the way out, instead of a minute of retries and a traceback.

Template (the paper's Table 1): with `chat_template=True` every request (few-shot examples as
turns) goes through the tokenizer's chat template, as for Instruct models; otherwise the
harness's plain text, as for base models.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from data_gen.llm.local import DEVICES, DTYPES, resolve_device, resolve_dtype
from nif_lightning.evaluation import DATA_DIR

DEMO_TASKS = DATA_DIR / "lm-eval-demo"
"""Stand-ins for the six leaderboard tasks on a few made-up local documents (`--include-path
demo`): they try the leaderboard path offline; their scores are not the leaderboard's."""

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


def resolve_include_path(include_path: str | None) -> str | None:
    """`demo` -> the shipped demo tasks (write `./demo` for a folder of that name)."""
    return str(DEMO_TASKS) if include_path == "demo" else include_path


def _offline(hf_cache: str) -> None:
    # Read by huggingface_hub / datasets when they are imported: set before lm_eval loads them.
    os.environ["HF_HOME"] = str(Path(hf_cache).resolve())
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"


_TRUE = ("1", "on", "yes", "true")


def hub_reachable(timeout: float = 3.0) -> bool:
    """False when offline mode is set or a TCP connection to the Hub fails within `timeout`
    seconds. Behind a proxy the direct probe says nothing, so the Hub counts as reachable."""
    if any(
        os.environ.get(v, "").lower() in _TRUE for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    ):
        return False
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    return _connects(url.hostname, url.port or (80 if url.scheme == "http" else 443), timeout)


@functools.lru_cache(maxsize=8)
def _connects(host: str, port: int, timeout: float) -> bool:
    # Once per process: the input checks and the run ask the same question.
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError:
        return False
    return True


@contextlib.contextmanager
def _hub_offline(offline: bool):
    """Offline mode for huggingface_hub and datasets while lm-eval loads data: the local cache
    still serves, anything else fails at once instead of retrying for half a minute. The
    libraries read the variables when imported, so their module constants are set too (and
    put back after, for a caller in the same process)."""
    if not offline:
        yield
        return
    import datasets.config
    import huggingface_hub.constants as hub_constants

    saved_env = {v: os.environ.get(v) for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    saved = [
        (mod, name, getattr(mod, name))
        for mod, name in (
            (hub_constants, "HF_HUB_OFFLINE"),
            (datasets.config, "HF_HUB_OFFLINE"),
            (datasets.config, "HF_DATASETS_OFFLINE"),
        )
        if hasattr(mod, name)
    ]
    os.environ.update({v: "1" for v in saved_env})
    for mod, name, _ in saved:
        setattr(mod, name, True)
    try:
        yield
    finally:
        for mod, name, value in saved:
            setattr(mod, name, value)
        for v, value in saved_env.items():
            if value is None:
                os.environ.pop(v, None)
            else:
                os.environ[v] = value


# The Hub datasets of the built-in tasks (lm-eval 0.4.13's `dataset_path`), to say before any
# heavy work that one is missing offline.
HUB_DATASETS = {
    "arc_challenge": "allenai/ai2_arc",
    "hellaswag": "Rowan/hellaswag",
    "mmlu": "cais/mmlu",
    "truthfulqa_mc2": "truthfulqa/truthful_qa",
    "winogrande": "allenai/winogrande",
    "gsm8k": "openai/gsm8k",
    "ifeval": "google/IFEval",
}
_TASK_LINE = re.compile(r"^task:\s*['\"]?([\w.-]+)", re.MULTILINE)


def _local_tasks(include_path: str | None) -> set[str]:
    """Task names the YAMLs of an include folder define (a quick scan, not lm-eval's index)."""
    if include_path is None or not Path(include_path).is_dir():
        return set()
    found = set()
    for yaml in Path(include_path).rglob("*.y*ml"):
        with contextlib.suppress(OSError, UnicodeDecodeError):
            found.update(_TASK_LINE.findall(yaml.read_text(encoding="utf-8")))
    return found


def _cached(dataset: str, hf_cache: str | None) -> bool:
    """Whether a Hugging Face cache (hub files or prepared datasets) holds `dataset`."""
    home = Path(hf_cache or os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface")
    hub = Path(os.environ.get("HF_HUB_CACHE") or home / "hub") if not hf_cache else home / "hub"
    prepared = home / "datasets"
    if not hf_cache and os.environ.get("HF_DATASETS_CACHE"):
        prepared = Path(os.environ["HF_DATASETS_CACHE"])
    org_name = dataset.split("/")
    return (hub / ("datasets--" + "--".join(org_name))).is_dir() or (
        prepared / "___".join(org_name)
    ).is_dir()


def offline_problem(
    tasks, include_path: str | None, hf_cache: str | None, *, flag: str = "--suite oll"
) -> str | None:
    """None when the tasks can load, else the one line saying which dataset is missing offline
    and the ways out. Probes the Hub (<= 3 s) only; reads no dataset."""
    if hf_cache is None and hub_reachable():
        return None
    include_path = resolve_include_path(include_path)
    local = _local_tasks(include_path)
    for task in tasks:
        dataset = HUB_DATASETS.get(task)
        if task in local or dataset is None or _cached(dataset, hf_cache):
            continue
        where = f"in `--hf-cache` {hf_cache!r}" if hf_cache else "in the local cache"
        return (
            f"`{flag}`: lm-eval task {task!r} needs dataset {dataset!r} from the Hugging Face "
            f"Hub, which is not reachable, and it is not {where}; " + _ways_out(task)
        )
    return None


def _ways_out(task: str) -> str:
    demo = " (`--include-path demo` tries the shipped stand-ins)" if task in OLL_TASKS else ""
    other = (
        "use the built-in checker (`--ifeval-backend local`)"
        if task == "ifeval"
        else "leave the suite out (`--suite ifeval`)"
    )
    return (
        "ways out: run where the Hub is reachable (once with HF_HOME=DIR, then `--hf-cache "
        f"DIR` offline), give `--include-path DIR` with the task on local files{demo}, or " + other
    )


_DATASET_NAMED = re.compile(r"(?:reach|[Dd]ataset) '([^']+)'")


def _unavailable(task: str, err: BaseException) -> ValueError:
    """The one-line error for a task whose data cannot be loaded offline."""
    found = _DATASET_NAMED.search(str(err))
    dataset = f"dataset {found.group(1)!r}" if found else "its dataset"
    first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return ValueError(
        f"lm-eval task {task!r} needs {dataset} from the Hugging Face Hub, which is not "
        f"reachable, and it is not in the local cache ({first_line}); " + _ways_out(task)
    )


def _too_few_documents(task: str, shots: int) -> ValueError:
    return ValueError(
        f"lm-eval task {task!r} has fewer few-shot documents than the {shots} shots asked "
        "(lm-eval: 'Sample larger than population'; when the few-shot examples come from the "
        "split being scored, it needs one more): give the task's few-shot split more documents"
    )


def _is_data_unavailable(err: BaseException) -> bool:
    if isinstance(err, ConnectionError):  # datasets: "Couldn't reach '...' on the Hub"
        return True
    name = type(err).__name__
    return name in ("DatasetNotFoundError", "OfflineModeIsEnabled", "LocalEntryNotFoundError")


def run_lm_eval(cfg: LMEvalConfig, *, log_samples: bool = False) -> dict[str, Any]:
    """Run every task with its own shot count; returns the scores (in %) by task, their mean,
    and (with `log_samples`) lm-eval's per-document records."""
    include_path = resolve_include_path(cfg.include_path)
    for flag, folder in (("--include-path", include_path), ("--hf-cache", cfg.hf_cache)):
        if folder is not None and not Path(folder).is_dir():
            raise ValueError(f"`{flag}` {folder!r} is not a folder")
    if cfg.hf_cache:
        _offline(cfg.hf_cache)
    if cfg.chat_template:
        from transformers import AutoTokenizer

        if not getattr(AutoTokenizer.from_pretrained(cfg.model), "chat_template", None):
            raise ValueError(
                "`--template chat`: this tokenizer has no chat template; use "
                "`--template one_shot` or `vanilla` (plain harness prompts) for a base model"
            )
    flag = "--ifeval-backend lm-eval" if set(cfg.tasks) == {"ifeval"} else "--suite oll"
    problem = offline_problem(cfg.tasks, cfg.include_path, cfg.hf_cache, flag=flag)
    if problem:
        raise ValueError(problem)
    offline = not hub_reachable()  # before lm-eval loads anything: no retries against no one
    lm_eval = _import_lm_eval()
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=include_path)
    unknown = [t for t in cfg.tasks if t not in manager.all_tasks]
    if unknown:
        raise ValueError(
            f"lm-eval does not know task(s) {unknown}; add their YAMLs with `--include-path`"
        )
    if offline:
        # Build every task (which loads its data) before the model: a dataset missing offline
        # is named in seconds, not after minutes of loading weights.
        for task in cfg.tasks:
            try:
                with _hub_offline(True):
                    lm_eval.tasks.get_task_dict([task], manager)
            except Exception as err:
                if _is_data_unavailable(err):
                    raise _unavailable(task, err) from None
                raise
    # `--dtype auto` as for the answers `nif eval` generates (data_gen.llm.local), not lm-eval's
    # own "the checkpoint's dtype".
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    # One model for every task: loading a 7B model six times would dominate the run.
    model = HFLM(pretrained=cfg.model, device=device, dtype=dtype, batch_size=cfg.batch_size)
    scores: dict[str, dict[str, Any]] = {}
    samples: dict[str, list] = {}
    # One task per call (the seeds are set per call, so the scores are the same as in one call):
    # a failure then names its task.
    for task, (shots, _, _) in cfg.tasks.items():
        try:
            with _hub_offline(offline):
                out = lm_eval.simple_evaluate(
                    model=model,
                    tasks=[task],
                    num_fewshot=shots,
                    limit=cfg.limit,
                    task_manager=manager,
                    apply_chat_template=cfg.chat_template,
                    fewshot_as_multiturn=cfg.chat_template and shots > 0,
                    log_samples=log_samples,
                    bootstrap_iters=0,  # no stderr: it costs minutes on MMLU; tables omit it
                    random_seed=0,
                    numpy_random_seed=1234,
                    torch_random_seed=1234,
                    fewshot_random_seed=1234,
                )
        except ValueError as err:
            if "Sample larger than population" in str(err):
                raise _too_few_documents(task, shots) from None
            raise
        except Exception as err:
            if offline and _is_data_unavailable(err):
                raise _unavailable(task, err) from None
            raise
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
