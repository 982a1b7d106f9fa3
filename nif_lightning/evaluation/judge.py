"""LLM-judge evaluation: MT-Bench-style single-answer grades and Arena-Hard-style win rates.

Single grading: the judge reads a question (and, for turn 2, the whole two-turn conversation)
and the model's answer, and ends its reply with a rating `[[1..10]]`. The MT-Bench score is the
mean over every graded turn.

Pairwise: the judge compares the model's answer with a baseline model's answer to the same
question and ends with `[[A>>B]]`, `[[A>B]]`, `[[A=B]]`, `[[B>A]]` or `[[B>>A]]`. Judges favour
whichever answer comes first, so every question is judged twice, once in each order, and both
games count; the win rate is (wins + ties / 2) / games, from the model's side, with a 95%
bootstrap interval over questions.

The prompts above are our own wording (the benchmarks' texts are not copied into the project), so
these grades are NOT comparable with published MT-Bench numbers (the paper's Tables 1 and 5). For
comparable grades, pass the official prompt file (`--judge-prompts`, FastChat's
`judge_prompts.jsonl`): turn 1 is judged with `single-v1`, turn 2 with `single-v1-multi-turn`,
and questions in FastChat's reference categories (math, reasoning, coding) with the `-math-`
variants against `--reference-answers` (FastChat's answer jsonl); pairwise games use `pair-v2`
(`pair-math-v1`). Each record's system prompt is sent with it and its reply is read the way
FastChat reads its `output_format` (`[[rating]]`: the first `[[x]]`, else the first `[x]`;
`[[A]]`: A, B or C for a tie).

Besides the win rate, the pairwise games give the Arena-Hard score the way Arena-Hard v0.1's
`show_result.py` computes it: every game is a battle (a decisive `>>` verdict counts 3 times,
a tie half a win to each side), a Bradley-Terry model is fitted to the battles, and the score is
the model's predicted win rate against the baseline, with a 95% interval from 100 bootstrap
resamples of the battles.

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
import random
import re
import string
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from data_gen.store import JsonlCache, read_jsonl_records

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


# ---------------------------------------------------------------------------------------------
# A judge prompt file in FastChat's format (`--judge-prompts`)

NEED_REF_CATEGORIES = ("math", "reasoning", "coding")
"""MT-Bench categories judged against a reference answer (FastChat's `NEED_REF_CATS`)."""

_PROMPT_KEYS = ("name", "type", "system_prompt", "prompt_template", "output_format")
_OUTPUT_FORMATS = {"single": ("[[rating]]",), "pairwise": ("[[A]]", "[[rating_a,rating_b]]")}

# role -> (record name, the placeholders we fill)
_ROLES: dict[str, tuple[str, frozenset[str]]] = {
    "single": ("single-v1", frozenset({"question", "answer"})),
    "single-turn2": (
        "single-v1-multi-turn",
        frozenset({"question_1", "answer_1", "question_2", "answer_2"}),
    ),
    "single-ref": ("single-math-v1", frozenset({"question", "answer", "ref_answer_1"})),
    "single-ref-turn2": (
        "single-math-v1-multi-turn",
        frozenset(
            {"question_1", "answer_1", "question_2", "answer_2", "ref_answer_1", "ref_answer_2"}
        ),
    ),
    "pair": ("pair-v2", frozenset({"question", "answer_a", "answer_b"})),
    "pair-ref": ("pair-math-v1", frozenset({"question", "answer_a", "answer_b", "ref_answer_1"})),
}


@dataclasses.dataclass(frozen=True)
class JudgePrompt:
    """One record of a FastChat-format judge prompt file."""

    name: str
    type: str  # single | pairwise
    system_prompt: str
    prompt_template: str
    output_format: str
    placeholders: frozenset[str]

    def fill(self, **values: str) -> str:
        return self.prompt_template.format(**values)  # as FastChat fills it

    def parse(self, reply: str):
        if self.output_format == "[[rating]]":
            return parse_rating_fastchat(reply)
        if self.output_format == "[[A]]":
            return parse_pair_fastchat(reply)
        return parse_two_ratings_fastchat(reply)


def load_judge_prompts(path: str | Path) -> dict[str, JudgePrompt]:
    """Read a judge prompt file in FastChat's `judge_prompts.jsonl` format: one JSON record a
    line with `name`, `type` (single | pairwise), `system_prompt`, `prompt_template` (str.format
    placeholders), `output_format`; `description` and `category` are not used."""
    out: dict[str, JudgePrompt] = {}
    for where, rec in read_jsonl_records(path, what="`--judge-prompts`"):
        absent = [k for k in _PROMPT_KEYS if not isinstance(rec.get(k), str)]
        if absent:
            raise ValueError(f"{where}: needs string field(s) {absent} (FastChat's format)")
        kind, fmt = rec["type"], rec["output_format"]
        if kind not in _OUTPUT_FORMATS:
            raise ValueError(f"{where}: `type` must be single or pairwise, got {kind!r}")
        if fmt not in _OUTPUT_FORMATS[kind]:
            raise ValueError(
                f"{where}: `output_format` of a {kind} prompt must be one of "
                f"{list(_OUTPUT_FORMATS[kind])}, got {fmt!r}"
            )
        try:
            fields = {f for _, f, _, _ in string.Formatter().parse(rec["prompt_template"]) if f}
        except ValueError as err:
            raise ValueError(f"{where}: `prompt_template` is not a format string ({err})") from None
        if rec["name"] in out:
            raise ValueError(f"{where}: name {rec['name']!r} repeats")
        out[rec["name"]] = JudgePrompt(
            rec["name"], kind, rec["system_prompt"], rec["prompt_template"], fmt, frozenset(fields)
        )
    if not out:
        raise ValueError(f"`--judge-prompts` {str(path)!r} holds no prompts")
    return out


def load_reference_answers(path: str | Path | None) -> dict[str, list[str]]:
    """Reference answers in FastChat's model-answer jsonl (`question_id`, `choices[0].turns`);
    question id (str) -> one reference per turn. None -> no references."""
    if path is None:
        return {}
    out: dict[str, list[str]] = {}
    for where, rec in read_jsonl_records(path, what="`--reference-answers`"):
        try:
            turns = rec["choices"][0]["turns"]
            qid = rec["question_id"]
        except (KeyError, IndexError, TypeError):
            raise ValueError(
                f"{where}: needs `question_id` and `choices[0].turns` (FastChat's answer format)"
            ) from None
        if not isinstance(turns, list) or not all(isinstance(t, str) for t in turns):
            raise ValueError(f"{where}: `choices[0].turns` must be a list of strings")
        out[str(qid)] = turns
    return out


def needs_reference(question: dict[str, Any]) -> bool:
    return question.get("category", "") in NEED_REF_CATEGORIES


def plan_prompts(
    prompts: dict[str, JudgePrompt],
    questions: list[dict[str, Any]],
    refs: dict[str, list[str]],
    *,
    pairwise: bool,
) -> dict[str, JudgePrompt]:
    """role -> the record that judges it, checked against what the questions need: the records
    are there, of the right type, use only the placeholders we fill, and every reference-category
    question has a reference for each of its turns."""
    roles = {"single"}
    if any(len(q["turns"]) > 1 for q in questions):
        roles.add("single-turn2")
    ref_questions = [q for q in questions if needs_reference(q)]
    if ref_questions:
        roles.add("single-ref")
        if any(len(q["turns"]) > 1 for q in ref_questions):
            roles.add("single-ref-turn2")
    if pairwise:
        roles |= {"pair", "pair-ref"} if ref_questions else {"pair"}
    plan = {}
    for role in sorted(roles):
        name, filled = _ROLES[role]
        rec = prompts.get(name)
        if rec is None:
            raise ValueError(
                f"`--judge-prompts` has no record named {name!r}, which judges "
                f"{_ROLE_WORDS[role]} (FastChat's file has it)"
            )
        want = "pairwise" if role.startswith("pair") else "single"
        if rec.type != want:
            raise ValueError(f"`--judge-prompts` record {name!r} must be of type {want!r}")
        extra = sorted(rec.placeholders - filled)
        if extra:
            raise ValueError(
                f"`--judge-prompts` record {name!r} uses placeholder(s) {extra} that its role "
                f"does not fill (it fills {sorted(filled)})"
            )
        plan[role] = rec
    if ref_questions and not refs:
        cats = sorted({q["category"] for q in ref_questions})
        raise ValueError(
            f"`--judge-prompts`: the {cats} questions are judged against reference answers "
            "(FastChat's single-math-v1): give `--reference-answers FILE`"
        )
    for q in ref_questions:
        qid, turns = str(q["question_id"]), len(q["turns"])
        if len(refs.get(qid, [])) < turns:
            raise ValueError(
                f"`--reference-answers` has no reference for every turn of question {qid!r} "
                f"({q['category']}, {turns} turn(s))"
            )
    return plan


_ROLE_WORDS = {
    "single": "first turns",
    "single-turn2": "second turns",
    "single-ref": "first turns of math/reasoning/coding questions",
    "single-ref-turn2": "second turns of math/reasoning/coding questions",
    "pair": "pairwise games",
    "pair-ref": "pairwise games on math/reasoning/coding questions",
}

# FastChat's readers of the verdict (common.py): the first match, with a one-bracket fallback.
_FC_ONE = re.compile(r"\[\[(\d+\.?\d*)\]\]")
_FC_ONE_BACKUP = re.compile(r"\[(\d+\.?\d*)\]")
_FC_TWO = re.compile(r"\[\[(\d+\.?\d*),\s?(\d+\.?\d*)\]\]")
_FC_TWO_BACKUP = re.compile(r"\[(\d+\.?\d*),\s?(\d+\.?\d*)\]")
_FC_TIE_DELTA = 0.1


def parse_rating_fastchat(reply: str) -> float | None:
    """`[[rating]]` as FastChat reads it: the first `[[x]]`, else the first `[x]`; no range
    check (FastChat keeps any number); None where it records -1. Read with float(), not
    FastChat's ast.literal_eval, which raises on a leading zero (`[[08]]`)."""
    found = _FC_ONE.search(reply) or _FC_ONE_BACKUP.search(reply)
    return float(found.group(1)) if found else None


def parse_pair_fastchat(reply: str) -> str | None:
    """`[[A]]` as FastChat reads it (A, else B, else C = tie), as our verdict labels."""
    for mark, verdict in (("[[A]]", "A>B"), ("[[B]]", "B>A"), ("[[C]]", "A=B")):
        if mark in reply:
            return verdict
    return None


def parse_two_ratings_fastchat(reply: str) -> str | None:
    """`[[rating_a,rating_b]]` as FastChat reads it: a tie within 0.1."""
    found = _FC_TWO.search(reply) or _FC_TWO_BACKUP.search(reply)
    if not found:
        return None
    a, b = (float(x) for x in found.groups())
    if abs(a - b) <= _FC_TIE_DELTA:
        return "A=B"
    return "A>B" if a > b else "B>A"


# ---------------------------------------------------------------------------------------------
# Asking the judge


class _Job(NamedTuple):
    kind: str  # single | pair
    prompt: str
    parse: Callable[[str], Any]
    system: str | None = None  # None: our judge system prompt (or --judge-system-prompt)


def _judge_cfg(cfg):
    # The teacher client's own default system prompt (anthropic: "continue the sentence") is the
    # wrong job for a judge; an explicit `--judge-system-prompt` still wins.
    if cfg.system_prompt is None:
        return dataclasses.replace(cfg, system_prompt=_JUDGE_SYSTEM)
    return cfg


def _key(judge_name: str, job: _Job) -> str:
    text = job.prompt if job.system is None else f"{job.system}\0{job.prompt}"
    return hashlib.sha256(f"{judge_name}\0{text}".encode()).hexdigest()[:32]


def _read_cache(path: Path) -> dict[str, dict]:
    """Cache key -> verdict record; a line cut short by a kill is ignored."""
    return {rec["key"]: rec for rec in JsonlCache(path).read()}


async def _ask_all(cfg, jobs: dict[str, _Job], cache_path: Path) -> dict:
    """Returns label -> cached record (absent = unjudged). Jobs with their own system prompt
    (a prompt file's records) are asked through a client configured with it."""
    from data_gen.llm import RunStopped

    cache_path.parent.mkdir(parents=True, exist_ok=True)
    cached = _read_cache(cache_path)
    by_system: dict[str | None, dict[str, _Job]] = {}
    for label, job in jobs.items():
        by_system.setdefault(job.system, {})[label] = job
    keys: dict[str, str] = {}
    with JsonlCache(cache_path).open_for_append() as cache:
        for system, group in by_system.items():
            if system is None:
                group_cfg = _judge_cfg(cfg)
            else:
                group_cfg = dataclasses.replace(cfg, system_prompt=system)
            stop = await _ask_group(group_cfg, group, cached, cache, keys)
            if stop is not None:
                raise RunStopped(f"the judge stopped the evaluation: {stop}; verdicts so far kept")
    return {label: cached[key] for label, key in keys.items() if key in cached}


async def _ask_group(cfg, jobs: dict[str, _Job], cached: dict, cache, keys: dict[str, str]):
    from data_gen.llm import fan_out, make_teacher

    async with make_teacher(cfg) as judge:
        keys.update({label: _key(judge.name, job) for label, job in jobs.items()})
        todo = [label for label in jobs if keys[label] not in cached]

        def keep(label: str, reply) -> None:
            rec = {
                "key": keys[label],
                "label": label,
                "kind": jobs[label].kind,
                "verdict": jobs[label].parse(reply.text),
                "reply": reply.text[-2000:],  # the end holds the verdict
            }
            cached[rec["key"]] = rec
            cache.append(rec)

        # A failed question stays unjudged (on_error's default): the next run asks again.
        return await fan_out(
            judge, todo, lambda label: jobs[label].prompt, keep, concurrency=cfg.concurrency
        )


def grade_single(
    judge_cfg,
    questions: list[dict[str, Any]],
    answers: dict[str, list[str]],
    cache_path: str | Path,
    *,
    prompts: dict[str, JudgePrompt] | None = None,
    references: dict[str, list[str]] | None = None,
) -> dict[str, Any]:
    """MT-Bench-style grades of every turn. `questions`: MT-Bench records (`question_id`,
    `category`, `turns`); `answers`: question id (str) -> one answer per turn. `prompts`: a
    FastChat-format prompt file (`load_judge_prompts`) instead of our wording, with
    `references` for the reference categories."""
    plan = plan_prompts(prompts, questions, references or {}, pairwise=False) if prompts else {}
    jobs: dict[str, _Job] = {}
    for q in questions:
        qid, turns = str(q["question_id"]), q["turns"]
        got = answers[qid]
        if not plan:
            jobs[f"{qid}/1"] = _Job(
                "single", _SINGLE.format(question=turns[0], answer=got[0]), parse_rating
            )
            if len(turns) > 1:
                text = _SINGLE_TURN2.format(q1=turns[0], a1=got[0], q2=turns[1], a2=got[1])
                jobs[f"{qid}/2"] = _Job("single", text, parse_rating)
            continue
        ref = references[qid] if needs_reference(q) else None
        suffix = "-ref" if ref else ""
        values = {"question": turns[0], "answer": got[0]}
        if ref:
            values["ref_answer_1"] = ref[0]
        rec = plan["single" + suffix]
        jobs[f"{qid}/1"] = _Job("single", rec.fill(**values), rec.parse, rec.system_prompt)
        if len(turns) > 1:
            values = {"question_1": turns[0], "answer_1": got[0]}
            values |= {"question_2": turns[1], "answer_2": got[1]}
            if ref:
                values |= {"ref_answer_1": ref[0], "ref_answer_2": ref[1]}
            rec = plan["single" + suffix + "-turn2"]
            jobs[f"{qid}/2"] = _Job("single", rec.fill(**values), rec.parse, rec.system_prompt)
    verdicts = asyncio.run(_ask_all(judge_cfg, jobs, Path(cache_path)))
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
        "prompts": "judge-prompts file" if plan else "ours (not comparable with MT-Bench)",
    }


def pairwise(
    judge_cfg,
    questions: list[dict[str, Any]],
    answers: dict[str, list[str]],
    baseline: dict[str, list[str]],
    cache_path: str | Path,
    *,
    prompts: dict[str, JudgePrompt] | None = None,
    references: dict[str, list[str]] | None = None,
    bootstrap_rounds: int = 100,
) -> dict[str, Any]:
    """Arena-Hard-style win rate (%) of `answers` against `baseline` on each question's first
    turn, judged in both orders, and the Arena-Hard (Bradley-Terry) score of those games.
    `prompts`/`references`: a FastChat-format prompt file's `pair-v2` / `pair-math-v1`."""
    missing = [str(q["question_id"]) for q in questions if str(q["question_id"]) not in baseline]
    if missing:
        raise ValueError(f"the baseline answers lack question id(s) {missing[:5]}")
    plan = plan_prompts(prompts, questions, references or {}, pairwise=True) if prompts else {}
    jobs: dict[str, _Job] = {}
    for q in questions:
        qid, question = str(q["question_id"]), q["turns"][0]
        ours, theirs = answers[qid][0], baseline[qid][0]
        for order, (a, b) in (("model-first", (ours, theirs)), ("baseline-first", (theirs, ours))):
            if not plan:
                text = _PAIR.format(question=question, a=a, b=b)
                jobs[f"{qid}/{order}"] = _Job("pair", text, parse_pair)
                continue
            values = {"question": question, "answer_a": a, "answer_b": b}
            rec = plan["pair"]
            if needs_reference(q):
                rec, values["ref_answer_1"] = plan["pair-ref"], references[qid][0]
            jobs[f"{qid}/{order}"] = _Job("pair", rec.fill(**values), rec.parse, rec.system_prompt)
    verdicts = asyncio.run(_ask_all(judge_cfg, jobs, Path(cache_path)))
    wins = ties = losses = unparsable = inconsistent = 0
    per_question: dict[str, list[float]] = {}
    battles: list[float] = []  # the model's result in each Arena-Hard battle
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
        battles += [ours] * (ARENA_HARD_WEIGHT if ">>" in rec["verdict"] else 1)
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
        **arena_hard_score(battles, rounds=bootstrap_rounds),
        "unparsable": unparsable,
        "unjudged": len(jobs) - len(verdicts),
        "asked": len(jobs),
        "prompts": "judge-prompts file" if plan else "ours",
    }


# ---------------------------------------------------------------------------------------------
# The Arena-Hard score: Bradley-Terry over the battles, bootstrap interval

ARENA_HARD_WEIGHT = 3
"""A decisive verdict (`A>>B`) counts as this many battles (Arena-Hard's `--weight`)."""


def bradley_terry(
    battles: list[tuple[int, int, float]],
    players: int,
    *,
    weights: list[float] | None = None,
    iters: int = 10_000,
    tol: float = 1e-12,
) -> list[float]:
    """Bradley-Terry strengths (summing to 1) by the MM algorithm (Hunter 2004), from battles
    `(i, j, result of i)`: 1 a win, 0 a loss, 0.5 a tie (half a win to each side, as
    Arena-Hard's logistic fit counts it). P(i beats j) = p_i / (p_i + p_j). A player without a
    win gets strength 0 (the maximum-likelihood limit), so an all-wins record gives 100%."""
    import numpy as np

    wins = np.zeros((players, players))  # wins[i, j]: weighted wins of i over j
    for (i, j, result), w in zip(battles, weights or [1.0] * len(battles), strict=True):
        wins[i, j] += w * result
        wins[j, i] += w * (1.0 - result)
    games = wins + wins.T
    total_wins = wins.sum(axis=1)
    p = np.full(players, 1.0 / players)
    for _ in range(iters):
        pair_sum = p[:, None] + p[None, :]
        denom = np.divide(games, pair_sum, out=np.zeros_like(games), where=pair_sum > 0).sum(1)
        new = np.divide(total_wins, denom, out=np.zeros_like(p), where=denom > 0)
        new /= new.sum()
        if np.abs(new - p).max() < tol:
            p = new
            break
        p = new
    return p.tolist()


def arena_hard_score(battles: list[float], *, rounds: int = 100, seed: int = 42) -> dict:
    """The model's Arena-Hard score (%) against the baseline from its battle results (1 win,
    0.5 tie, 0 loss; decisive verdicts already repeated): the Bradley-Terry predicted win rate,
    and the 2.5/97.5 percentiles over `rounds` bootstrap resamples of the battles."""
    import numpy as np

    if not battles:
        return {"arena_hard_score": None, "arena_hard_ci95": None, "arena_hard_battles": 0}

    def win_rate(results) -> float:
        strength = bradley_terry([(0, 1, float(r)) for r in results], 2)
        return 100.0 * strength[0] / (strength[0] + strength[1])

    rng = np.random.default_rng(seed)
    results = np.asarray(battles, dtype=float)
    boots = [win_rate(rng.choice(results, size=len(results))) for _ in range(rounds)]
    return {
        "arena_hard_score": round(win_rate(results), 2),
        "arena_hard_ci95": [round(float(np.percentile(boots, q)), 2) for q in (2.5, 97.5)],
        "arena_hard_battles": len(battles),
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
    out, seen = [], set()
    for where, rec in read_jsonl_records(path, what="question file"):
        turns = rec.get("turns")
        if "question_id" not in rec or not isinstance(turns, list) or not turns:
            raise ValueError(f"{where}: needs `question_id` and a non-empty list `turns`")
        if not all(isinstance(t, str) and t.strip() for t in turns):
            raise ValueError(f"{where}: every turn must be a non-empty string")
        if str(rec["question_id"]) in seen:
            raise ValueError(f"{where}: question_id {rec['question_id']!r} repeats")
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
