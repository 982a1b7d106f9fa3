"""LLM-judge evaluation: MT-Bench-style single-answer grades and Arena-Hard-style win rates.

Single grading: the judge reads a question (and, for turn 2, the whole two-turn conversation)
and the model's answer, and ends its reply with a rating `[[1..10]]`. The MT-Bench score is the
mean over every graded turn.

Pairwise: the judge compares the model's answer with a baseline model's answer to the same
question and ends with `[[A>>B]]`, `[[A>B]]`, `[[A=B]]`, `[[B>A]]` or `[[B>>A]]`. Judges favour
whichever answer comes first, so every question is judged twice, once in each order, and both
games count; the win rate is (wins + ties / 2) / games, from the model's side, with a 95%
bootstrap interval over questions.

The judge is reached through the teacher client of `nif gen` (`data_gen.llm`): any
OpenAI-compatible or Anthropic endpoint, with its retries and rate limits. Each verdict is
appended to a jsonl cache as it arrives, keyed by a hash of the judge's name and the exact
prompt, so an interrupted evaluation resumes without paying twice, and changed answers are
judged afresh. A reply without a parsable verdict is cached and counted as `unparsable` (asking
again at temperature 0 would give the same reply); a request that fails is `unjudged` and is
asked again by the next run.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import random
import re
from pathlib import Path
from typing import Any

from data_gen.store import JsonlCache

# Our own wording of the two judge tasks (the benchmarks' prompts are not copied).
_JUDGE_SYSTEM = "You are a careful, impartial judge of answers written by AI assistants."

_SINGLE = """\
Judge the quality of the assistant's answer to the user's question below. Consider whether it
is helpful, correct, relevant, detailed where detail helps, and clearly written. Explain your
judgement in a few sentences, then give a rating from 1 (useless) to 10 (excellent) in exactly
this form on the last line: [[rating]], for example [[6]].

[Question]
{question}

[Assistant's answer]
{answer}
"""

_SINGLE_TURN2 = """\
Below is a two-turn conversation between a user and an AI assistant. Judge ONLY the assistant's
second answer, in the light of the whole conversation. Consider whether it is helpful, correct,
relevant and clearly written. Explain your judgement in a few sentences, then give a rating from
1 (useless) to 10 (excellent) in exactly this form on the last line: [[rating]], e.g. [[6]].

[User, turn 1]
{q1}

[Assistant, turn 1]
{a1}

[User, turn 2]
{q2}

[Assistant, turn 2]
{a2}
"""

_PAIR = """\
Compare two AI assistants' answers to the user's question below. Decide which answer is more
helpful, correct, relevant and clearly written; the order in which they appear must not matter,
nor their length alone. Explain briefly, then end with exactly one verdict on the last line:
[[A>>B]] A is much better, [[A>B]] A is better, [[A=B]] tie, [[B>A]] B is better,
[[B>>A]] B is much better.

[Question]
{question}

[Answer A]
{a}

[Answer B]
{b}
"""

_RATING = re.compile(r"\[\[\s*(\d+(?:\.\d+)?)\s*\]\]")
_PAIR_VERDICT = re.compile(r"\[\[\s*(A>>B|A>B|A=B|B>A|B>>A)\s*\]\]")
_PAIR_SCORE = {"A>>B": 1.0, "A>B": 1.0, "A=B": 0.5, "B>A": 0.0, "B>>A": 0.0}  # for answer A


def parse_rating(reply: str) -> float | None:
    """The last `[[x]]` rating in 1..10, or None when there is none (or it is out of range)."""
    found = _RATING.findall(reply)
    if not found:
        return None
    value = float(found[-1])
    return value if 1.0 <= value <= 10.0 else None


def parse_pair(reply: str) -> str | None:
    """The last `[[A>B]]`-style verdict, or None."""
    found = _PAIR_VERDICT.findall(reply)
    return found[-1] if found else None


def _judge_cfg(cfg):
    # The teacher client's own default system prompt (anthropic: "continue the sentence") is the
    # wrong job for a judge; an explicit `--judge-system-prompt` still wins.
    if cfg.system_prompt is None:
        return dataclasses.replace(cfg, system_prompt=_JUDGE_SYSTEM)
    return cfg


def _key(judge_name: str, prompt: str) -> str:
    return hashlib.sha256(f"{judge_name}\0{prompt}".encode()).hexdigest()[:32]


def _read_cache(path: Path) -> dict[str, dict]:
    """Cache key -> verdict record; a line cut short by a kill is ignored."""
    return {rec["key"]: rec for rec in JsonlCache(path).read()}


async def _ask_all(cfg, jobs: dict[str, tuple[str, str]], cache_path: Path, parse) -> dict:
    """`jobs`: label -> (kind, prompt). Returns label -> cached record (absent = unjudged)."""
    from data_gen.llm import RunStopped, fan_out, make_teacher

    cfg = _judge_cfg(cfg)
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    cached = _read_cache(cache_path)
    async with make_teacher(cfg) as judge:
        keys = {label: _key(judge.name, prompt) for label, (_, prompt) in jobs.items()}
        todo = [label for label in jobs if keys[label] not in cached]
        with JsonlCache(cache_path).open_for_append() as cache:

            def keep(label: str, reply) -> None:
                rec = {
                    "key": keys[label],
                    "label": label,
                    "kind": jobs[label][0],
                    "verdict": parse(reply.text),
                    "reply": reply.text[-2000:],  # the end holds the verdict
                }
                cached[rec["key"]] = rec
                cache.append(rec)

            # A failed question stays unjudged (on_error's default): the next run asks again.
            stop = await fan_out(
                judge, todo, lambda label: jobs[label][1], keep, concurrency=cfg.concurrency
            )
    if stop is not None:
        raise RunStopped(f"the judge stopped the evaluation: {stop}; verdicts so far kept")
    return {label: cached[keys[label]] for label in jobs if keys[label] in cached}


def grade_single(
    judge_cfg,
    questions: list[dict[str, Any]],
    answers: dict[str, list[str]],
    cache_path: str | Path,
) -> dict[str, Any]:
    """MT-Bench-style grades of every turn. `questions`: MT-Bench records (`question_id`,
    `category`, `turns`); `answers`: question id (str) -> one answer per turn."""
    jobs: dict[str, tuple[str, str]] = {}
    for q in questions:
        qid, turns = str(q["question_id"]), q["turns"]
        got = answers[qid]
        jobs[f"{qid}/1"] = ("single", _SINGLE.format(question=turns[0], answer=got[0]))
        if len(turns) > 1:
            jobs[f"{qid}/2"] = (
                "single",
                _SINGLE_TURN2.format(q1=turns[0], a1=got[0], q2=turns[1], a2=got[1]),
            )
    verdicts = asyncio.run(_ask_all(judge_cfg, jobs, Path(cache_path), parse_rating))
    by_turn: dict[int, list[float]] = {1: [], 2: []}
    by_category: dict[str, list[float]] = {}
    unparsable = 0
    category = {str(q["question_id"]): q.get("category", "") for q in questions}
    for label, rec in verdicts.items():
        if rec["verdict"] is None:
            unparsable += 1
            continue
        qid, turn = label.rsplit("/", 1)
        by_turn[int(turn)].append(rec["verdict"])
        by_category.setdefault(category[qid], []).append(rec["verdict"])

    def mean(xs: list[float]) -> float | None:
        return round(sum(xs) / len(xs), 3) if xs else None

    return {
        "score": mean(by_turn[1] + by_turn[2]),
        "turn_1": mean(by_turn[1]),
        "turn_2": mean(by_turn[2]),
        "per_category": {c: mean(v) for c, v in sorted(by_category.items())},
        "graded": len(by_turn[1]) + len(by_turn[2]),
        "unparsable": unparsable,
        "unjudged": len(jobs) - len(verdicts),
        "asked": len(jobs),
    }


def pairwise(
    judge_cfg,
    questions: list[dict[str, Any]],
    answers: dict[str, list[str]],
    baseline: dict[str, list[str]],
    cache_path: str | Path,
) -> dict[str, Any]:
    """Arena-Hard-style win rate (%) of `answers` against `baseline` on each question's first
    turn, judged in both orders."""
    missing = [str(q["question_id"]) for q in questions if str(q["question_id"]) not in baseline]
    if missing:
        raise ValueError(f"the baseline answers lack question id(s) {missing[:5]}")
    jobs: dict[str, tuple[str, str]] = {}
    for q in questions:
        qid, question = str(q["question_id"]), q["turns"][0]
        ours, theirs = answers[qid][0], baseline[qid][0]
        jobs[f"{qid}/model-first"] = ("pair", _PAIR.format(question=question, a=ours, b=theirs))
        jobs[f"{qid}/baseline-first"] = ("pair", _PAIR.format(question=question, a=theirs, b=ours))
    verdicts = asyncio.run(_ask_all(judge_cfg, jobs, Path(cache_path), parse_pair))
    wins = ties = losses = unparsable = inconsistent = 0
    per_question: dict[str, list[float]] = {}
    for label, rec in verdicts.items():
        if rec["verdict"] is None:
            unparsable += 1
            continue
        qid, order = label.rsplit("/", 1)
        a_score = _PAIR_SCORE[rec["verdict"]]
        ours = a_score if order == "model-first" else 1.0 - a_score
        per_question.setdefault(qid, []).append(ours)
        wins += ours == 1.0
        ties += ours == 0.5
        losses += ours == 0.0
    for scores in per_question.values():
        # Both orders answered and they disagree on who won: the judge followed position.
        inconsistent += len(scores) == 2 and scores[0] != scores[1]
    games = wins + ties + losses
    question_scores = [sum(s) / len(s) for s in per_question.values()]
    return {
        "win_rate": round(100.0 * (wins + 0.5 * ties) / games, 2) if games else None,
        "win_rate_ci95": bootstrap_ci(question_scores),
        "wins": wins,
        "ties": ties,
        "losses": losses,
        "games": games,
        "order_inconsistent_questions": inconsistent,
        "unparsable": unparsable,
        "unjudged": len(jobs) - len(verdicts),
        "asked": len(jobs),
    }


def bootstrap_ci(scores: list[float], *, rounds: int = 2000, seed: int = 0) -> list[float] | None:
    """95% interval (in %) of the mean of per-question scores, resampling questions with
    replacement as Arena-Hard does; None for fewer than two questions."""
    if len(scores) < 2:
        return None
    rng = random.Random(seed)
    n = len(scores)
    means = sorted(sum(rng.choices(scores, k=n)) / n for _ in range(rounds))
    low, high = means[int(0.025 * rounds)], means[int(0.975 * rounds) - 1]
    return [round(100.0 * low, 2), round(100.0 * high, 2)]


def load_questions(path: str | Path) -> list[dict[str, Any]]:
    """Read an MT-Bench-format jsonl file (`question_id`, `category`, `turns`)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"question file {str(path)!r} does not exist")
    out, seen = [], set()
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{n}: not valid JSON ({err.msg})") from None
        turns = rec.get("turns")
        if "question_id" not in rec or not isinstance(turns, list) or not turns:
            raise ValueError(f"{path}:{n}: needs `question_id` and a non-empty list `turns`")
        if not all(isinstance(t, str) and t.strip() for t in turns):
            raise ValueError(f"{path}:{n}: every turn must be a non-empty string")
        if str(rec["question_id"]) in seen:
            raise ValueError(f"{path}:{n}: question_id {rec['question_id']!r} repeats")
        seen.add(str(rec["question_id"]))
        out.append(rec)
    if not out:
        raise ValueError(f"question file {str(path)!r} holds no questions")
    return out


def load_answers(path: str | Path) -> dict[str, list[str]]:
    """Answers cached by `answers.generate_answers` (id -> one answer per turn), e.g. a
    baseline model's `answers.jsonl`."""
    from nif_lightning.evaluation.answers import read_cache

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"answer file {str(path)!r} does not exist")
    done = read_cache(path)
    out: dict[str, list[str]] = {}
    for (qid, turn), answer in sorted(done.items(), key=lambda kv: kv[0][1]):
        if turn != len(out.get(qid, [])):
            continue  # a later turn without its earlier one: unusable
        out.setdefault(qid, []).append(answer)
    return out
