"""`nif gen`, `nif filter`, `nif export`: thin handlers over the typed configs.

The flags are derived from `GenConfig` and `FilterConfig` (`data_gen.config`), so an option is
declared once; a bad flag value raises `ConfigError`, which `nif`'s entry point reports (exit 2)
together with every other problem of the command line.
"""

from __future__ import annotations

import argparse
import sys

from data_gen.schema import add_arguments, from_args, validate

_GEN_HELP = """\
Sample documents, cut each at a random word (25%-75% by default), let a teacher continue the
first part, and write (prompt, completion, reference) rows to crash-safe Arrow shards in OUT.
Re-running the same command resumes: finished documents are kept, failed ones retried, none
written twice. A changed configuration on the same OUT is refused (operational settings such
as concurrency, rate limits, retries and servers may change).

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

In a `nif run` config, the `gen:` section takes the same options as keys (num_docs: 300).

exit codes: 0 complete; 1 some documents failed (re-run to retry them); 2 bad input;
3 the teacher stopped the run (spend limit, rejected key, nothing listening at --base-url),
finished work kept.

teacher trouble: the server's own error text is in the messages and in OUT/failures.jsonl; a
chat endpoint failing with HTTP 5xx on a base model (no chat template) wants
`--teacher openai-completions`; a slow server makes the client lower its requests in flight
after a timeout (or lower --concurrency / raise --timeout yourself)."""

_FILTER_HELP = """\
Filter a generated folder into a new one: (a) drop completions that start uppercase where the
true continuation does not; (b) with --judge-teacher, ask an LLM judge the paper's Appendix B
questions (instructional? dialogue?) and drop flagged rows. Writes OUT/shards and
OUT/filter_report.{json,md} (Table 8 shape); verdicts are cached in OUT/judgements.jsonl, so an
interrupted filter resumes.

examples:
  nif filter runs/data --out runs/data-filtered
  nif filter runs/owt-gpt4 --out runs/owt-gpt4-f --judge-teacher openai --judge-model gpt-4o

In a `nif run` config, the `filter:` section takes the same options as keys.

exit codes: 0 complete; 1 some verdicts missing (re-run to ask again); 2 bad input;
3 the judge stopped the run (spend limit or rejected key), finished work kept."""


_EXPORT_HELP = """\
Write alpaca-format records (prompt -> instruction, completion -> output, empty input) plus a
dataset_info.json entry that LLaMA-Factory loads as is. Each output ends with the model's EOS
text, so that LLaMA-Factory's `empty` template (0.9.5: the raw text, no EOS of its own) trains on
exactly the token sequences `nif train` builds: tok(prompt) + tok(completion) + [eos]. Train it
with `template: empty` (the paper's `vanilla` is gone from LLaMA-Factory; `default` adds
"Human: " / "Assistant:" text). Rows longer than LLaMA-Factory's cutoff_len are cut by its own
rule, which differs from the paper's: `--cutoff-len N` cuts them here, the way `nif train` does.

example:
  nif export llamafactory runs/data runs/lf-data --name nif_owt \\
      --tokenizer meta-llama/Llama-2-7b-hf --cutoff-len 1024
  # then, in the LLaMA-Factory training YAML:
  #   dataset: nif_owt
  #   dataset_dir: runs/lf-data
  #   template: empty
  #   cutoff_len: 1024"""


def register(subparsers) -> None:
    from data_gen.config import FilterConfig, GenConfig

    gen = subparsers.add_parser(
        "gen",
        help="documents -> random cut -> teacher continuation -> Arrow shards",
        description=_GEN_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(gen, GenConfig)
    gen.set_defaults(func=_gen)

    flt = subparsers.add_parser(
        "filter",
        help="the paper's filters: uppercase rule and LLM judge (Section 6, Table 8)",
        description=_FILTER_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(flt, FilterConfig)
    flt.set_defaults(func=_filter)

    from data_gen.export import FORMATS

    exp = subparsers.add_parser(
        "export",
        help="export a generated folder for another trainer (LLaMA-Factory)",
        description=_EXPORT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    exp.add_argument("format", choices=FORMATS, help="target format (required)")
    exp.add_argument(
        "src", metavar="DIR", help="folder written by `nif gen` / `nif filter` (required)"
    )
    exp.add_argument("out", metavar="OUT", help="output folder (required)")
    exp.add_argument("--name", default="nif", help="dataset name (default: nif)")
    eos = exp.add_mutually_exclusive_group()
    eos.add_argument(
        "--tokenizer",
        metavar="MODEL",
        help="the model you will train (folder or Hub id): its EOS text ends each output, "
        "checked row by row (required unless --eos-token is given; default: none)",
    )
    eos.add_argument(
        "--eos-token",
        metavar="TEXT",
        help="the EOS text itself, e.g. '</s>' or '<|end_of_text|>'; '' for none, only for a "
        "template that appends its own (default: the --tokenizer's)",
    )
    exp.add_argument(
        "--cutoff-len",
        type=int,
        metavar="N",
        help="with --tokenizer: cut rows longer than N tokens as `nif train --data.cutoff-len N` "
        "does, so LLaMA-Factory (cutoff_len >= N) trains the same sequences (default: none, "
        "LLaMA-Factory cuts them its own way)",
    )
    exp.set_defaults(func=_export)


def _gen(args: argparse.Namespace) -> int:
    from data_gen.config import GenConfig
    from data_gen.generate import estimate, generate

    cfg = from_args(GenConfig, args)
    validate(cfg, source="")
    try:
        if cfg.dry_run:
            print_estimate(cfg, estimate(cfg, progress=not cfg.quiet))
            return 0
        stats = generate(cfg, progress=not cfg.quiet)
    except (FileNotFoundError, ValueError) as err:
        print(f"nif gen: {err}", file=sys.stderr)
        return 2
    return report_gen(cfg, stats)


def report_gen(cfg, stats) -> int:
    """Print what a gen run did; the exit code (0 complete, 1 failures, 3 stopped)."""
    from data_gen.generate import token_cost

    skipped = ", ".join(f"{n} {r}" for r, n in sorted(stats.skipped.items())) or "none"
    print(
        f"nif gen: {stats.done}/{stats.sampled} documents done ({stats.new} new this run), "
        f"{stats.failed} failed, skipped: {skipped}; {stats.wall_time_s:.1f}s -> {cfg.out}"
    )
    if cfg.price_in is not None:
        tokens = (stats.prompt_tokens, stats.completion_tokens)
        cost = token_cost(*tokens, cfg.price_in, cfg.price_out)
        cost /= 2 if cfg.teacher.batch else 1  # the batch APIs bill half
        print(
            f"nif gen: {tokens[0]:,} prompt + {tokens[1]:,} completion tokens in this folder "
            f"(as the teacher reported them): about ${cost:,.2f} at the given prices"
        )
    code = 0
    if stats.stopped:
        print(f"nif gen: stopped early: {stats.stopped}; finished work is kept", file=sys.stderr)
        code = 3
    elif stats.failed:
        print(
            f"nif gen: {stats.failed} document(s) failed (last: {stats.last_failure}; all "
            f"reasons in {cfg.out}/failures.jsonl); re-run the same command to retry them",
            file=sys.stderr,
        )
        code = 1
    for advice in stats.advice:
        print(f"nif gen: hint: {advice}", file=sys.stderr)
    return code


def print_estimate(cfg, est) -> None:
    from data_gen.generate import token_cost

    skipped = ", ".join(f"{n} {r}" for r, n in sorted(est.skipped.items())) or "none"
    print(
        f"nif gen (dry run): {est.sampled} documents sampled (skipped: {skipped}), "
        f"{est.already_done} already done, {est.to_send} to send: ~{est.prompt_tokens:,} prompt "
        f"tokens (characters / 4) and at most {est.max_completion_tokens:,} completion tokens "
        f"(--max-tokens {cfg.teacher.max_tokens} each)"
    )
    if cfg.price_in is not None:
        cost = token_cost(est.prompt_tokens, est.max_completion_tokens, cfg.price_in, cfg.price_out)
        if cfg.teacher.batch:
            line = f"at most ${cost / 2:,.2f} through the batch API (half of ${cost:,.2f})"
        else:
            line = f"at most ${cost:,.2f} (about half with --batch)"
        prices = f"${cfg.price_in} / ${cfg.price_out} per million tokens in / out"
        print(f"nif gen (dry run): {line} at {prices}")


def _filter(args: argparse.Namespace) -> int:
    from data_gen.config import FilterConfig
    from data_gen.filter import run_filter

    cfg = from_args(FilterConfig, args)
    validate(cfg, source="")
    try:
        report = run_filter(cfg, progress=not cfg.quiet)
    except (FileNotFoundError, ValueError) as err:
        print(f"nif filter: {err}", file=sys.stderr)
        return 2
    return report_filter(cfg, report)


def report_filter(cfg, report) -> int:
    """Print the filter's table; the exit code (0 complete, 1 verdicts missing)."""
    from data_gen.filter import render_table

    print(render_table(report), end="")
    print(f"nif filter: kept {report['kept_rows']} of {report['source_rows']} -> {cfg.out}")
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
        made = export_llamafactory(
            args.src,
            args.out,
            name=args.name,
            tokenizer=args.tokenizer,
            eos_token=args.eos_token,
            cutoff_len=args.cutoff_len,
        )
    except (FileNotFoundError, ValueError) as err:
        print(f"nif export: {err}", file=sys.stderr)
        return 2
    print(
        f"nif export: {made.data_file} (+ dataset_info.json entry {args.name!r}); "
        "train it with LLaMA-Factory's `template: empty`"
    )
    if args.cutoff_len is not None:
        print(
            f"nif export: {made.rows_cut} row(s) cut to {args.cutoff_len} tokens as `nif "
            f"train` cuts them; {made.rows_cut_inexactly} could not be cut exactly in text "
            "(left whole: LLaMA-Factory cuts those its own way)"
        )
    return 0
