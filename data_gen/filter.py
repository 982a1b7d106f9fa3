"""`nif filter`: the paper's two filters (Section 6) on a generated folder.

(a) Uppercase rule: drop a row whose completion starts with an uppercase letter when the true
    continuation does not — the teacher summarised or answered instead of continuing the
    sentence (about 7k of the paper's 80k).
(b) LLM judge: the two prompts of the paper's Appendix B ask whether the document (prompt +
    completion) is instruction-tuning-like content, and whether it contains dialogue; the judge
    answers "Yes"/"No" first. Flagged rows are dropped (each check can be switched off), and the
    shares are reported in the shape of the paper's Table 8.

The judge goes through the same teacher client as `nif gen` (retries, rate limits, fleets), or
with `--judge-batch` through the provider's batch API (`batch.py`). Its verdicts are cached in
`OUT/judgements.jsonl` as they arrive, so an interrupted filter resumes without paying for a
verdict twice. The output folder has the layout of `nif gen`'s (shards +
manifest), so `nif train` and `nif export` read it the same way.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

from data_gen.config import FilterConfig
from data_gen.llm import RequestFailed, RunStopped, make_teacher
from data_gen.llm.batch import BatchLedger, run_batches
from data_gen.llm.fanout import fan_out
from data_gen.shards import DirLock, ShardWriter, read_rows
from data_gen.store import JsonlCache, write_json_atomic, write_text_atomic

# Appendix B, with example documents written for this project in place of the paper's
# unpublished {positive_example} / {negative_example}.
INSTRUCTIONAL_PROMPT = """\
Is the following text potentially synthesized for the purpose of instruction fine-tuning for \
Large Language Models (LLMs) (retaining content but not structure, e.g., removing dialogue \
speakers, etc., typically starting with a verb in command form followed by a series of responses \
to the command)? Or is it merely an article?
If it can be considered as data for instruction fine-tuning, please present it in the format of \
User: {{prompt}} Assistant: {{answer}}, where both the prompt and the answer must be extracted \
directly from the text, without any external generation.
-----
Example of a match:
List three ways to reduce food waste at home. 1. Plan meals before shopping. 2. Store produce \
properly. 3. Freeze leftovers you cannot eat within two days.
-----
Example of a non-match:
The harbour town's fish market opened in 1894 and still runs every morning except Sunday, \
when the boats stay in and the square fills with a flea market instead.
-----
Document:
{document}

Please directly answer with "Yes" or "No" before providing the reasoning."""

CONVERSATIONAL_PROMPT = """\
Does the following text contain any form of dialogue?
-----
Example of a match:
"Are you coming to the meeting?" she asked. "Only if it finishes before six," he said.
-----
Example of a non-match:
The bridge was closed for repairs for most of the summer, and traffic was sent along the river \
road instead.
-----
Document:
{document}

Please directly answer with "Yes" or "No" before providing the reasoning."""

CHECKS = {"instructional": INSTRUCTIONAL_PROMPT, "conversational": CONVERSATIONAL_PROMPT}


def uppercase_mismatch(completion: str, reference: str) -> bool:
    """The completion starts with an uppercase letter where the true continuation does not."""
    c, r = completion.lstrip(), reference.lstrip()
    return bool(c) and c[0].isupper() and not (r and r[0].isupper())


def parse_verdict(answer: str) -> bool | None:
    """ "Yes"/"No" as the first word (quotes, markdown and punctuation ignored); None otherwise."""
    words = answer.strip().lstrip("*\"'`#> ").split(maxsplit=1)
    first = words[0].strip("*\"'`.,:;!").lower() if words else ""
    return {"yes": True, "no": False}.get(first)


JUDGE_BATCHES = "judge_batches.json"


def run_filter(cfg: FilterConfig, *, progress: bool = True) -> dict[str, Any]:
    """Filter `cfg.src` into `cfg.out`; returns the report (also written as filter_report.*)."""
    out = Path(cfg.out)
    pending = BatchLedger.load(out, JUDGE_BATCHES).pending()
    if pending and not (cfg.judge and cfg.judge.batch):
        raise ValueError(
            f"`--out` {out} has {len(pending)} judge batch(es) still pending; re-run with "
            f"`--judge-batch` to collect them (deleting {out / JUDGE_BATCHES} abandons them)"
        )
    with DirLock(out):
        rows = read_rows(cfg.src)
        verdicts = asyncio.run(_judge_all(cfg, rows, out, progress)) if cfg.judge else {}
        kept, report = _apply(cfg, rows, verdicts)
        # Rewrite the output whole: it is a pure function of the source and the verdicts. Until
        # it is, the manifest says so (a kill or a full disk leaves "running", never "complete").
        manifest = {"status": "running", "config": cfg.public_dict()}
        write_json_atomic(out / "manifest.json", manifest)
        if (out / "shards").exists():
            shutil.rmtree(out / "shards")
        writer = ShardWriter(out, rows_per_shard=1000)
        for row in kept:
            writer.add(row)
        writer.flush()
        write_json_atomic(out / "filter_report.json", report)
        write_text_atomic(out / "filter_report.md", render_table(report))
        write_json_atomic(
            out / "manifest.json",
            {
                "status": "complete" if report["unjudged"] == 0 else "incomplete",
                "config": cfg.public_dict(),
                "teacher": rows[0]["teacher"] if rows else None,
                "counts": {"done": len(kept), "source_rows": len(rows), "failed": 0},
            },
        )
    return report


def _apply(cfg: FilterConfig, rows: list[dict], verdicts: dict) -> tuple[list[dict], dict]:
    kept, dropped_upper = [], 0
    judged = {"instructional": [0, 0], "conversational": [0, 0]}  # [yes, judged]
    unparsable = unjudged = 0
    for row in rows:
        if cfg.uppercase and uppercase_mismatch(row["completion"], row["reference"]):
            dropped_upper += 1
            continue
        drop = False
        for check in CHECKS if cfg.judge else ():
            verdict = verdicts.get((row["id"], check), "missing")
            if verdict == "missing":
                unjudged += 1
                continue
            if verdict is None:
                unparsable += 1
                continue
            judged[check][1] += 1
            judged[check][0] += int(verdict)
            if verdict and (
                (check == "instructional" and cfg.drop_instructional)
                or (check == "conversational" and cfg.drop_conversational)
            ):
                drop = True
        if not drop:
            kept.append(row)
    report: dict[str, Any] = {
        "source_rows": len(rows),
        "kept_rows": len(kept),
        "dropped_uppercase": dropped_upper,
        "uppercase_share_pct": round(100 * dropped_upper / max(len(rows), 1), 2),
        "unparsable_verdicts": unparsable,
        "unjudged": unjudged,
    }
    for check, (yes, n) in judged.items():
        if cfg.judge:
            report[f"{check}_pct"] = round(100 * yes / n, 2) if n else None
            report[f"{check}_judged"] = n
    return kept, report


def render_table(report: dict[str, Any]) -> str:
    """The figures in the shape of the paper's Table 8 (plus the uppercase rule)."""

    def pct(key):
        value = report.get(key)
        return "n/a" if value is None else f"{value}%"

    kept = f"{report['kept_rows']} / {report['source_rows']}"
    return "\n".join(
        [
            "| Dataset | Inst. | Conv. | Uppercase-dropped | Kept |",
            "|---|---|---|---|---|",
            f"| {report.get('dataset', 'this data')} | {pct('instructional_pct')} "
            f"| {pct('conversational_pct')} | {report['dropped_uppercase']} "
            f"({report['uppercase_share_pct']}%) | {kept} |",
            "",
        ]
    )


async def _judge_all(cfg: FilterConfig, rows: list[dict], out: Path, progress: bool) -> dict:
    """Verdicts for every (row, check), from the cache or the judge; cached as they arrive."""
    from tqdm import tqdm

    out.mkdir(parents=True, exist_ok=True)
    cache = JsonlCache(out / "judgements.jsonl")
    verdicts = {(rec["id"], rec["check"]): rec["verdict"] for rec in cache.read()}
    upper = cfg.uppercase
    todo = [
        (row, check)
        for row in rows
        if not (upper and uppercase_mismatch(row["completion"], row["reference"]))
        for check in CHECKS
        if (row["id"], check) not in verdicts
    ]
    bar = tqdm(total=len(todo), unit="verdict", desc="nif filter (judge)", disable=not progress)
    stopped: list[str] = []
    with cache.open_for_append() as appender:

        def record(row_id: str, check: str, answer: str) -> None:
            verdict = parse_verdict(answer)
            verdicts[(row_id, check)] = verdict
            appender.append({"id": row_id, "check": check, "verdict": verdict})
            bar.update(1)

        async with make_teacher(cfg.judge) as judge:
            if cfg.judge.batch:
                await _judge_batched(judge, out, todo, record, bar, stopped)
            else:
                await _judge_live(judge, todo, record, bar, stopped)
    bar.close()
    if stopped:
        raise RunStopped(f"the judge stopped the filter: {stopped[0]}; verdicts so far are kept")
    return verdicts


def _document(row: dict) -> str:
    return row["prompt"] + row["completion"]


async def _judge_live(judge, todo: list, record, bar, stopped: list[str]) -> None:
    stop = await fan_out(
        judge,
        todo,
        lambda item: CHECKS[item[1]].format(document=_document(item[0])),
        lambda item, answer: record(item[0]["id"], item[1], answer.text),
        lambda item, err: bar.update(1),  # unjudged; the next run asks again
        concurrency=judge.cfg.concurrency,
    )
    if stop is not None:
        stopped.append(str(stop))


async def _judge_batched(judge, out: Path, todo: list, record, bar, stopped: list[str]) -> None:
    """The questions through the provider's batch API (`--judge-batch`), half the price; the
    batches are recorded in OUT/judge_batches.json, so a stopped filter collects them later."""
    items = {
        f"{check}\t{row['id']}": CHECKS[check].format(document=_document(row))
        for row, check in todo
    }

    def on_answer(key: str, answer) -> None:
        check, row_id = key.split("\t", 1)
        record(row_id, check, answer.text)

    try:
        await run_batches(
            judge,
            BatchLedger.load(out, JUDGE_BATCHES),
            items,
            on_answer=on_answer,
            on_error=lambda key, reason: bar.update(1),  # unjudged; the next run asks again
            on_status=lambda text: bar.set_postfix_str(text, refresh=True),
        )
    except (RequestFailed, RunStopped) as err:
        stopped.append(f"{err} (every batch sent is recorded: re-run to collect them)")
