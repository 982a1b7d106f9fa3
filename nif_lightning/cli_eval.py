"""`nif eval`: the paper's benchmarks on one model, and `nif eval compare` across models.

Thin handlers: parse, build the typed configs (which check the input and name the flag), call
`nif_lightning.evaluation`. Heavy libraries load only inside the handlers.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

_EPILOG = """\
suites:
  ifeval  rule-checked instructions: our checker on an IFEval-format file (default: the shipped
          prompts), or lm-eval's `ifeval` task with --ifeval-backend lm-eval
  oll     Open LLM Leaderboard through lm-eval (pip install 'nif-lightning[eval]'), the paper's
          shots: ARC 25, HellaSwag 10, MMLU 5, TruthfulQA-mc2 0, Winogrande 5, GSM8K 5
  judge   MT-Bench-style grades 1-10 of two-turn answers, and with --baseline-answers an
          Arena-Hard-style win rate judged in both orders; the judge is any OpenAI-compatible
          or Anthropic endpoint, reached with the same client (retries, limits) as `nif gen`
  all     every suite (the default)

Answers and verdicts are cached in OUT as they arrive: re-run the same command after an
interruption and only the missing ones are generated or asked.

examples:
  nif eval runs/lora/merged --suite judge --judge-teacher openai --judge-model gpt-4o \\
      --baseline-answers runs/base/merged/eval/answers.jsonl --name lora
  nif eval runs/base-model --adapter runs/lora/adapter --suite oll --template one_shot \\
      --include-path my_offline_tasks/
  nif eval compare runs/base/eval runs/lora/eval runs/lora-base/eval --out runs/compare

exit codes: 0 complete; 1 some verdicts missing (judge failures, re-run to ask again);
2 bad input; 3 the judge stopped the run (spend limit or rejected key), finished work kept."""


def register(subparsers) -> None:
    from data_gen.llm import KINDS

    p = subparsers.add_parser(
        "eval",
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
        metavar="MODEL_DIR | compare RUN_DIR...",
        help="a model folder (or HF id) to evaluate, or `compare` and evaluated run folders",
    )
    p.add_argument("--out", help="output folder (default MODEL_DIR/eval; compare: ./eval-compare)")
    p.add_argument(
        "--suite",
        action="append",
        choices=("ifeval", "oll", "judge", "all"),
        help="suite to run; repeatable (default all)",
    )
    p.add_argument("--name", help="row label for `compare`, e.g. lora-base (default folder name)")
    p.add_argument("--adapter", help="PEFT adapter to merge into MODEL_DIR first")

    g = p.add_argument_group("answers")
    g.add_argument(
        "--template",
        default="auto",
        choices=("auto", "chat", "one_shot", "vanilla"),
        help="prompt template (Table 1): auto = chat if the tokenizer has one, else one_shot",
    )
    g.add_argument("--max-new-tokens", type=int, default=512, help="answer length cap")
    g.add_argument("--batch-size", type=int, default=8, help="prompts per forward pass")
    g.add_argument("--dtype", default="auto", choices=("auto", "float32", "float16", "bfloat16"))
    g.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))

    g = p.add_argument_group("files")
    g.add_argument("--questions", help="MT-Bench-format question jsonl (default: shipped)")
    g.add_argument("--ifeval-prompts", help="IFEval-format prompt jsonl (default: shipped)")
    g.add_argument("--ifeval-backend", default="local", choices=("local", "lm-eval"))
    g.add_argument("--baseline-answers", help="a baseline model's answers.jsonl (win rate)")

    g = p.add_argument_group("lm-eval (oll, ifeval --ifeval-backend lm-eval)")
    g.add_argument("--include-path", help="extra task YAML folder, e.g. tasks on local files")
    g.add_argument("--hf-cache", help="a prepared HF cache folder; datasets/hub go offline")
    g.add_argument("--limit", type=int, help="documents per task (a quick look, not a score)")

    g = p.add_argument_group("judge")
    g.add_argument("--judge-teacher", choices=[k for k in KINDS if k not in ("original", "hf")])
    g.add_argument("--judge-model", help="the judge's API model name, e.g. gpt-4o")
    g.add_argument("--judge-base-url", action="append", default=[], help="API root; repeatable")
    g.add_argument("--judge-api-key-env", help="NAME of the environment variable with the key")
    g.add_argument("--judge-max-tokens", type=int, default=1024, help="judge reply length cap")
    g.add_argument("--judge-system-prompt", help="override the judge's system prompt")
    g.add_argument("--judge-concurrency", type=int, default=16, help="requests in flight")
    g.add_argument("--judge-rpm", type=float, help="requests per minute budget")
    g.add_argument("--judge-tpm", type=float, help="tokens per minute budget")
    g.add_argument("--judge-max-retries", type=int, default=6, help="retries per request")
    g.add_argument("--judge-timeout", type=float, default=120.0, help="seconds per request")
    p.set_defaults(func=_eval)


def _judge_config(args: argparse.Namespace):
    if not args.judge_teacher:
        return None
    from data_gen.llm import TeacherConfig

    cfg = TeacherConfig(
        kind=args.judge_teacher,
        model=args.judge_model,
        base_urls=tuple(args.judge_base_url),
        api_key_env=args.judge_api_key_env,
        temperature=0.0,  # a judge should give the same verdict twice
        max_tokens=args.judge_max_tokens,
        system_prompt=args.judge_system_prompt,
        concurrency=args.judge_concurrency,
        rpm=args.judge_rpm,
        tpm=args.judge_tpm,
        max_retries=args.judge_max_retries,
        timeout=args.judge_timeout,
    )
    cfg.api_key()  # a missing key fails now, not after the answers are generated
    return cfg


def _eval(args: argparse.Namespace) -> int:
    if args.target[0] == "compare":
        return _compare(args)
    if len(args.target) != 1:
        print("nif eval: give one MODEL_DIR (or `compare RUN_DIR...`)", file=sys.stderr)
        return 2
    from nif_lightning.evaluation.generate import GenerateConfig
    from nif_lightning.evaluation.runner import SUITES, EvalConfig

    model = args.target[0]
    suites = args.suite or ["all"]
    suites = SUITES if "all" in suites else tuple(dict.fromkeys(suites))
    try:
        out = args.out or (str(Path(model) / "eval") if Path(model).is_dir() else None)
        if out is None:
            raise ValueError(f"`--out` is needed: {model!r} is not a local folder")
        extra = {"include_path": args.include_path, "hf_cache": args.hf_cache}
        extra.update({"limit": args.limit, "batch_size": args.batch_size})
        optional = {"questions": args.questions, "ifeval_prompts": args.ifeval_prompts}
        cfg = EvalConfig(
            model=model,
            out=out,
            suites=suites,
            name=args.name,
            adapter=args.adapter,
            generate=GenerateConfig(
                model=model,
                template=args.template,
                max_new_tokens=args.max_new_tokens,
                batch_size=args.batch_size,
                dtype=args.dtype,
                device=args.device,
            ),
            ifeval_backend=args.ifeval_backend,
            judge=_judge_config(args),
            baseline_answers=args.baseline_answers,
            lm_eval=extra,
            **{k: v for k, v in optional.items() if v is not None},
        )
    except (FileNotFoundError, ValueError) as err:
        print(f"nif eval: {err}", file=sys.stderr)
        return 2
    return _run(cfg)


def _run(cfg) -> int:
    import json

    from data_gen.llm import RunStopped
    from nif_lightning.evaluation.runner import run_eval

    def log(msg: str) -> None:
        print(msg, file=sys.stderr)

    try:
        result = run_eval(cfg, log=log)
    except RunStopped as err:
        print(f"nif eval: {err}", file=sys.stderr)
        return 3
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
        table = compare(args.target[1:], args.out or "eval-compare")
    except ValueError as err:
        print(f"nif eval compare: {err}", file=sys.stderr)
        return 2
    print(table, end="")
    return 0
