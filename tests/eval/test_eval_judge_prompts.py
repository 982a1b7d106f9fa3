"""Judge fidelity: a judge prompt file in FastChat's `judge_prompts.jsonl` format (a stand-in
written here, same fields and names, our own text), its reference-answer variants, verdicts read
the way FastChat reads them, and the Arena-Hard score (Bradley-Terry over the two-order games,
bootstrap interval) checked against an independent logistic-regression fit."""

import json
import math
import random

import pytest

from data_gen.llm import TeacherConfig
from fake_provider import FakeTeacherServer
from nif_lightning.cli import main
from nif_lightning.evaluation import DATA_DIR
from nif_lightning.evaluation.judge import (
    ARENA_HARD_WEIGHT,
    arena_hard_score,
    bradley_terry,
    grade_single,
    load_judge_prompts,
    load_questions,
    load_reference_answers,
    pairwise,
    parse_pair_fastchat,
    parse_rating_fastchat,
    parse_two_ratings_fastchat,
    plan_prompts,
)

QUESTIONS = load_questions(DATA_DIR / "mt_questions.jsonl")  # 8 questions, 2 turns, 8 categories
N = len(QUESTIONS)
REF_IDS = {
    str(q["question_id"]) for q in QUESTIONS if q["category"] in ("math", "reasoning", "coding")
}

# A stand-in of FastChat's file: the same record names, fields and placeholders; our own words.
_RECORDS = [
    ("single-v1", "single", "SYS-SINGLE", "G1 Q={question} A={answer}", "[[rating]]"),
    (
        "single-v1-multi-turn",
        "single",
        "SYS-SINGLE-MT",
        "G2 Q1={question_1} A1={answer_1} Q2={question_2} A2={answer_2}",
        "[[rating]]",
    ),
    (
        "single-math-v1",
        "single",
        "SYS-SINGLE",
        "M1 Q={question} REF={ref_answer_1} A={answer}",
        "[[rating]]",
    ),
    (
        "single-math-v1-multi-turn",
        "single",
        "SYS-SINGLE-MT",
        "M2 Q1={question_1} R1={ref_answer_1} Q2={question_2} R2={ref_answer_2} "
        "A1={answer_1} A2={answer_2}",
        "[[rating]]",
    ),
    ("pair-v2", "pairwise", "SYS-PAIR", "P Q={question} A=<{answer_a}> B=<{answer_b}>", "[[A]]"),
    (
        "pair-math-v1",
        "pairwise",
        "SYS-PAIR",
        "PM Q={question} REF={ref_answer_1} A=<{answer_a}> B=<{answer_b}>",
        "[[A]]",
    ),
]


def _prompt_file(tmp_path, records=_RECORDS, name="judge_prompts.jsonl"):
    path = tmp_path / name
    lines = [
        {
            "name": n,
            "type": t,
            "system_prompt": sys_,
            "prompt_template": tpl,
            "description": "stand-in",
            "category": "math" if "math" in n else "general",
            "output_format": fmt,
        }
        for n, t, sys_, tpl, fmt in records
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")
    return path


def _reference_file(tmp_path):
    path = tmp_path / "gpt-4.jsonl"
    rows = [
        {
            "question_id": int(qid),
            "model_id": "ref",
            "choices": [{"index": 0, "turns": [f"ref{qid}a", f"ref{qid}b"]}],
        }
        for qid in sorted(REF_IDS)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _answers(tag: str) -> dict[str, list[str]]:
    return {str(q["question_id"]): [f"{tag}-1-{q['question_id']}", f"{tag}-2"] for q in QUESTIONS}


def _cfg(server) -> TeacherConfig:
    return TeacherConfig(
        kind="openai",
        model="judge-test",
        base_urls=(server.url,),
        concurrency=4,
        max_retries=0,
        timeout=10.0,
    )


def test_fastchat_verdict_readers():
    # FastChat reads the FIRST [[x]] (ours reads the last) and falls back to [x]; no range check.
    assert parse_rating_fastchat("first [[3]] then [[9]]") == 3.0
    assert parse_rating_fastchat("Rating: [7.5]") == 7.5
    assert parse_rating_fastchat("[[11]]") == 11.0
    assert parse_rating_fastchat("no number") is None
    assert parse_pair_fastchat("so [[B]]") == "B>A"
    assert parse_pair_fastchat("[[C]]") == "A=B"
    assert parse_pair_fastchat("[[A]] and [[B]]") == "A>B"  # A is looked for first
    assert parse_pair_fastchat("[[D]]") is None
    assert parse_two_ratings_fastchat("[[7, 7.05]]") == "A=B"
    assert parse_two_ratings_fastchat("[8,3]") == "A>B"
    assert parse_two_ratings_fastchat("[[2,9]]") == "B>A"
    # A leading zero (FastChat's literal_eval raises on it) is a number, never a crash.
    assert parse_rating_fastchat("[[08]]") == 8.0 and parse_rating_fastchat("[[9.]]") == 9.0
    assert parse_two_ratings_fastchat("[[08, 3]]") == "A>B"


def test_single_grades_with_the_prompt_file_and_references(tmp_path):
    prompts = load_judge_prompts(_prompt_file(tmp_path))
    refs = load_reference_answers(_reference_file(tmp_path))

    def judge(prompt: str) -> str:
        # First-turn grades 8, second-turn 4 ([x] fallback), reference-based prompts 2.
        if prompt.startswith("M"):
            return "Compared with the reference.\n[[2]] (and not [[9]])"
        return "ok [[8]]" if prompt.startswith("G1") else "fine. Rating: [4]"

    with FakeTeacherServer(reply_fn=judge) as server:
        got = grade_single(
            _cfg(server),
            QUESTIONS,
            _answers("m"),
            tmp_path / "v.jsonl",
            prompts=prompts,
            references=refs,
        )
        bodies = list(server.bodies)
    assert got["asked"] == got["graded"] == 2 * N and got["unparsable"] == 0
    general = N - len(REF_IDS)
    assert got["turn_1"] == pytest.approx((8 * general + 2 * len(REF_IDS)) / N, abs=1e-3)
    assert got["turn_2"] == pytest.approx((4 * general + 2 * len(REF_IDS)) / N, abs=1e-3)
    assert got["per_category"]["math"] == 2.0 and got["per_category"]["writing"] == 6.0
    assert got["prompts"] == "judge-prompts file"
    # Every request carries its record's system prompt and the filled template.
    seen = {(b["messages"][0]["content"], b["messages"][-1]["content"][:2]) for b in bodies}
    assert seen == {
        ("SYS-SINGLE", "G1"),
        ("SYS-SINGLE-MT", "G2"),
        ("SYS-SINGLE", "M1"),
        ("SYS-SINGLE-MT", "M2"),
    }
    math_q = next(q for q in QUESTIONS if q["category"] == "math")
    qid = str(math_q["question_id"])
    turn2 = [
        b["messages"][-1]["content"]
        for b in bodies
        if b["messages"][-1]["content"].startswith("M2")
    ]
    expected = (
        f"M2 Q1={math_q['turns'][0]} R1=ref{qid}a Q2={math_q['turns'][1]} R2=ref{qid}b "
        f"A1=m-1-{qid} A2=m-2"
    )
    assert expected in turn2


def test_pairwise_with_pair_v2_and_the_arena_hard_score(tmp_path):
    prompts = load_judge_prompts(_prompt_file(tmp_path))
    refs = load_reference_answers(_reference_file(tmp_path))

    def prefers_model(prompt: str) -> str:
        a = prompt.split("A=<", 1)[1].split(">", 1)[0]
        return "[[A]]" if a.startswith("m-") else "[[B]]"

    with FakeTeacherServer(reply_fn=prefers_model) as server:
        got = pairwise(
            _cfg(server),
            QUESTIONS,
            _answers("m"),
            _answers("base"),
            tmp_path / "p.jsonl",
            prompts=prompts,
            references=refs,
        )
        systems = {b["messages"][0]["content"] for b in server.bodies}
        refs_seen = sum("REF=ref" in b["messages"][-1]["content"] for b in server.bodies)
    assert systems == {"SYS-PAIR"}
    assert refs_seen == 2 * len(REF_IDS)  # pair-math-v1 for the reference categories
    assert got["win_rate"] == 100.0 and got["games"] == 2 * N
    # [[A]]-format verdicts are never decisive: one battle per game, all won.
    assert got["arena_hard_battles"] == 2 * N
    assert got["arena_hard_score"] == 100.0 and got["arena_hard_ci95"] == [100.0, 100.0]


def test_decisive_verdicts_weigh_three_in_the_arena_hard_score(tmp_path):
    # Model first: the judge says A>>B (a decisive model win, 3 battles); baseline first: A=B
    # (a tie, 1 battle). Win rate counts games: (N + N/2) / 2N = 75%. Arena-Hard counts battles:
    # (3N + N/2) / 4N = 87.5%.
    def judge(prompt: str) -> str:
        return "[[A>>B]]" if "[Answer A]\nm-" in prompt else "[[A=B]]"

    with FakeTeacherServer(reply_fn=judge) as server:
        got = pairwise(
            _cfg(server), QUESTIONS, _answers("m"), _answers("base"), tmp_path / "p.jsonl"
        )
    assert got["win_rate"] == 75.0
    assert got["arena_hard_battles"] == (ARENA_HARD_WEIGHT + 1) * N
    assert got["arena_hard_score"] == 87.5
    low, high = got["arena_hard_ci95"]
    assert low <= 87.5 <= high and low < high


def _logistic_bt(battles, players):
    """An independent fit, the way Arena-Hard v0.1's compute_mle_elo sets it up: each battle
    twice, a +1/-1 design row, y = 1 for a win of the first player, a tie a win in one copy and
    a loss in the other; unpenalised logistic regression without intercept, by Newton steps."""
    import numpy as np

    rows, ys = [], []
    for i, j, result in battles:
        x = np.zeros(players)
        x[i], x[j] = 1.0, -1.0
        pair = (1.0, 1.0) if result == 1 else (0.0, 0.0) if result == 0 else (1.0, 0.0)
        for y in pair:
            rows.append(x)
            ys.append(y)
    x, y = np.array(rows), np.array(ys)
    beta = np.zeros(players)
    for _ in range(100):
        p = 1 / (1 + np.exp(-x @ beta))
        grad = x.T @ (y - p)
        hess = x.T @ (x * (p * (1 - p))[:, None]) + 1e-12 * np.eye(players)
        beta += np.linalg.lstsq(hess, grad, rcond=None)[0]
    return beta - beta.mean()


def test_bradley_terry_agrees_with_a_logistic_fit():
    rng = random.Random(0)
    truth = [0.0, 0.8, -0.5, 1.5]
    battles = []
    for _ in range(400):
        i, j = rng.sample(range(4), 2)
        p_i = 1 / (1 + math.exp(truth[j] - truth[i]))
        u = rng.random()
        battles.append((i, j, 0.5 if abs(u - p_i) < 0.05 else float(u < p_i)))
    strength = bradley_terry(battles, 4)
    beta = _logistic_bt(battles, 4)
    for i in range(4):
        for j in range(4):
            ours = strength[i] / (strength[i] + strength[j])
            theirs = 1 / (1 + math.exp(beta[j] - beta[i]))
            assert ours == pytest.approx(theirs, abs=1e-6)


def test_arena_hard_score_of_two_players_is_the_battle_win_fraction():
    battles = [1.0] * 7 + [0.5] * 2 + [0.0] * 3
    got = arena_hard_score(battles)
    assert got["arena_hard_score"] == round(100 * 8 / 12, 2)
    assert got == arena_hard_score(battles)  # seeded: the interval is reproducible
    assert arena_hard_score([])["arena_hard_score"] is None
    assert arena_hard_score([0.0, 0.0])["arena_hard_score"] == 0.0


@pytest.mark.parametrize(
    "records, message",
    [
        (_RECORDS[1:], "no record named 'single-v1'"),
        (
            [
                ("single-v1", "single", "s", "{question} {answer} {oops}", "[[rating]]"),
                *_RECORDS[1:],
            ],
            "placeholder(s) ['oops']",
        ),
        ([("single-v1", "single", "s", "{question}", "[[A]]"), *_RECORDS[1:]], "`output_format`"),
        ([("single-v1", "pairwise", "s", "{question}", "[[A]]"), *_RECORDS[1:]], "type 'single'"),
        ([*_RECORDS, _RECORDS[0]], "repeats"),
    ],
)
def test_bad_prompt_files_are_named(tmp_path, records, message):
    with pytest.raises(
        ValueError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")
    ):
        plan_prompts(
            load_judge_prompts(_prompt_file(tmp_path, records)), QUESTIONS, {"x": []}, pairwise=True
        )


def test_reference_categories_need_reference_answers(tmp_path):
    prompts = load_judge_prompts(_prompt_file(tmp_path))
    with pytest.raises(ValueError, match="give `--reference-answers FILE`"):
        plan_prompts(prompts, QUESTIONS, {}, pairwise=False)
    refs = load_reference_answers(_reference_file(tmp_path))
    short = {k: v[:1] for k, v in refs.items()}
    with pytest.raises(ValueError, match="no reference for every turn"):
        plan_prompts(prompts, QUESTIONS, short, pairwise=False)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question_id": 1, "turns": ["x"]}\n')
    with pytest.raises(ValueError, match=r"choices\[0\].turns"):
        load_reference_answers(bad)


def _cli(tiny, out, url, *extra):
    return [
        "eval", str(tiny), "--out", str(out), "--suite", "judge", "--max-new-tokens", "4",
        "--judge-teacher", "openai", "--judge-model", "judge-test", "--judge-base-url", url,
        "--judge-max-retries", "0", *extra,
    ]  # fmt: skip


def test_cli_judge_prompts(tiny, tmp_path, capsys):
    prompt_file = _prompt_file(tmp_path)
    with FakeTeacherServer(reply_fn=lambda p: "[[6]]") as server:
        # Without references the file cannot judge the math questions: refused before any work.
        out = tmp_path / "o1"
        assert main(_cli(tiny, out, server.url, "--judge-prompts", str(prompt_file))) == 2
        assert "--reference-answers" in capsys.readouterr().err
        assert not out.exists() and server.requests == 0
        out = tmp_path / "o2"
        argv = _cli(tiny, out, server.url, "--judge-prompts", str(prompt_file))
        argv += ["--reference-answers", str(_reference_file(tmp_path))]
        assert main(argv) == 0
    judge = json.loads((out / "eval.json").read_text())["suites"]["judge"]
    assert judge["single"]["score"] == 6.0 and judge["single"]["prompts"] == "judge-prompts file"
    assert judge["judge_prompts"] == str(prompt_file)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--reference-answers", "r.jsonl"], "`--reference-answers` goes with `--judge-prompts`"),
        (["--judge-prompts", "p.jsonl", "--judge-system-prompt", "x"], "drop one"),
        (
            ["--judge-prompts", "/no/such.jsonl"],
            "`--judge-prompts` '/no/such.jsonl' does not exist",
        ),
    ],
)
def test_cli_judge_prompt_flags_checked(tiny, tmp_path, capsys, extra, message):
    assert main(_cli(tiny, tmp_path / "o", "http://127.0.0.1:9/v1", *extra)) == 2
    assert message in capsys.readouterr().err
