"""The `nif` command: one entry point, one subcommand per stage of the method.

Each package registers its own subcommands (`register(subparsers)`), and each handler imports
its heavy dependencies lazily, so `nif --help` answers at once.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys

# Modules exposing `register(subparsers)`, in the order the method runs.
_COMMAND_MODULES = (
    "data_gen.cli",  # gen, filter, export
    "nif_lightning.cli_train",  # tiny-model, train, merge
    "nif_lightning.cli_plan",  # plan: per-GPU memory of a training config
    "nif_lightning.cli_run",  # run: all stages from one config
    "nif_lightning.cli_eval",  # eval, eval compare: the paper's benchmarks
    "nif_lightning.cli_kernels",  # kernels check: the Triton kernels compiled for real GPUs
)

_DESCRIPTION = """\
Non-instructional fine-tuning: cut random documents in two, let a teacher LLM continue the
first half, and LoRA-fine-tune a base model on (first half -> continuation).

typical flow:
  nif gen --corpus builtin --out runs/data          # documents -> teacher -> Arrow shards
  nif filter runs/data --out runs/data-filtered     # the paper's Section 6 filters
  nif tiny-model --out runs/tiny                    # an offline stand-in for a real base model
  nif train --config configs/quickstart.yaml        # LoRA training, adapter export, merge
  nif run                                           # all of the above from one config
  nif eval runs/quickstart/merged --suite ifeval    # the paper's benchmarks
"""


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line naming it and where help is, not the whole usage
    (the usage of `nif gen` is 20 lines; the error would scroll away)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="nif",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=_version())
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    previous = _sigterm_as_sigint()
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(
            "interrupted; finished work is kept, re-run the same command to resume", file=sys.stderr
        )
        return 130
    except Exception as err:
        code = exit_code(err)
        if code is None:
            raise
        print(f"nif {args.command}: {err}", file=sys.stderr)
        return code
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _sigterm_as_sigint():
    """Handle SIGTERM (`kill`, SLURM preemption, a container stop) as Ctrl-C: finished work is
    flushed, the manifest tells the truth, exit 130 for both. It goes to whatever handles SIGINT
    at that moment (inside `asyncio.run`, the handler that cancels the main task cleanly; else
    Python's, which raises KeyboardInterrupt). Training replaces it with Lightning's during fit.
    Returns the previous handler, or None where none could be set (not the main thread)."""

    def on_sigterm(signum, frame):
        handler = signal.getsignal(signal.SIGINT)
        if callable(handler):
            handler(signal.SIGINT, frame)
        else:  # SIGINT ignored (a background job of a script) or default: interrupt anyway
            raise KeyboardInterrupt

    try:
        return signal.signal(signal.SIGTERM, on_sigterm)
    except ValueError:  # signals are set from the main thread only
        return None


def exit_code(err: BaseException) -> int | None:
    """The one mapping of errors to exit codes: 2 bad input (a config problem, an output folder
    that is locked, damaged, full or holds other settings, a memory plan that cannot fit), 3 the
    provider stopped the run (spend limit, rejected key); None: a bug, shown as a traceback."""
    from data_gen.llm.errors import RunStopped
    from data_gen.schema import ConfigError
    from data_gen.store import FolderError

    if isinstance(err, (ConfigError, FolderError)):
        return 2
    if isinstance(err, RunStopped):
        return 3
    if "nif_lightning.memory" in sys.modules:
        from nif_lightning.memory import PlanError

        if isinstance(err, PlanError):
            return 2
    return None


def _version() -> str:
    from nif_lightning import __version__

    return f"nif-lightning {__version__}"


if __name__ == "__main__":
    sys.exit(main())
