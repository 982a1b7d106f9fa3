"""`nif run`: the whole method from one YAML — gen -> filter -> train (export + merge) -> preview.

A run config (`nif_lightning.config.RunConfig`) is a train config (`model`, `lora`, `data`,
`optim`, `trainer`, `out`, `seed`) plus three sections only `nif run` reads:

    gen:      # `nif gen`'s options, by name (num_docs: 300 is `--num-docs 300`)
    filter:   # absent/null: no filter stage; a mapping: `nif filter`'s options
    preview:  # prompts and max_new_tokens for the before/after answers

The whole config is checked before any stage (every problem at once, `ConfigError`), then each
stage is a Python call with a typed result: `generate(GenConfig) -> GenStats`,
`run_filter(FilterConfig) -> report`, `run_training(TrainConfig)`, `compare_models(...)`.

Everything lands in one run folder (`out`): `data/`, `data-filtered/`, `adapter/`, `merged/`,
`checkpoints/`, `logs/`, `previews.json`, `report.md`, `report.json`, `loss.png`, and
`run_state.json`, which records each finished stage with the fingerprint of the config it ran
with.

Re-running the command after a kill continues: a finished stage is skipped; an interrupted one
resumes on its own terms (gen keeps every finished row and asks only for the rest, train restarts
from `checkpoints/last.ckpt`). A finished stage whose data-shaping config has since changed is
refused, naming the keys, rather than silently mixing two runs in one folder; operational
settings (concurrency, rate limits, servers, ...) may change, exactly as for `nif gen` itself.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from data_gen.config import OPERATIONAL
from data_gen.llm.errors import RunStopped
from data_gen.schema import ConfigError, to_dict
from data_gen.store import config_diff, fingerprint, read_json_object, write_json_atomic
from nif_lightning.config import RunConfig, check_train_inputs, validate_run

STAGES = ("gen", "filter", "train", "preview")


class StageFailed(RuntimeError):
    """A stage ended with work left to do (failed documents, missing verdicts): exit 1."""


class RunState:
    """`run_state.json`: which stages finished, with what config, written atomically."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / "run_state.json"
        self.stages: dict[str, dict[str, Any]] = {}
        if self.path.is_file():
            self.stages = read_json_object(self.path, what="run state").get("stages", {})

    def done(self, stage: str, fingerprint: dict[str, Any]) -> bool:
        entry = self.stages.get(stage)
        if not entry:
            return False
        if entry["config"] != fingerprint:
            changed = config_diff(entry["config"], fingerprint)
            raise ConfigError(
                [
                    f"stage `{stage}` already finished in {self.path.parent} with a different "
                    f"configuration ({', '.join(changed)} changed); use a new `out` folder"
                ],
                source="",
            )
        return True

    def finish(self, stage: str, fingerprint: dict[str, Any], **info: Any) -> None:
        self.stages[stage] = {"config": fingerprint, "finished_at": time.time(), **info}
        write_json_atomic(self.path, {"stages": self.stages})


def fingerprints(cfg: RunConfig) -> dict[str, dict[str, Any]]:
    """What each stage's output depends on, including what it reads from earlier stages. Gen's
    is `nif gen`'s own (its manifest's config less the operational keys), so both commands agree
    on what changes the data."""
    gen = {"gen": fingerprint(cfg.gen.public_dict(), OPERATIONAL)}
    flt = {"filter": fingerprint(cfg.filter.public_dict(), OPERATIONAL) if cfg.filter else None}
    train = to_dict(cfg.train)
    train.pop("out", None)
    return {
        "gen": gen,
        "filter": {**gen, **flt},
        "train": {**gen, **flt, "train": train},
        "preview": {"model": to_dict(cfg.train.model), "preview": to_dict(cfg.preview)},
    }


def run_pipeline(cfg: RunConfig, *, force: bool = False, log=print) -> dict[str, Any] | None:
    """Run (or continue) every stage; returns the report dict (None in a training process of
    rank > 0, which stops after training). `force` trains even when the memory plan does not
    fit this machine's GPU."""
    from nif_lightning.recipes.train import is_global_zero, plan_gate
    from nif_lightning.report import build_report

    run_dir = cfg.run_dir
    state = RunState(run_dir)
    prints = fingerprints(cfg)
    # A changed config on a finished stage is refused here, before any work.
    done = {stage: state.done(stage, prints[stage]) for stage in STAGES}
    train_pending = not done["train"]
    # Everything that touches the world, before `gen` spends hours (and money): the corpus,
    # the API key variables, a gated or misspelled model.
    validate_run(cfg, source="")
    if train_pending:
        problems = check_train_inputs(cfg.train, data_written_later=True)
        if problems:
            raise ConfigError(problems, source="")
    run_dir.mkdir(parents=True, exist_ok=True)
    checkpointing = None
    if train_pending:
        # On CUDA; a plan that cannot fit stops here, before `gen`. Training reuses the answer.
        checkpointing = plan_gate(cfg.train, force=force, log=log)
    summary: dict[str, Any] = {}
    for stage in STAGES:
        if stage == "filter" and cfg.filter is None:
            summary[stage] = "not configured"
            continue
        if stage == "preview" and not cfg.preview.prompts:
            summary[stage] = "no prompts"
            continue
        if done[stage]:
            log(f"[nif run] {stage}: already complete, skipped")
            summary[stage] = "skipped (already complete)"
            continue
        if stage != "train" and not is_global_zero():
            raise RuntimeError(
                f"stage `{stage}` is not done and this is a process of rank > 0: run the data "
                "stages once (`nif run` on one process, or `nif gen`), then launch training on "
                "every rank (see README, multi-node)"
            )
        log(f"[nif run] {stage}: starting")
        t0 = time.perf_counter()
        run_stage = _STAGE_FUNCS[stage]
        if stage == "train":
            info = run_stage(cfg, checkpointing=checkpointing) or {}
        else:
            info = run_stage(cfg) or {}
        if not is_global_zero():
            # On several GPUs Lightning starts one process per extra device by re-running this
            # command; such a process finds gen/filter done and joins training. Its part ends
            # there: rank 0 alone records the stage, previews and writes the report.
            return None
        seconds = round(time.perf_counter() - t0, 1)
        state.finish(stage, prints[stage], seconds=seconds, **info)
        log(f"[nif run] {stage}: done in {seconds:.1f}s")
        summary[stage] = f"done in {seconds:.1f}s"
    return build_report(
        run_dir,
        config=cfg.raw,
        data_dir=cfg.data_dir,
        filter_dir=cfg.filter_dir,
        train_dir=run_dir,
        stages=summary,
    )


def _gen(cfg: RunConfig) -> dict[str, Any]:
    from data_gen.generate import generate

    stats = generate(cfg.gen, progress=not cfg.gen.quiet)
    if stats.stopped:
        raise RunStopped(f"`gen` stopped early: {stats.stopped}; finished work is kept")
    if stats.failed:
        raise StageFailed(
            f"`gen` left {stats.failed} document(s) failed "
            f"(reasons in {cfg.data_dir / 'failures.jsonl'}); re-run `nif run` to retry them"
        )
    return {"rows": stats.done}


def _filter(cfg: RunConfig) -> dict[str, Any]:
    from data_gen.filter import run_filter

    assert cfg.filter is not None
    report = run_filter(cfg.filter, progress=not cfg.filter.quiet)
    if report["unjudged"]:
        raise StageFailed(
            f"`filter` has {report['unjudged']} verdict(s) missing (judge failures); "
            "re-run `nif run` to ask again"
        )
    return {"rows": report["kept_rows"]}


def _train(cfg: RunConfig, *, checkpointing: bool | None = None) -> dict[str, Any]:
    from nif_lightning.recipes.train import checkpoint_to_resume, run_training

    # An interrupted train stage continues from its newest checkpoint (last.ckpt, a file or
    # DeepSpeed's folder, or a SLURM hpc_ckpt); none: it starts.
    resume = checkpoint_to_resume(cfg.run_dir, resume=True) is not None
    run_training(cfg.train, resume=resume, checkpointing=checkpointing)
    return {"resumed": resume}


def _preview(cfg: RunConfig) -> dict[str, Any]:
    from nif_lightning.preview import compare_models, write_previews

    records = compare_models(cfg.train.model.path, cfg.run_dir / "merged", cfg.preview)
    write_previews(records, cfg.run_dir / "previews.json")
    return {"prompts": len(records)}


_STAGE_FUNCS = {"gen": _gen, "filter": _filter, "train": _train, "preview": _preview}
