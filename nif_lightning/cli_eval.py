"""`nif eval`: the paper's benchmarks on one model, and `nif eval compare` across models.

Thin handlers: parse, build the typed configs (which check the input and name the flag), call
`nif_lightning.evaluation`. Heavy libraries load only inside the handlers.
"""

from __future__ import annotations

import argparse
import sys

_USAGE = """\
%(prog)s MODEL_DIR [--suite SUITE ...] [options]
       %(prog)s compare RUN_DIR [RUN_DIR ...] [--out OUT]"""

_EPILOG = """\
suites:
  auto    the default: what needs no network and no key (ifeval, built in), plus oll when
          --include-path or --hf-cache is given and judge when --judge-teacher is; the run
          says which suites it skipped and why
  ifeval  rule-checked instructions: our checker on an IFEval-format file (default: the shipped
          prompts), or lm-eval's `ifeval` task with --ifeval-backend lm-eval (Hub data)
  oll     Open LLM Leaderboard through lm-eval (pip install 'nif-lightning[eval]'), the paper's
          shots: ARC 25, HellaSwag 10, MMLU 5, TruthfulQA-mc2 0, Winogrande 5, GSM8K 5; its
          datasets come from the Hugging Face Hub (offline: --hf-cache DIR, or --include-path
          DIR with the tasks on local files; --include-path demo runs tiny shipped stand-ins)
  judge   MT-Bench-style grades 1-10 of two-turn answers, and with --baseline-answers an
          Arena-Hard-style win rate judged in both orders plus the Arena-Hard score
          (Bradley-Terry over the games, 95% bootstrap interval); the judge is any
          OpenAI-compatible or Anthropic endpoint, reached with the same client (retries,
          limits) as `nif gen`. Our judge prompts are our own wording: the grades are not
          comparable with published MT-Bench numbers unless --judge-prompts gives the official
          file (FastChat's judge_prompts.jsonl; with --reference-answers for math, reasoning
          and coding)
  all     every suite

Answers and verdicts are cached in OUT as they arrive: re-run the same command after an
interruption and only the missing ones are generated or asked.

examples:
  nif eval runs/lora/merged                      # offline: IFEval; says what it skipped
  nif eval runs/lora/merged --suite oll --include-path demo --limit 5   # try the oll path
  nif eval runs/lora/merged --suite judge --judge-teacher openai --judge-model gpt-4o \\
      --baseline-answers runs/base/merged/eval/answers.jsonl --name lora
  nif eval runs/lora/merged --suite judge --judge-teacher openai --judge-model gpt-4 \\
      --judge-prompts judge_prompts.jsonl --reference-answers gpt-4.jsonl \\
      --questions question.jsonl                 # FastChat's MT-Bench files
  nif eval runs/base-model --adapter runs/lora/adapter --suite oll --template one_shot \\
      --include-path my_offline_tasks/
  nif eval compare runs/base/eval runs/lora/eval runs/lora-base/eval --out runs/compare

exit codes: 0 complete; 1 some verdicts missing (judge failures, re-run to ask again);
2 bad input (a dataset missing offline included); 3 the judge stopped the run (spend limit
or rejected key), finished work kept."""


def register(subparsers) -> None:
    from data_gen.schema import add_arguments
    from nif_lightning.evaluation.config import EvalConfig

    p = subparsers.add_parser(
        "eval",
        usage=_USAGE,
        help="benchmarks as in the paper: IFEval, Open LLM Leaderboard, LLM judge; compare",
        description=(
            "Evaluate one model (`nif eval MODEL_DIR`) or tabulate several evaluated models\n"
            "in the shape of the paper's Tables 1 and 5 (`nif eval compare RUN_DIR...`)."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "target",
        nargs="+",
        metavar="MODEL_DIR",
        help="a model folder (or HF id) to evaluate; or `compare` and evaluated run folders",
    )
    add_arguments(p, EvalConfig, skip=("model",))
    p.set_defaults(func=_eval)


def _eval(args: argparse.Namespace) -> int:
    if args.target[0] == "compare":
        return _compare(args)
    from data_gen.schema import ConfigError, from_args, validate
    from nif_lightning.evaluation.config import EvalConfig

    if len(args.target) != 1:
        raise ConfigError(["give one MODEL_DIR (or `compare RUN_DIR...`)"], source="")
    cfg = from_args(EvalConfig, args, fixed={"model": args.target[0]})
    validate(cfg, source="")
    return _run(cfg)


def _run(cfg) -> int:
    import json

    from nif_lightning.recipes.evaluate import run_eval

    def log(msg: str) -> None:
        print(msg, file=sys.stderr)

    try:
        result = run_eval(cfg, log=log)
    except (ValueError, FileNotFoundError) as err:
        print(f"nif eval: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    judge = result.get("suites", {}).get("judge") or {}
    missing = (judge.get("single") or {}).get("unjudged", 0)
    missing += (judge.get("pairwise") or {}).get("unjudged", 0)
    if missing:
        print(f"nif eval: {missing} verdict(s) missing; re-run to ask again", file=sys.stderr)
        return 1
    return 0


def _compare(args: argparse.Namespace) -> int:
    from nif_lightning.evaluation.compare import compare

    try:
        table = compare(args.target[1:], getattr(args, "out", None) or "eval-compare")
    except ValueError as err:
        print(f"nif eval compare: {err}", file=sys.stderr)
        return 2
    print(table, end="")
    return 0
