"""IFEval-style rule-verifiable instruction checks, scored the way IFEval reports them.

A prompt file is jsonl in IFEval's format: `key`, `prompt`, `instruction_id_list` and `kwargs`
(one dict per instruction, same order). Each instruction id names a checker here; a response
follows an instruction when the checker says so. IFEval reports four numbers:

    prompt_level_strict   share of prompts whose every instruction is followed
    inst_level_strict     share of all instructions followed
    prompt_level_loose    the same after forgiving Markdown emphasis and a preamble/sign-off
    inst_level_loose      (a loose pass: any of the response variants in `_loose_variants`)

All 25 of IFEval's instruction ids are implemented (`CHECKERS`), so IFEval's own
`input_data.jsonl` scores offline; a prompt file naming an unknown id is refused up front, before
a model answers anything. Unlike IFEval, the case checks do not also ask langdetect whether the
answer is English.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_RELATIONS = ("less than", "at least")


@dataclass(frozen=True)
class IFEvalPrompt:
    key: str
    prompt: str
    instruction_id_list: tuple[str, ...]
    kwargs: tuple[dict[str, Any], ...]


def _compare(count: int, relation: str, n: int) -> bool:
    return count < n if relation == "less than" else count >= n


def _words(text: str) -> list[str]:
    return re.findall(r"\b\w+(?:'\w+)?\b", text)


def _sentences(text: str) -> list[str]:
    # A sentence ends at . ! or ? followed by space/end; good enough for checks on short answers.
    return [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if re.search(r"\w", s)]


def _no_comma(response: str) -> bool:
    return "," not in response


def _lowercase(response: str) -> bool:
    return response == response.lower() and any(c.isalpha() for c in response)


def _capital(response: str) -> bool:
    return response == response.upper() and any(c.isalpha() for c in response)


def _number_words(response: str, *, num_words: int, relation: str) -> bool:
    return _compare(len(_words(response)), relation, num_words)


def _number_sentences(response: str, *, num_sentences: int, relation: str) -> bool:
    return _compare(len(_sentences(response)), relation, num_sentences)


def _number_paragraphs(response: str, *, num_paragraphs: int) -> bool:
    # IFEval separates paragraphs with the Markdown divider `***`; an empty paragraph fails,
    # except before the first divider or after the last one (a stray leading/trailing `***`).
    parts = re.split(r"\s?\*\*\*\s?", response)
    while parts and not parts[0].strip():
        parts = parts[1:]
    while parts and not parts[-1].strip():
        parts = parts[:-1]
    return len(parts) == num_paragraphs and all(p.strip() for p in parts)


def _number_bullets(response: str, *, num_bullets: int) -> bool:
    bullets = re.findall(r"^\s*[*-]\s+\S", response, flags=re.MULTILINE)
    return len(bullets) == num_bullets


def _title(response: str) -> bool:
    return any(t.strip() for t in re.findall(r"<<([^\n]+?)>>", response))


def _json_format(response: str) -> bool:
    text = response.strip()
    # Models often fence JSON in ```json ... ```; IFEval strips the fence before parsing.
    text = re.sub(r"^```(?:json|JSON|Json)?\s*|\s*```$", "", text)
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def _keywords_existence(response: str, *, keywords: list[str]) -> bool:
    return all(re.search(re.escape(k), response, flags=re.IGNORECASE) for k in keywords)


def _forbidden_words(response: str, *, forbidden_words: list[str]) -> bool:
    return not any(
        re.search(r"\b" + re.escape(w) + r"\b", response, flags=re.IGNORECASE)
        for w in forbidden_words
    )


def _keyword_frequency(response: str, *, keyword: str, frequency: int, relation: str) -> bool:
    count = len(re.findall(re.escape(keyword), response, flags=re.IGNORECASE))
    return _compare(count, relation, frequency)


def _end_checker(response: str, *, end_phrase: str) -> bool:
    return response.strip().lower().endswith(end_phrase.strip().lower())


def _quotation(response: str) -> bool:
    text = response.strip()
    return len(text) > 1 and text[0] == '"' and text[-1] == '"'


def _postscript(response: str, *, postscript_marker: str) -> bool:
    marker = postscript_marker.strip()
    return re.search(r"^\s*" + re.escape(marker), response, flags=re.MULTILINE | re.I) is not None


def _highlighted_sections(response: str, *, num_highlights: int) -> bool:
    found = [h for h in re.findall(r"\*[^\n*]+\*", response) if h.strip("*").strip()]
    return len(found) >= num_highlights


def _letter_frequency(response: str, *, letter: str, let_frequency: int, let_relation: str) -> bool:
    return _compare(response.lower().count(letter.lower()), let_relation, let_frequency)


def _capital_word_frequency(
    response: str, *, capital_frequency: int, capital_relation: str
) -> bool:
    capitals = [w for w in _words(response) if w.isupper()]
    return _compare(len(capitals), capital_relation, capital_frequency)


def _response_language(response: str, *, language: str) -> bool:
    from langdetect import DetectorFactory, LangDetectException, detect

    DetectorFactory.seed = 0  # langdetect samples; a fixed seed makes the verdict repeatable
    try:
        return detect(response) == language
    except LangDetectException:
        return True  # IFEval: text with no detectable language (digits, symbols) is not penalised


def _nth_paragraph_first_word(
    response: str, *, num_paragraphs: int, nth_paragraph: int, first_word: str
) -> bool:
    # Here paragraphs are separated by blank lines, not `***`.
    paragraphs = re.split(r"\n\n", response)
    if sum(1 for p in paragraphs if p.strip()) != num_paragraphs:
        return False
    if not 1 <= nth_paragraph <= len(paragraphs) or not paragraphs[nth_paragraph - 1].strip():
        return False
    word = paragraphs[nth_paragraph - 1].split()[0].lstrip("'\"")
    word = re.split(r"[.,?!'\"]", word, maxsplit=1)[0]
    return word.lower() == first_word.lower()


def _placeholders(response: str, *, num_placeholders: int) -> bool:
    return len(re.findall(r"\[.*?\]", response)) >= num_placeholders


_CONSTRAINED = ("My answer is yes.", "My answer is no.", "My answer is maybe.")


def _constrained_response(response: str) -> bool:
    return any(option in response.strip() for option in _CONSTRAINED)


def _multiple_sections(response: str, *, section_spliter: str, num_sections: int) -> bool:
    # `section_spliter` (sic) is IFEval's kwarg name; sections read "SECTION 1", "SECTION 2", ...
    parts = re.split(r"\s?" + re.escape(section_spliter) + r"\s?\d+\s?", response)
    return len(parts) - 1 >= num_sections


def _two_responses(response: str) -> bool:
    answers = [a.strip() for a in response.split("******")]
    answers = [a for a in answers if a]
    return len(answers) == 2 and answers[0] != answers[1]


def _repeat_prompt(response: str, *, prompt_to_repeat: str) -> bool:
    return response.strip().lower().startswith(prompt_to_repeat.strip().lower())


# IFEval instruction id -> (checker, the kwargs it needs): all 25 of IFEval's ids.
CHECKERS: dict[str, tuple[Callable[..., bool], tuple[str, ...]]] = {
    "punctuation:no_comma": (_no_comma, ()),
    "change_case:english_lowercase": (_lowercase, ()),
    "change_case:english_capital": (_capital, ()),
    "length_constraints:number_words": (_number_words, ("num_words", "relation")),
    "length_constraints:number_sentences": (_number_sentences, ("num_sentences", "relation")),
    "length_constraints:number_paragraphs": (_number_paragraphs, ("num_paragraphs",)),
    "detectable_format:number_bullet_lists": (_number_bullets, ("num_bullets",)),
    "detectable_format:title": (_title, ()),
    "detectable_format:json_format": (_json_format, ()),
    "detectable_format:number_highlighted_sections": (_highlighted_sections, ("num_highlights",)),
    "keywords:existence": (_keywords_existence, ("keywords",)),
    "keywords:forbidden_words": (_forbidden_words, ("forbidden_words",)),
    "keywords:frequency": (_keyword_frequency, ("keyword", "frequency", "relation")),
    "startend:end_checker": (_end_checker, ("end_phrase",)),
    "startend:quotation": (_quotation, ()),
    "detectable_content:postscript": (_postscript, ("postscript_marker",)),
    "detectable_content:number_placeholders": (_placeholders, ("num_placeholders",)),
    "detectable_format:constrained_response": (_constrained_response, ()),
    "detectable_format:multiple_sections": (
        _multiple_sections,
        ("section_spliter", "num_sections"),
    ),
    "keywords:letter_frequency": (
        _letter_frequency,
        ("letter", "let_frequency", "let_relation"),
    ),
    "change_case:capital_word_frequency": (
        _capital_word_frequency,
        ("capital_frequency", "capital_relation"),
    ),
    "language:response_language": (_response_language, ("language",)),
    "length_constraints:nth_paragraph_first_word": (
        _nth_paragraph_first_word,
        ("num_paragraphs", "nth_paragraph", "first_word"),
    ),
    "combination:two_responses": (_two_responses, ()),
    "combination:repeat_prompt": (_repeat_prompt, ("prompt_to_repeat",)),
}
_RELATION_KWARGS = ("relation", "let_relation", "capital_relation")


def check_instruction(instruction_id: str, response: str, kwargs: dict[str, Any]) -> bool:
    """Whether `response` follows one instruction (strictly)."""
    if instruction_id not in CHECKERS:
        raise ValueError(f"unknown IFEval instruction id {instruction_id!r}")
    fn, needed = CHECKERS[instruction_id]
    if not response.strip():
        return False  # IFEval: an empty answer follows nothing
    return bool(fn(response, **{k: kwargs[k] for k in needed}))


def _loose_variants(response: str) -> list[str]:
    """IFEval's loose reading: drop `*` emphasis, the first line, the last line, or a mix."""
    lines = response.split("\n")
    first = "\n".join(lines[1:]).strip()
    last = "\n".join(lines[:-1]).strip()
    both = "\n".join(lines[1:-1]).strip()
    variants = [response, first, last, both]
    variants += [v.replace("*", "") for v in variants]
    return [v for v in variants if v.strip()]


def load_prompts(path: str | Path) -> list[IFEvalPrompt]:
    """Read an IFEval-format jsonl file; every problem is reported with its line number."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"IFEval prompt file {str(path)!r} does not exist")
    prompts = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where}: not valid JSON ({err.msg})") from None
        for field in ("key", "prompt", "instruction_id_list", "kwargs"):
            if field not in rec:
                raise ValueError(f"{where}: missing field {field!r}")
        ids, kwargs = rec["instruction_id_list"], rec["kwargs"]
        if len(ids) != len(kwargs):
            raise ValueError(f"{where}: instruction_id_list and kwargs differ in length")
        for iid, kw in zip(ids, kwargs, strict=True):
            if iid not in CHECKERS:
                raise ValueError(
                    f"{where}: instruction id {iid!r} is not supported; supported: "
                    + ", ".join(sorted(CHECKERS))
                )
            missing = [k for k in CHECKERS[iid][1] if k not in kw]
            if missing:
                raise ValueError(f"{where}: {iid} needs kwargs {missing}")
            for key in set(_RELATION_KWARGS) & set(CHECKERS[iid][1]):
                if kw[key] not in _RELATIONS:
                    raise ValueError(f"{where}: {iid} {key} must be one of {_RELATIONS}")
            if iid == "language:response_language":
                _require_langdetect(where)
        prompts.append(IFEvalPrompt(str(rec["key"]), rec["prompt"], tuple(ids), tuple(kwargs)))
    if not prompts:
        raise ValueError(f"IFEval prompt file {str(path)!r} holds no prompts")
    return prompts


def _require_langdetect(where: str) -> None:
    try:
        import langdetect  # noqa: F401
    except ImportError:
        raise ValueError(
            f"{where}: language:response_language needs langdetect: "
            "pip install 'nif-lightning[eval]'"
        ) from None


def score(prompts: list[IFEvalPrompt], responses: dict[str, str]) -> dict[str, Any]:
    """IFEval's four accuracies (in %) plus a per-prompt record; `responses` maps key -> text."""
    missing = [p.key for p in prompts if p.key not in responses]
    if missing:
        raise ValueError(f"no response for IFEval prompt key(s) {missing[:5]}")
    per_prompt = []
    strict_inst = loose_inst = n_inst = 0
    strict_prompt = loose_prompt = 0
    for p in prompts:
        response = responses[p.key]
        variants = _loose_variants(response)
        pairs = list(zip(p.instruction_id_list, p.kwargs, strict=True))
        strict = [check_instruction(i, response, k) for i, k in pairs]
        loose = [any(check_instruction(i, v, k) for v in variants) for i, k in pairs]
        strict_inst += sum(strict)
        loose_inst += sum(loose)
        n_inst += len(strict)
        strict_prompt += all(strict)
        loose_prompt += all(loose)
        per_prompt.append({"key": p.key, "strict": strict, "loose": loose})

    def pct(k: int, n: int) -> float:
        return round(100.0 * k / n, 2)

    return {
        "prompt_level_strict": pct(strict_prompt, len(prompts)),
        "inst_level_strict": pct(strict_inst, n_inst),
        "prompt_level_loose": pct(loose_prompt, len(prompts)),
        "inst_level_loose": pct(loose_inst, n_inst),
        "prompts": len(prompts),
        "instructions": n_inst,
        "per_prompt": per_prompt,
    }
