"""The LLM judge against a local judge server: grades, pairwise win rate in both orders,
unparsable verdicts counted, and resume after the judge dies mid-run (requests counted at the
server)."""

import threading

import pytest

from data_gen.llm import RunStopped, TeacherConfig
from fake_provider import FakeTeacherServer
from nif_lightning.evaluation import DATA_DIR
from nif_lightning.evaluation.judge import (
    grade_single,
    load_answers,
    load_questions,
    pairwise,
    parse_pair,
    parse_rating,
)

QUESTIONS = load_questions(DATA_DIR / "mt_questions.jsonl")  # 8 questions, 2 turns each
N = len(QUESTIONS)


def _answers(tag: str) -> dict[str, list[str]]:
    return {
        str(q["question_id"]): [f"{tag} one {q['question_id']}", f"{tag} two"] for q in QUESTIONS
    }


def _cfg(server, **kw) -> TeacherConfig:
    base = dict(kind="openai", model="judge-test", base_urls=(server.url,), concurrency=4)
    return TeacherConfig(**{**base, "max_retries": 0, "timeout": 10.0, **kw})


def _grader(prompt: str) -> str:
    # Turn-2 prompts quote the whole conversation; grade them lower so the means differ.
    return "Fine work.\n[[4]]" if "[User, turn 2]" in prompt else "Good.\nRating: [[8]]"


def test_parsers():
    assert parse_rating("ok [[7]] then [[9.5]]") == 9.5
    assert parse_rating("[[ 3 ]]") == 3.0
    assert parse_rating("[[11]]") is None and parse_rating("eight") is None
    assert parse_pair("B is better. [[B>A]]") == "B>A"
    assert parse_pair("[[A>>B]]") == "A>>B"
    assert parse_pair("A is better") is None and parse_pair("[[A>C]]") is None


def test_single_grades_and_cache(tmp_path):
    cache = tmp_path / "verdicts.jsonl"
    with FakeTeacherServer(reply_fn=_grader) as server:
        got = grade_single(_cfg(server), QUESTIONS, _answers("m"), cache)
        assert server.requests == 2 * N
        again = grade_single(_cfg(server), QUESTIONS, _answers("m"), cache)
        assert server.requests == 2 * N  # everything came from the cache
        changed = _answers("m")
        changed["3"][1] = "a different second answer"
        grade_single(_cfg(server), QUESTIONS, changed, cache)
        assert server.requests == 2 * N + 1  # only the changed answer is judged afresh
    assert got == again
    assert got["turn_1"] == 8.0 and got["turn_2"] == 4.0 and got["score"] == 6.0
    assert got["graded"] == 2 * N and got["unparsable"] == 0 and got["unjudged"] == 0
    assert got["per_category"]["math"] == 6.0


def test_unparsable_verdicts_are_counted_not_fatal(tmp_path):
    def judge(prompt: str) -> str:
        # Question 1 and 2 answers get a reply with no verdict in it.
        return "I cannot decide." if ("m one 1" in prompt or "m one 2" in prompt) else "[[6]]"

    with FakeTeacherServer(reply_fn=judge) as server:
        got = grade_single(_cfg(server), QUESTIONS, _answers("m"), tmp_path / "v.jsonl")
    # Questions 1 and 2: turn 1 and turn 2 prompts both quote the turn-1 answer.
    assert got["unparsable"] == 4
    assert got["graded"] == 2 * N - 4
    assert got["score"] == 6.0


def test_pairwise_both_orders(tmp_path):
    def prefers_good(prompt: str) -> str:
        a = prompt.split("[Answer A]")[1].split("[Answer B]")[0]
        return "[[A>B]]" if "GOOD" in a else "[[B>>A]]"

    def always_first(prompt: str) -> str:
        return "The first one. [[A>B]]"

    model, base = _answers("GOOD"), _answers("meh")
    with FakeTeacherServer(reply_fn=prefers_good) as server:
        got = pairwise(_cfg(server), QUESTIONS, model, base, tmp_path / "p1.jsonl")
        assert server.requests == 2 * N  # one game per order per question
    assert got["win_rate"] == 100.0 and got["wins"] == 2 * N and got["games"] == 2 * N
    assert got["order_inconsistent_questions"] == 0

    with FakeTeacherServer(reply_fn=always_first) as server:
        biased = pairwise(_cfg(server), QUESTIONS, model, base, tmp_path / "p2.jsonl")
    # A judge that always picks the first answer cancels out over the two orders.
    assert biased["win_rate"] == 50.0 and biased["wins"] == N and biased["losses"] == N
    assert biased["order_inconsistent_questions"] == N


def test_pairwise_unparsable_and_missing_baseline(tmp_path):
    with FakeTeacherServer(reply_fn=lambda p: "[[A=B]]" if "one 1" in p else "no idea") as server:
        got = pairwise(_cfg(server), QUESTIONS, _answers("x"), _answers("y"), tmp_path / "p.jsonl")
    assert got["ties"] == 2 and got["games"] == 2 and got["win_rate"] == 50.0
    assert got["unparsable"] == 2 * N - 2
    short = _answers("y")
    del short["5"]
    with pytest.raises(ValueError, match=r"baseline answers lack question id\(s\) \['5'\]"):
        pairwise(_cfg(server), QUESTIONS, _answers("x"), short, tmp_path / "p.jsonl")


def test_judge_dies_mid_run_and_rerun_asks_only_the_missing(tmp_path):
    cache = tmp_path / "verdicts.jsonl"
    lock, served = threading.Lock(), [0]

    def dying(prompt: str) -> str:
        with lock:
            served[0] += 1
            if served[0] > 5:
                raise RuntimeError("judge process gone")  # the server answers 500 from now on
        return _grader(prompt)

    with FakeTeacherServer(reply_fn=dying) as server:
        first = grade_single(_cfg(server), QUESTIONS, _answers("m"), cache)
    assert first["graded"] == 5 and first["unjudged"] == 2 * N - 5
    with FakeTeacherServer(reply_fn=_grader) as server:
        second = grade_single(_cfg(server), QUESTIONS, _answers("m"), cache)
        assert server.requests == 2 * N - 5  # only the missing verdicts
    assert second["graded"] == 2 * N and second["unjudged"] == 0 and second["score"] == 6.0


def test_spend_limit_stops_and_keeps_verdicts(tmp_path):
    cache = tmp_path / "verdicts.jsonl"
    server = FakeTeacherServer(reply_fn=_grader, spend_limit_after=3)
    with server, pytest.raises(RunStopped, match="verdicts so far kept"):
        grade_single(_cfg(server, concurrency=1), QUESTIONS, _answers("m"), cache)
    assert len(cache.read_text().splitlines()) == 3
    with FakeTeacherServer(reply_fn=_grader) as server:
        got = grade_single(_cfg(server), QUESTIONS, _answers("m"), cache)
        assert server.requests == 2 * N - 3
    assert got["graded"] == 2 * N


def test_load_answers_and_bad_question_file(tmp_path):
    path = tmp_path / "answers.jsonl"
    path.write_text(
        '{"id": "1", "turn": 0, "answer": "a"}\n{"id": "1", "turn": 1, "answer": "b"}\n'
        '{"id": "2", "turn": 1, "answer": "orphan"}\n{"id": "3", "tu',
        encoding="utf-8",
    )
    assert load_answers(path) == {"1": ["a", "b"]}
    bad = tmp_path / "q.jsonl"
    bad.write_text('{"question_id": 1, "turns": []}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="q.jsonl:1: needs `question_id` and a non-empty"):
        load_questions(bad)


def test_bootstrap_interval_of_the_win_rate():
    from nif_lightning.evaluation.judge import bootstrap_ci

    assert bootstrap_ci([1.0]) is None  # one question: no interval
    assert bootstrap_ci([1.0] * 20) == [100.0, 100.0]
    low, high = bootstrap_ci([1.0, 0.0] * 20)  # 40 questions, half won
    assert low < 50.0 < high and 10.0 < high - low < 40.0  # about +-15 points
    assert bootstrap_ci([1.0, 0.0] * 20) == [low, high]  # seeded: the same every time
    narrow = bootstrap_ci([1.0, 0.0] * 200)
    assert narrow[1] - narrow[0] < (high - low) / 2  # 10x the questions, ~1/3 the width
