"""`nif gen`, `nif filter`, `nif export`: thin handlers that parse, check, and call."""

from __future__ import annotations

import argparse
import sys

from data_gen.llm import KINDS

_GEN_HELP = """\
Sample documents, cut each at a random word (25%-75% by default), let a teacher continue the
first part, and write (prompt, completion, reference) rows to crash-safe Arrow shards in OUT.
Re-running the same command resumes: finished documents are kept, failed ones retried, none
written twice. A changed configuration on the same OUT is refused.

examples:
  nif gen --corpus builtin --out runs/data                      # offline, true continuations
  nif gen --corpus hf:Skylion007/openwebtext --num-docs 80000 --out runs/owt-gpt4 \\
      --teacher openai --model gpt-4-0125-preview --rpm 5000 --tpm 2000000
  nif gen --corpus docs/ --out runs/claude --teacher anthropic \\
      --model claude-3-haiku-20240307 --api-key-env MY_ANTHROPIC_KEY
  nif gen --corpus web.jsonl --out runs/vllm --teacher openai-completions \\
      --model meta-llama/Meta-Llama-3-70B --base-url http://gpu1:8000/v1 \\
      --base-url http://gpu2:8000/v1 --concurrency 128
  nif gen --corpus hf:Skylion007/openwebtext --num-docs 80000 --out runs/owt-batch \\
      --teacher openai --model gpt-4-0125-preview --batch        # half price, within 24 h
  nif gen ... --dry-run --price-in 10 --price-out 30             # what it would send and cost

exit codes: 0 complete; 1 some documents failed (re-run to retry them); 2 bad input;
3 the teacher stopped the run (spend limit or rejected key), finished work kept."""


def _add_teacher_flags(p: argparse.ArgumentParser, *, prefix: str = "", judge: bool = False):
    """The teacher-client flags; the judge of `nif filter` takes the same ones, prefixed."""
    dash = f"--{prefix}"
    g = p.add_argument_group("judge" if judge else "teacher")
    g.add_argument(
        f"{dash}teacher",
        dest=f"{prefix.replace('-', '_')}teacher",
        choices=KINDS,
        default=None if judge else "original",
        help="judge client (enables filter b)" if judge else "who continues (default: original)",
    )
    g.add_argument(f"{dash}model", help="API model name, or HF id / folder for `hf`")
    g.add_argument(
        f"{dash}base-url",
        action="append",
        default=[],
        help="API root such as http://host:8000/v1; repeat to spread load over a fleet",
    )
    g.add_argument(f"{dash}api-key-env", help="NAME of the environment variable with the key")
    g.add_argument(f"{dash}temperature", type=float, default=0.0, help="default 0")
    g.add_argument(
        f"{dash}max-tokens", type=int, default=16 if judge else 1024, help="reply length cap"
    )
    g.add_argument(f"{dash}system-prompt", help="system prompt (anthropic: the paper's)")
    g.add_argument(f"{dash}concurrency", type=int, default=16, help="requests in flight")
    g.add_argument(f"{dash}rpm", type=float, help="requests per minute budget")
    g.add_argument(f"{dash}tpm", type=float, help="tokens per minute budget")
    g.add_argument(f"{dash}max-retries", type=int, default=6, help="retries per request")
    g.add_argument(f"{dash}timeout", type=float, default=120.0, help="seconds per request")
    g.add_argument(f"{dash}backoff", type=float, default=1.0, help="first retry delay, seconds")


def register(subparsers) -> None:
    gen = subparsers.add_parser(
        "gen",
        help="documents -> random cut -> teacher continuation -> Arrow shards",
        description=_GEN_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    gen.add_argument(
        "--corpus",
        required=True,
        help="builtin | hf:NAME[:SPLIT][@REVISION] | .jsonl/.json/.parquet/.txt file or folder",
    )
    gen.add_argument("--out", required=True, help="output folder (resumable)")
    gen.add_argument("--num-docs", type=int, help="documents to sample (default: all)")
    gen.add_argument("--seed", type=int, default=0, help="sampling and cut seed (default 0)")
    gen.add_argument("--text-field", default="text", help="text field of records")
    gen.add_argument("--id-field", help="id field of records (default: hash of the text)")
    gen.add_argument("--split-min", type=float, default=0.25, help="earliest cut (default 0.25)")
    gen.add_argument("--split-max", type=float, default=0.75, help="latest cut (default 0.75)")
    gen.add_argument("--min-words", type=int, default=8, help="skip shorter documents")
    gen.add_argument("--shard-rows", type=int, default=1000, help="rows per shard")
    gen.add_argument(
        "--flush-seconds", type=float, default=30.0, help="write a shard at least this often"
    )
    gen.add_argument("--quiet", action="store_true", help="no progress bar")
    gen.add_argument(
        "--dry-run",
        action="store_true",
        help="sample and count what would be sent (documents, tokens, cost); send nothing",
    )
    gen.add_argument("--price-in", type=float, help="$ per million prompt tokens (for the cost)")
    gen.add_argument("--price-out", type=float, help="$ per million completion tokens")
    _add_teacher_flags(gen)
    batch = gen.add_argument_group("provider batch API (openai, openai-completions, anthropic)")
    batch.add_argument(
        "--batch",
        action="store_true",
        help="send as OpenAI Batch / Anthropic Message Batches: half the price, answers within "
        "24 h; waits for them (stop any time: the same command later collects them)",
    )
    batch.add_argument("--batch-size", type=int, default=10_000, help="requests per batch")
    batch.add_argument(
        "--poll-seconds", type=float, default=60.0, help="between status checks (default 60)"
    )
    batch.add_argument(
        "--no-wait",
        dest="batch_wait",
        action="store_false",
        help="send the batches, collect those already ended, and exit (3) without waiting",
    )
    gen.set_defaults(func=_gen)

    flt = subparsers.add_parser(
        "filter",
        help="the paper's filters: uppercase rule and LLM judge (Section 6, Table 8)",
        description=(
            "Filter a generated folder into a new one: (a) drop completions that start uppercase\n"
            "where the true continuation does not; (b) with --judge-teacher, ask an LLM judge\n"
            "the paper's Appendix B questions (instructional? dialogue?) and drop flagged rows.\n"
            "Writes OUT/shards, OUT/filter_report.{json,md} (Table 8 shape); verdicts are cached\n"
            "in OUT/judgements.jsonl, so an interrupted filter resumes.\n\n"
            "examples:\n"
            "  nif filter runs/data --out runs/data-filtered\n"
            "  nif filter runs/owt-gpt4 --out runs/owt-gpt4-f --judge-teacher openai "
            "--judge-model gpt-4o"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    flt.add_argument("src", metavar="DIR", help="folder written by `nif gen`")
    flt.add_argument("--out", required=True, help="new dataset folder")
    flt.add_argument("--no-uppercase", action="store_true", help="skip the uppercase rule")
    flt.add_argument("--keep-instructional", action="store_true", help="report, do not drop")
    flt.add_argument("--keep-conversational", action="store_true", help="report, do not drop")
    flt.add_argument("--quiet", action="store_true", help="no progress bar")
    flt.add_argument(
        "--judge-batch",
        action="store_true",
        help="ask through the judge provider's batch API: half the price, within 24 h",
    )
    flt.add_argument("--judge-batch-size", type=int, default=10_000, help="requests per batch")
    flt.add_argument("--judge-poll-seconds", type=float, default=60.0, help="between checks")
    _add_teacher_flags(flt, prefix="judge-", judge=True)
    flt.set_defaults(func=_filter)

    exp = subparsers.add_parser(
        "export",
        help="export a generated folder for another trainer (LLaMA-Factory)",
        description=(
            "Write alpaca-format records plus a dataset_info.json entry that LLaMA-Factory\n"
            "loads as is (prompt -> instruction, completion -> output).\n\n"
            "example:\n  nif export llamafactory runs/data runs/lf-data --name nif_owt"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    exp.add_argument("format", choices=["llamafactory"], help="target format")
    exp.add_argument("src", metavar="DIR", help="folder written by `nif gen` / `nif filter`")
    exp.add_argument("out", metavar="OUT", help="output folder")
    exp.add_argument("--name", default="nif", help="dataset name (default: nif)")
    exp.set_defaults(func=_export)


def _teacher_config(args: argparse.Namespace, prefix: str = ""):
    from data_gen.llm import TeacherConfig

    def arg(name):
        return getattr(args, prefix + name)

    return TeacherConfig(
        kind=arg("teacher"),
        model=arg("model"),
        base_urls=tuple(arg("base_url")),
        api_key_env=arg("api_key_env"),
        temperature=arg("temperature"),
        max_tokens=arg("max_tokens"),
        system_prompt=arg("system_prompt"),
        concurrency=arg("concurrency"),
        rpm=arg("rpm"),
        tpm=arg("tpm"),
        max_retries=arg("max_retries"),
        timeout=arg("timeout"),
        backoff=arg("backoff"),
        # The batch settings, where this command has them (the dataclass holds the defaults).
        **{
            name: getattr(args, prefix + name)
            for name in ("batch", "batch_size", "poll_seconds", "batch_wait")
            if hasattr(args, prefix + name)
        },
    )


def _gen(args: argparse.Namespace) -> int:
    from data_gen.generate import GenConfig, estimate, generate, token_cost

    try:
        teacher = _teacher_config(args)
        teacher.api_key()  # a missing key is bad input: say so before sampling anything
        cfg = GenConfig(
            corpus=args.corpus,
            out=args.out,
            num_docs=args.num_docs,
            seed=args.seed,
            text_field=args.text_field,
            id_field=args.id_field,
            split_min=args.split_min,
            split_max=args.split_max,
            min_words=args.min_words,
            shard_rows=args.shard_rows,
            flush_seconds=args.flush_seconds,
            teacher=teacher,
        )
        if (args.price_in is None) != (args.price_out is None):
            raise ValueError("give both `--price-in` and `--price-out` (dollars per 1M tokens)")
        if args.dry_run:
            return _dry_run(args, estimate(cfg, progress=not args.quiet))
        stats = generate(cfg, progress=not args.quiet)
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        print(f"nif gen: {err}", file=sys.stderr)
        return 2
    skipped = ", ".join(f"{n} {r}" for r, n in sorted(stats.skipped.items())) or "none"
    print(
        f"nif gen: {stats.done}/{stats.sampled} documents done ({stats.new} new this run), "
        f"{stats.failed} failed, skipped: {skipped}; {stats.wall_time_s:.1f}s -> {args.out}"
    )
    if args.price_in is not None:
        tokens = (stats.prompt_tokens, stats.completion_tokens)
        cost = token_cost(*tokens, args.price_in, args.price_out)
        cost /= 2 if args.batch else 1  # the batch APIs bill half
        print(
            f"nif gen: {tokens[0]:,} prompt + {tokens[1]:,} completion tokens in this folder "
            f"(as the teacher reported them): about ${cost:,.2f} at the given prices"
        )
    if stats.stopped:
        print(f"nif gen: stopped early: {stats.stopped}; finished work is kept", file=sys.stderr)
        return 3
    if stats.failed:
        print(
            f"nif gen: {stats.failed} document(s) failed (reasons in {args.out}/failures.jsonl);"
            " re-run the same command to retry them",
            file=sys.stderr,
        )
        return 1
    return 0


def _dry_run(args: argparse.Namespace, est) -> int:
    from data_gen.generate import token_cost

    skipped = ", ".join(f"{n} {r}" for r, n in sorted(est.skipped.items())) or "none"
    print(
        f"nif gen (dry run): {est.sampled} documents sampled (skipped: {skipped}), "
        f"{est.already_done} already done, {est.to_send} to send: ~{est.prompt_tokens:,} prompt "
        f"tokens (characters / 4) and at most {est.max_completion_tokens:,} completion tokens "
        f"(--max-tokens {args.max_tokens} each)"
    )
    if args.price_in is not None:
        cost = token_cost(
            est.prompt_tokens, est.max_completion_tokens, args.price_in, args.price_out
        )
        if args.batch:
            line = f"at most ${cost / 2:,.2f} through the batch API (half of ${cost:,.2f})"
        else:
            line = f"at most ${cost:,.2f} (about half with --batch)"
        prices = f"${args.price_in} / ${args.price_out} per million tokens in / out"
        print(f"nif gen (dry run): {line} at {prices}")
    return 0


def _filter(args: argparse.Namespace) -> int:
    from data_gen.filter import FilterConfig, render_table, run_filter
    from data_gen.llm import RunStopped

    try:
        judge = _teacher_config(args, "judge_") if args.judge_teacher else None
        if judge is not None and judge.kind == "original":
            raise ValueError("`--judge-teacher original` cannot judge: pick an LLM client")
        if judge is not None:
            judge.api_key()
        cfg = FilterConfig(
            src=args.src,
            out=args.out,
            uppercase=not args.no_uppercase,
            judge=judge,
            drop_instructional=not args.keep_instructional,
            drop_conversational=not args.keep_conversational,
        )
        report = run_filter(cfg, progress=not args.quiet)
    except (FileNotFoundError, ValueError, RuntimeError, RunStopped) as err:
        print(f"nif filter: {err}", file=sys.stderr)
        return 3 if isinstance(err, RunStopped) else 2
    print(render_table(report), end="")
    print(f"nif filter: kept {report['kept_rows']} of {report['source_rows']} -> {args.out}")
    if report["unjudged"]:
        print(
            f"nif filter: {report['unjudged']} verdict(s) missing (judge failures); "
            "re-run to ask again",
            file=sys.stderr,
        )
        return 1
    return 0


def _export(args: argparse.Namespace) -> int:
    from data_gen.export import export_llamafactory

    try:
        path = export_llamafactory(args.src, args.out, name=args.name)
    except (FileNotFoundError, ValueError) as err:
        print(f"nif export: {err}", file=sys.stderr)
        return 2
    print(f"nif export: {path} (+ dataset_info.json entry {args.name!r})")
    return 0
