"""`nif filter`: the uppercase rule, the LLM judge through the teacher client (verdicts parsed,
unparsable counted, cached so an interrupted filter resumes), and the Table 8 report."""

from __future__ import annotations

import json

from data_gen.filter import (
    CONVERSATIONAL_PROMPT,
    INSTRUCTIONAL_PROMPT,
    parse_verdict,
    uppercase_mismatch,
)
from data_gen.shards import ShardWriter, read_rows
from fake_provider import FakeTeacherServer
from nif_lightning.cli import main


def _nif(argv: list[str]) -> int:
    """`nif ...` as the entry point runs it (errors mapped to exit codes in one place)."""
    return main(argv)


def _dataset(folder, rows):
    writer = ShardWriter(folder, rows_per_shard=100)
    for r in rows:
        writer.add(
            {"teacher": "t", "finish_reason": "stop", "prompt_tokens": 1, "completion_tokens": 1}
            | r
        )
    writer.flush()


ROWS = [
    # (a) completion starts uppercase, the true continuation does not: dropped by the rule.
    {
        "id": "up",
        "prompt": "The cat sat",
        "completion": " Here is a summary.",
        "reference": " on the mat.",
    },
    # both uppercase: kept by the rule
    {
        "id": "both",
        "prompt": "It rained.",
        "completion": " The sun came out.",
        "reference": " Then it stopped.",
    },
    {
        "id": "talk",
        "prompt": "She said",
        "completion": ' "hello," he replied.',
        "reference": " hello.",
    },
    {
        "id": "howto",
        "prompt": "List steps",
        "completion": " 1. mix 2. bake",
        "reference": " for bread.",
    },
    {"id": "odd", "prompt": "Weird", "completion": " text here", "reference": " text."},
    {
        "id": "plain",
        "prompt": "Rivers flow",
        "completion": " to the sea.",
        "reference": " downhill.",
    },
]


def _judge(prompt: str) -> str:
    doc = prompt.split("Document:\n", 1)[1]
    if "Weird" in doc:
        return "Maybe, it is hard to say."  # unparsable: counted, not crashing
    if prompt.startswith(CONVERSATIONAL_PROMPT[:40]):
        return "Yes. There is dialogue." if "replied" in doc else "No, it is prose."
    assert prompt.startswith(INSTRUCTIONAL_PROMPT[:40])
    return "**Yes** - a list of steps." if "1. mix" in doc else "No."


def test_rules_and_verdict_parsing():
    assert uppercase_mismatch(" Here", " on")
    assert not uppercase_mismatch(" Here", " On") and not uppercase_mismatch(" here", " on")
    assert not uppercase_mismatch("", " on")
    assert parse_verdict("Yes, because") is True and parse_verdict('"No." it is') is False
    assert parse_verdict("**YES**") is True and parse_verdict("Maybe") is None
    assert parse_verdict("") is None


def test_uppercase_filter_without_a_judge(tmp_path):
    _dataset(tmp_path / "d", ROWS)
    assert _nif(["filter", str(tmp_path / "d"), "--out", str(tmp_path / "f"), "--quiet"]) == 0
    assert [r["id"] for r in read_rows(tmp_path / "f")] == [r["id"] for r in ROWS[1:]]
    report = json.loads((tmp_path / "f" / "filter_report.json").read_text())
    assert report["dropped_uppercase"] == 1 and report["kept_rows"] == 5
    assert "instructional_pct" not in report


def test_judge_filter_reports_table8_and_resumes_from_cached_verdicts(tmp_path, capsys):
    _dataset(tmp_path / "d", ROWS)
    out = tmp_path / "f"
    argv = [
        "filter",
        str(tmp_path / "d"),
        "--out",
        str(out),
        "--quiet",
        "--judge-teacher",
        "openai",
        "--judge-model",
        "judge",
        "--judge-backoff",
        "0.01",
    ]
    # The judge's account runs dry after 4 verdicts: the filter stops, keeping them.
    with FakeTeacherServer(reply_fn=_judge, spend_limit_after=4) as server:
        assert _nif([*argv, "--judge-base-url", server.url, "--judge-concurrency", "1"]) == 3
    assert "quota" in capsys.readouterr().err
    cached = (out / "judgements.jsonl").read_text().splitlines()
    assert len(cached) == 4
    # 5 rows pass the uppercase rule, 2 checks each = 10 verdicts; the rerun asks only for 6.
    with FakeTeacherServer(reply_fn=_judge) as server:
        assert _nif([*argv, "--judge-base-url", server.url]) == 0
        assert server.requests == 6
    kept = [r["id"] for r in read_rows(out)]
    assert kept == ["both", "odd", "plain"]  # talk: dialogue, howto: instructional
    report = json.loads((out / "filter_report.json").read_text())
    assert report["unparsable_verdicts"] == 2
    assert report["instructional_judged"] == 4 and report["instructional_pct"] == 25.0
    assert report["conversational_judged"] == 4 and report["conversational_pct"] == 25.0
    table = (out / "filter_report.md").read_text()
    assert (
        "| Dataset | Inst. | Conv. |" in table and "| 25.0% | 25.0% | 1 (16.67%) | 3 / 6 |" in table
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["done"] == 3 and manifest["status"] == "complete"


def test_a_verdict_line_cut_by_a_kill_is_not_glued_to_the_next(tmp_path):
    _dataset(tmp_path / "d", ROWS[1:3])
    out = tmp_path / "f"
    out.mkdir()
    # One good cached verdict, then a line a kill cut short.
    (out / "judgements.jsonl").write_text(
        '{"id": "both", "check": "instructional", "verdict": false}\n{"id": "talk", "che'
    )
    argv = [
        "filter",
        str(tmp_path / "d"),
        "--out",
        str(out),
        "--quiet",
        "--judge-teacher",
        "openai",
        "--judge-model",
        "judge",
    ]
    with FakeTeacherServer(reply_fn=_judge) as server:
        assert _nif([*argv, "--judge-base-url", server.url]) == 0
        assert server.requests == 3  # 4 verdicts needed, 1 cached
    lines = (out / "judgements.jsonl").read_text().splitlines()
    assert len([line for line in lines if line.endswith("}")]) == 4
    # A second run finds every verdict readable: nothing is asked again.
    with FakeTeacherServer(reply_fn=_judge) as server:
        assert _nif([*argv, "--judge-base-url", server.url]) == 0
        assert server.requests == 0


def test_judge_through_the_batch_api_gives_the_live_verdicts(tmp_path):
    _dataset(tmp_path / "d", ROWS)
    out = tmp_path / "f"
    argv = ["filter", str(tmp_path / "d"), "--out", str(out), "--quiet"]
    argv += ["--judge-teacher", "anthropic", "--judge-model", "judge", "--judge-backoff", "0.01"]
    argv += ["--judge-batch", "--judge-batch-size", "4", "--judge-poll-seconds", "0.01"]
    # Every 3rd question of a batch expires: those rows stay unjudged (exit 1), the rest cached.
    with FakeTeacherServer(reply_fn=_judge, batch_expire_every=3, batch_polls=1) as server:
        assert _nif([*argv, "--judge-base-url", server.url]) == 1
        assert server.requests == 0 and server.batches_created == 3  # 10 questions: 4 + 4 + 2
    assert len((out / "judgements.jsonl").read_text().splitlines()) == 8  # 2 expired
    # The re-run asks again for the unjudged questions only.
    with FakeTeacherServer(reply_fn=_judge) as server:
        assert _nif([*argv, "--judge-base-url", server.url]) == 0
        assert server.batches_created == 1 and server.requests == 0  # the 2 unjudged only
        assert sum(server.successes.values()) == 2
    assert [r["id"] for r in read_rows(out)] == ["both", "odd", "plain"]  # as the live judge
    report = json.loads((out / "filter_report.json").read_text())
    assert report["instructional_pct"] == 25.0 and report["conversational_pct"] == 25.0


def test_a_live_filter_is_refused_while_judge_batches_pend(tmp_path, capsys):
    from data_gen.llm.batch import BatchLedger, BatchRecord

    _dataset(tmp_path / "d", ROWS)
    out = tmp_path / "f"
    out.mkdir()
    ledger = BatchLedger.load(out, "judge_batches.json")
    ledger.batches.append(BatchRecord("msgbatch_7", ["instructional\tplain"]))
    ledger.save()
    argv = ["filter", str(tmp_path / "d"), "--out", str(out), "--quiet"]
    argv += ["--judge-teacher", "openai", "--judge-model", "j", "--judge-base-url", "http://x"]
    assert _nif(argv) == 2
    assert "1 judge batch(es) still pending" in capsys.readouterr().err
