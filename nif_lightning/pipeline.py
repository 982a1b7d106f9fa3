"""`nif run`: the whole method from one YAML — gen -> filter -> train (export + merge) -> sample.

A run config is a `nif train` config (`model`, `lora`, `data`, `optim`, `trainer`, `out`, `seed`)
plus three sections only `nif run` reads:

    gen:     # the `nif gen` flags, by name (num_docs: 300 is `--num-docs 300`)
    filter:  # absent/null: no filter stage; a mapping: the `nif filter` flags
    sample:  # prompts and max_new_tokens for the before/after answers

Everything lands in one run folder (`out`): `data/`, `data-filtered/`, `adapter/`, `merged/`,
`checkpoints/`, `logs/`, `samples.json`, `report.md`, `report.json`, `loss.png`, and
`run_state.json`, which records each finished stage with the slice of config it ran with.

Re-running the command after a kill continues: a finished stage is skipped; an interrupted one
resumes on its own terms (gen keeps every finished row and asks only for the rest, train restarts
from `checkpoints/last.ckpt`). A finished stage whose config has since changed is refused, naming
the keys, rather than silently mixing two runs in one folder.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nif_lightning.config import RUN_SECTIONS, TrainConfig, config_from_dict
from nif_lightning.hub import check_model
from nif_lightning.sample import SampleSettings
from nif_lightning.training import is_global_zero, plan_gate

STAGES = ("gen", "filter", "train", "sample")


@dataclass
class RunConfig:
    """A checked run config: the train config plus the run-only sections."""

    train: TrainConfig
    gen_args: list[str]
    """`nif gen` argument list built from the `gen` section."""
    filter_args: list[str] | None
    """`nif filter` argument list, or None for no filter stage."""
    sample: SampleSettings
    raw: dict[str, Any] = field(default_factory=dict)
    """The YAML as read (for the report and the stage fingerprints)."""

    @property
    def run_dir(self) -> Path:
        return Path(self.train.out)

    @property
    def data_dir(self) -> Path:
        return self.run_dir / "data"

    @property
    def filter_dir(self) -> Path | None:
        return self.run_dir / "data-filtered" if self.filter_args is not None else None

    @property
    def train_data_dir(self) -> Path:
        return self.filter_dir or self.data_dir


def load_run_config(path: str | Path) -> RunConfig:
    """Read and check a run config completely — every stage's keys — before any stage runs."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"config {p} does not exist")
    raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{p}: top level must be a mapping")
    train_raw = {k: v for k, v in raw.items() if k not in RUN_SECTIONS}
    run_dir = Path(str(train_raw.get("out") or ""))
    if not str(run_dir) or str(run_dir) == ".":
        raise ValueError(f"{p}: `out` (the run folder) is required")

    gen = _section(raw, "gen", p)
    if gen is None:
        raise ValueError(f"{p}: `gen` section is required (at least `corpus`)")
    gen_args = _flag_args("gen", gen, p, positional=[], fixed={"out": str(run_dir / "data")})
    flt = _section(raw, "filter", p)
    filter_args = None
    if flt is not None:
        filter_args = _flag_args(
            "filter",
            flt,
            p,
            positional=[str(run_dir / "data")],
            fixed={"out": str(run_dir / "data-filtered")},
        )

    # The run decides where training reads from: what its own gen/filter stage wrote.
    data = dict(train_raw.get("data") or {})
    expected = run_dir / ("data-filtered" if flt is not None else "data")
    if data.get("dir") and Path(data["dir"]) != expected:
        raise ValueError(
            f"{p}: `data.dir` is {data['dir']!r}, but this run trains on {str(expected)!r} "
            "(what its gen/filter stage writes); remove `data.dir` or set it to that"
        )
    data["dir"] = str(expected)
    train_raw["data"] = data
    train = config_from_dict(train_raw, source=str(p))

    sample_raw = _section(raw, "sample", p) or {}
    known = set(SampleSettings.__dataclass_fields__)
    bad = sorted(set(sample_raw) - known)
    if bad:
        keys = [f"sample.{k}" for k in bad]
        raise ValueError(f"{p}: unknown key(s) {keys}; known: {sorted(known)}")
    sample = SampleSettings(**sample_raw)
    return RunConfig(train, gen_args, filter_args, sample, raw)


def _section(raw: dict, name: str, source: Path) -> dict | None:
    value = raw.get(name)
    if value is not None and not isinstance(value, dict):
        raise ValueError(f"{source}: `{name}` must be a mapping of `nif {name}` flags")
    return value


def _flag_args(
    command: str,
    section: dict[str, Any],
    source: Path,
    *,
    positional: list[str],
    fixed: dict[str, str],
) -> list[str]:
    """`{num_docs: 300, base_url: [a, b]}` -> `--num-docs 300 --base-url a --base-url b`,
    checked by the subcommand's own parser, so a misspelt key fails now, naming it."""
    for key in fixed:
        if key in section:
            raise ValueError(
                f"{source}: `{command}.{key}` is set by the run (it writes to {fixed[key]})"
            )
    args = list(positional)
    for key, value in {**section, **fixed}.items():
        flag = "--" + str(key).replace("_", "-")
        if isinstance(value, bool):
            if value:
                args.append(flag)
            continue
        for item in value if isinstance(value, list) else [value]:
            args += [flag, str(item)]
    _check_flags(command, args, source)
    return args


def _check_flags(command: str, args: list[str], source: Path) -> None:
    from nif_lightning.cli import build_parser

    parser = build_parser()
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            _, unknown = parser.parse_known_args([command, *args])
    except SystemExit:
        msg = err.getvalue().strip().splitlines()
        reason = msg[-1] if msg else "invalid"
        raise ValueError(f"{source}: `{command}` section: {reason}") from None
    if unknown:
        keys = [u.lstrip("-").replace("-", "_") for u in unknown if u.startswith("--")]
        raise ValueError(f"{source}: unknown key(s) {[f'{command}.{k}' for k in keys or unknown]}")


class RunState:
    """`run_state.json`: which stages finished, with what config, written atomically."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / "run_state.json"
        self.stages: dict[str, dict[str, Any]] = {}
        if self.path.is_file():
            self.stages = json.loads(self.path.read_text(encoding="utf-8")).get("stages", {})

    def done(self, stage: str, fingerprint: dict[str, Any]) -> bool:
        entry = self.stages.get(stage)
        if not entry:
            return False
        if entry["config"] != fingerprint:
            changed = _diff(entry["config"], fingerprint)
            raise ValueError(
                f"stage `{stage}` already finished in {self.path.parent} with a different "
                f"configuration ({', '.join(changed)} changed); use a new `out` folder"
            )
        return True

    def finish(self, stage: str, fingerprint: dict[str, Any], **info: Any) -> None:
        self.stages[stage] = {"config": fingerprint, "finished_at": time.time(), **info}
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({"stages": self.stages}, indent=2) + "\n", encoding="utf-8")
        tmp.replace(self.path)


def _diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(set(old) | set(new))
        return [d for k in keys for d in _diff(old.get(k), new.get(k), f"{prefix}{k}.")]
    return [prefix.rstrip(".") or "value"] if old != new else []


def _fingerprints(cfg: RunConfig) -> dict[str, dict[str, Any]]:
    """The config each stage depends on, including what it reads from earlier stages."""
    raw = cfg.raw
    train_keys = ("model", "lora", "data", "optim", "trainer", "seed")
    return {
        "gen": {"gen": raw.get("gen")},
        "filter": {"gen": raw.get("gen"), "filter": raw.get("filter")},
        "train": {
            "gen": raw.get("gen"),
            "filter": raw.get("filter"),
            **{k: raw.get(k) for k in train_keys},
        },
        "sample": {"model": raw.get("model"), "sample": raw.get("sample")},
    }


def run_pipeline(cfg: RunConfig, *, force: bool = False, log=print) -> dict[str, Any] | None:
    """Run (or continue) every stage; returns the report dict (None in a training process of
    rank > 0, which stops after training). `force` trains even when the memory plan does not
    fit this machine's GPU."""
    from nif_lightning.report import build_report

    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    state = RunState(run_dir)
    prints = _fingerprints(cfg)
    model = cfg.train.model
    if not state.done("train", prints["train"]) and not model.tiny:
        # Before `gen` spends hours (and money): a gated or misspelled model fails now.
        check_model(model.path, what="`model.path`")
    checkpointing = None
    if not state.done("train", prints["train"]):
        # On CUDA; a plan that cannot fit stops here, before `gen`. Training reuses the answer.
        checkpointing = plan_gate(cfg.train, force=force, log=log)
    summary: dict[str, Any] = {}
    for stage in STAGES:
        if stage == "filter" and cfg.filter_args is None:
            summary[stage] = "not configured"
            continue
        if stage == "sample" and not cfg.sample.prompts:
            summary[stage] = "no prompts"
            continue
        if state.done(stage, prints[stage]):
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
            run_stage = functools.partial(run_stage, checkpointing=checkpointing)
        info = run_stage(cfg) or {}
        if not is_global_zero():
            # On several GPUs Lightning starts one process per extra device by re-running this
            # command; such a process finds gen/filter done and joins training. Its part ends
            # there: rank 0 alone records the stage, samples and writes the report.
            return None
        seconds = round(time.perf_counter() - t0, 1)
        state.finish(stage, prints[stage], seconds=seconds, **info)
        log(f"[nif run] {stage}: done in {seconds:.1f}s")
        summary[stage] = f"done in {seconds:.1f}s"
    report = build_report(
        run_dir,
        config=cfg.raw,
        data_dir=cfg.data_dir,
        filter_dir=cfg.filter_dir,
        train_dir=run_dir,
        stages=summary,
    )
    return report


def _run_cli(command: str, args: list[str]) -> None:
    from nif_lightning.cli import main

    code = main([command, *args])
    if code != 0:
        raise RuntimeError(
            f"stage `{command}` failed (exit {code}); fix the cause above and re-run "
            "`nif run` — finished work is kept"
        )


def _stage_gen(cfg: RunConfig) -> dict[str, Any]:
    _run_cli("gen", cfg.gen_args)
    manifest = json.loads((cfg.data_dir / "manifest.json").read_text(encoding="utf-8"))
    counts = manifest.get("counts") or {}
    if counts.get("failed"):
        raise RuntimeError(
            f"`gen` left {counts['failed']} document(s) failed "
            f"(reasons in {cfg.data_dir / 'failures.jsonl'}); re-run `nif run` to retry them"
        )
    return {"rows": counts.get("done")}


def _stage_filter(cfg: RunConfig) -> dict[str, Any]:
    _run_cli("filter", cfg.filter_args or [])
    return {}


def _stage_train(cfg: RunConfig, *, checkpointing: bool | None = None) -> dict[str, Any]:
    from nif_lightning.training import run_training

    resume = (cfg.run_dir / "checkpoints" / "last.ckpt").exists()  # a file, or DeepSpeed's folder
    run_training(cfg.train, resume=resume, checkpointing=checkpointing)
    return {"resumed": resume}


def _stage_sample(cfg: RunConfig) -> dict[str, Any]:
    from nif_lightning.sample import compare_models, write_samples

    records = compare_models(cfg.train.model.path, cfg.run_dir / "merged", cfg.sample)
    write_samples(records, cfg.run_dir / "samples.json")
    return {"prompts": len(records)}


_STAGE_FUNCS = {
    "gen": _stage_gen,
    "filter": _stage_filter,
    "train": _stage_train,
    "sample": _stage_sample,
}
