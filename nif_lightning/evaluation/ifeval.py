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
a model answers anything.

Each checker applies the rule of Google's IFEval checkers (as shipped in lm-eval 0.4.13), and
`tests/eval/test_ifeval_reference.py` holds them to it differentially: same verdict, strict and
loose, on at least 99.5% of generated edge cases for every id. The rules are IFEval's, quirks
included: `don't` is two words; `*Note:*`, `-text` and `---` lines are bullets; `P.S.` may sit
anywhere in a line (and inside `P.P.S.`); `***x***` is two highlights; an answer wrapped in
double quotes still ends with its end phrase; the case checks also need langdetect to say `en`.

Where this module knowingly differs from lm-eval:

- `keywords:letter_frequency` counts the literal `letter`, whatever the character, as Google's
  original does; lm-eval 0.4.13 swaps a letter outside a-z for a random one, and IFEval's own
  data asks for `#` and `!`.
- Keywords, forbidden words and a postscript marker other than IFEval's `P.S.` / `P.P.S` are
  literal text here; IFEval compiles them as regular expressions (no IFEval row has a
  metacharacter in them).
- `json_format`: JSON nested too deeply for Python's parser is "not JSON" here; IFEval's checker
  raises `RecursionError` and aborts the whole scoring call.
- `length_constraints:number_sentences` and `change_case:capital_word_frequency` tokenize with
  nltk's punkt model, as IFEval does, when nltk and its `punkt_tab` data are installed
  (`python -m nltk.downloader punkt_tab`). Without the data they use an approximation (nltk's
  Treebank word tokenizer without the sentence split, and a sentence splitter that knows common
  abbreviations), and `score()` lists them under `approximated_ids`.

The language checks (`language:response_language`, `change_case:english_capital`,
`change_case:english_lowercase`) need `langdetect` (a dependency of ours; an environment without
it refuses a prompt file that uses them up front). langdetect samples at random: its seed is fixed
at 0 here, so a verdict is repeatable, and detection results are memoised per text.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import regex  # a dependency of transformers

from data_gen.store import read_jsonl_records

_RELATIONS = ("less than", "at least")


@dataclass(frozen=True)
class IFEvalPrompt:
    key: str
    prompt: str
    instruction_id_list: tuple[str, ...]
    kwargs: tuple[dict[str, Any], ...]


def _compare(count: int, relation: str, n: int) -> bool:
    return count < n if relation == "less than" else count >= n


# --- language (langdetect) -----------------------------------------------------------------

_LANGDETECT_IDS = (
    "language:response_language",
    "change_case:english_capital",
    "change_case:english_lowercase",
)


@functools.lru_cache(maxsize=4096)
def _language(text: str) -> str | None:
    """langdetect's language code for `text`, or None where it finds no language at all
    (only digits, symbols): IFEval counts such an answer as following a language rule."""
    try:
        import langdetect
    except ImportError:
        raise ValueError(
            "IFEval's language checks need langdetect: pip install langdetect"
        ) from None
    # langdetect samples at random; a fixed seed makes each verdict repeatable.
    langdetect.DetectorFactory.seed = 0
    try:
        return langdetect.detect(text)
    except langdetect.LangDetectException:
        return None


def _in_english(text: str) -> bool:
    return _language(text) in ("en", None)


def _lowercase(response: str) -> bool:
    # str.islower: at least one cased character and none upper (text without case fails).
    return response.islower() and _in_english(response)


def _capital(response: str) -> bool:
    return response.isupper() and _in_english(response)


def _response_language(response: str, *, language: str) -> bool:
    return _language(response) in (language, None)


# --- words and sentences ------------------------------------------------------------------


def _number_words(response: str, *, num_words: int, relation: str) -> bool:
    # IFEval's word is a run of \w characters (nltk's RegexpTokenizer(r"\w+")): `don't` and
    # `well-known` are two words each. Unicode word characters, as the `regex` engine that
    # nltk compiles it with has them: marks and joiners belong to the word, so a Hindi or
    # Persian word is one word (stdlib `re` would cut it at each vowel sign).
    return _compare(len(regex.findall(r"\w+", response)), relation, num_words)


@functools.lru_cache(maxsize=1)
def _punkt() -> Any:
    """nltk's English punkt sentence splitter (what IFEval uses), or None without nltk or its
    `punkt_tab` data. Cached; `_punkt.cache_clear()` looks again."""
    try:
        from nltk.tokenize import PunktTokenizer
    except ImportError:
        return None
    _sentences.cache_clear()
    _word_tokens.cache_clear()
    try:
        return PunktTokenizer("english")
    except LookupError:
        return None


def _treebank() -> Any:
    try:
        from nltk.tokenize import NLTKWordTokenizer
    except ImportError:
        return None
    return NLTKWordTokenizer()


# The fallback without punkt data: a sentence ends at . ! or ? (closing quotes or brackets may
# follow) before white space, except after a common abbreviation or an initial (`Dr.`, `e.g.`,
# `U.S.`, `J.`), or at an ellipsis that the next sentence does not start with a capital after.
_SENTENCE_END = re.compile(r"""(\S*?)([.!?]+)["')\]”’]*(?=\s+(\S?))""")
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof st jr sr inc ltd co corp vs etc no fig eq al approx dept est vol ch "  # noqa: SIM905
    "jan feb mar apr jun jul aug sep sept oct nov dec mon tue wed thu fri sat sun".split()
)
_INITIALS = re.compile(r"(?:[^\W\d_]\.)*[^\W\d_]")  # a, e.g, u.s.a


def _fallback_sentences(text: str) -> list[str]:
    text = text.strip()
    sentences, start = [], 0
    for m in _SENTENCE_END.finditer(text):
        word, marks, following = m.group(1).lower().lstrip("\"'(["), m.group(2), m.group(3)
        if marks == ".":
            if word in _ABBREVIATIONS or _INITIALS.fullmatch(word):
                continue
        elif marks.startswith("..") and not following[:1].isupper():
            continue
        sentences.append(text[start : m.end()])
        start = m.end()
    sentences.append(text[start:])
    return [s.strip() for s in sentences if s.strip()]


@functools.lru_cache(maxsize=1024)  # a response is read strictly, then loosely: same texts
def _sentences(text: str) -> list[str]:
    punkt = _punkt()
    return _fallback_sentences(text) if punkt is None else punkt.tokenize(text)


@functools.lru_cache(maxsize=1024)
def _word_tokens(text: str) -> list[str]:
    """nltk.word_tokenize's tokens (punkt sentences, then the Treebank tokenizer)."""
    treebank = _treebank()
    if treebank is None:  # no nltk: words, with contractions split off as Treebank does
        return re.findall(r"(?:n't|'\w+|\w+(?=n't)|[\w.&-]+\w|\w)", text, flags=re.I)
    punkt = _punkt()
    sentences = [text] if punkt is None else punkt.tokenize(text)
    return [token for s in sentences for token in treebank.tokenize(s)]


def _number_sentences(response: str, *, num_sentences: int, relation: str) -> bool:
    return _compare(len(_sentences(response)), relation, num_sentences)


def _capital_word_frequency(
    response: str, *, capital_frequency: int, capital_relation: str
) -> bool:
    capitals = [w for w in _word_tokens(response) if w.isupper()]
    return _compare(len(capitals), capital_relation, capital_frequency)


# --- format --------------------------------------------------------------------------------


def _no_comma(response: str) -> bool:
    return "," not in response


def _number_paragraphs(response: str, *, num_paragraphs: int) -> bool:
    # Paragraphs are separated by the Markdown divider `***`. An empty piece is forgiven only
    # before the first divider or after the last one; an empty piece between two fails.
    pieces = re.split(r"\s?\*\*\*\s?", response)
    if any(not p.strip() for p in pieces[1:-1]):
        return False
    return sum(1 for p in pieces if p.strip()) == num_paragraphs


# IFEval's bullets: a line whose first non-space character is `*` not followed by another `*`
# (so `*Note:*` and `*text` count, `**bold**` does not), or is `-` (so `-text`, `---`, `-`).
# `\s*` may run over blank lines, and `[^*]` may be the line break itself, as in IFEval.
_STAR_BULLET = re.compile(r"^\s*\*[^*].*$", re.MULTILINE)
_DASH_BULLET = re.compile(r"^\s*-.*$", re.MULTILINE)


def _number_bullets(response: str, *, num_bullets: int) -> bool:
    found = len(_STAR_BULLET.findall(response)) + len(_DASH_BULLET.findall(response))
    return found == num_bullets


def _title(response: str) -> bool:
    # Greedy, one line: `<<a>> and <<b>>` is one candidate; brackets-only titles are empty.
    candidates = re.findall(r"<<[^\n]+>>", response)
    return any(c.lstrip("<").rstrip(">").strip() for c in candidates)


# Removed in this order, each at most once, as IFEval does (```json``` loses both fences).
_JSON_PREFIXES = ("```json", "```Json", "```JSON", "```")


def _json_format(response: str) -> bool:
    text = response.strip()
    for prefix in _JSON_PREFIXES:
        text = text.removeprefix(prefix)
    text = text.removesuffix("```").strip()
    try:
        json.loads(text)
    except (ValueError, RecursionError):  # too deeply nested to parse is not JSON either
        return False
    return True


def _highlighted_sections(response: str, *, num_highlights: int) -> bool:
    # IFEval counts `*x*` spans and, separately, `**x**` spans (so `***x***` counts twice).
    single = [h for h in re.findall(r"\*[^\n*]*\*", response) if h.strip("*").strip()]
    double = [h for h in re.findall(r"\*\*[^\n*]*\*\*", response) if h[2:-2].strip()]
    return len(single) + len(double) >= num_highlights


def _placeholders(response: str, *, num_placeholders: int) -> bool:
    return len(re.findall(r"\[.*?\]", response)) >= num_placeholders


_CONSTRAINED = ("My answer is yes.", "My answer is no.", "My answer is maybe.")


def _constrained_response(response: str) -> bool:
    return any(option in response.strip() for option in _CONSTRAINED)


def _multiple_sections(response: str, *, section_spliter: str, num_sections: int) -> bool:
    # `section_spliter` (sic) is IFEval's kwarg name; sections read "SECTION 1", "SECTION 2", ...
    marker = re.escape(section_spliter.strip())
    parts = re.split(r"\s?" + marker + r"\s?\d+\s?", response)
    return len(parts) - 1 >= num_sections


def _nth_paragraph_first_word(
    response: str, *, num_paragraphs: int, nth_paragraph: int, first_word: str
) -> bool:
    # Here paragraphs are separated by a blank line ("\n\n"), not `***`.
    paragraphs = response.split("\n\n")
    count = sum(1 for p in paragraphs if p.strip())
    if count != num_paragraphs or not 1 <= nth_paragraph <= count:
        return False
    paragraph = paragraphs[nth_paragraph - 1].strip()  # indexed among all pieces, as IFEval
    if not paragraph:
        return False
    # The first word, single quotes then double quotes stripped from its front (in that order:
    # `"'word` keeps its `'` and reads as empty), cut at the first . , ? ! ' or ".
    word = paragraph.split()[0].lstrip("'").lstrip('"')
    head = re.match(r"""[^.,?!'"]*""", word).group()
    return "".join(c.lower() for c in head) == first_word.lower()


def _two_responses(response: str) -> bool:
    pieces = response.split("******")
    if any(not p.strip() for p in pieces[1:-1]):
        return False  # an empty answer between two separators
    answers = [p for p in pieces if p.strip()]
    return len(answers) == 2 and answers[0].strip() != answers[1].strip()


# --- content -------------------------------------------------------------------------------


def _keywords_existence(response: str, *, keywords: list[str]) -> bool:
    return all(re.search(re.escape(k), response, flags=re.IGNORECASE) for k in keywords)


def _forbidden_words(response: str, *, forbidden_words: list[str]) -> bool:
    return not any(
        re.search(r"\b" + re.escape(w) + r"\b", response, flags=re.IGNORECASE)
        for w in forbidden_words
    )


def _keyword_frequency(response: str, *, keyword: str, frequency: int, relation: str) -> bool:
    count = len(re.findall(re.escape(keyword.strip()), response, flags=re.IGNORECASE))
    return _compare(count, relation, frequency)


def _letter_frequency(response: str, *, letter: str, let_frequency: int, let_relation: str) -> bool:
    # Google's IFEval counts the literal character, whatever it is (its data asks for `#` and
    # `!`); lm-eval 0.4.13 replaces a letter outside a-z with a random one. We follow Google.
    wanted = letter.strip().lower()
    count = sum(1 for c in response.lower() if c == wanted)
    return _compare(count, let_relation, let_frequency)


def _end_checker(response: str, *, end_phrase: str) -> bool:
    # Double quotes around the whole answer (`startend:quotation`) do not hide its ending.
    text = response.strip().strip('"').lower()
    return text.endswith(end_phrase.strip().lower())


def _quotation(response: str) -> bool:
    text = response.strip()
    return len(text) > 1 and text[0] == '"' and text[-1] == '"'


# IFEval's two markers, matched in lowercased text anywhere in a line, with an optional space
# after each dot: `P. S.`, `**P.S.**` and mid-line markers count, and `P.P.S.` holds `P.S.`.
_POSTSCRIPTS = {"P.S.": r"p\.\s?s\.", "P.P.S": r"p\.\s?p\.\s?s"}


def _postscript(response: str, *, postscript_marker: str) -> bool:
    marker = postscript_marker.strip()
    pattern = _POSTSCRIPTS.get(marker, re.escape(marker.lower()))
    return re.search(pattern, response.lower()) is not None


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
    prompts = []
    for where, rec in read_jsonl_records(path, what="IFEval prompt file"):
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
            if iid in _LANGDETECT_IDS:
                _require_langdetect(where, iid)
            letter = kw.get("letter") if iid == "keywords:letter_frequency" else "x"
            if not isinstance(letter, str) or len(letter) != 1:
                raise ValueError(f"{where}: {iid} letter must be one character, not {letter!r}")
        prompts.append(IFEvalPrompt(str(rec["key"]), rec["prompt"], tuple(ids), tuple(kwargs)))
    if not prompts:
        raise ValueError(f"IFEval prompt file {str(path)!r} holds no prompts")
    return prompts


def _require_langdetect(where: str, iid: str) -> None:
    try:
        import langdetect  # noqa: F401
    except ImportError:
        raise ValueError(f"{where}: {iid} needs langdetect: pip install langdetect") from None


# Scored with an approximation of IFEval's tokenizer when nltk's punkt data is missing.
_PUNKT_IDS = ("length_constraints:number_sentences", "change_case:capital_word_frequency")


def score(prompts: list[IFEvalPrompt], responses: dict[str, str]) -> dict[str, Any]:
    """IFEval's four accuracies (in %) plus a per-prompt record; `responses` maps key -> text.

    `approximated_ids` names the ids in `prompts` scored without nltk's punkt data (see the
    module docstring); it is empty when every verdict uses IFEval's own rule."""
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

    used = {i for p in prompts for i in p.instruction_id_list}
    approximated = [] if _punkt() is not None else [i for i in _PUNKT_IDS if i in used]

    def pct(k: int, n: int) -> float:
        return round(100.0 * k / n, 2)

    return {
        "prompt_level_strict": pct(strict_prompt, len(prompts)),
        "inst_level_strict": pct(strict_inst, n_inst),
        "prompt_level_loose": pct(loose_prompt, len(prompts)),
        "inst_level_loose": pct(loose_inst, n_inst),
        "prompts": len(prompts),
        "instructions": n_inst,
        "approximated_ids": approximated,
        "per_prompt": per_prompt,
    }
