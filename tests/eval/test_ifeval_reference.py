"""Differential test: our IFEval scorer against the reference checkers (Google's IFEval code as
shipped in lm-eval, `lm_eval/tasks/ifeval/`).

A seeded generator writes edge-case responses and kwargs for every instruction id (markdown
bullets and emphasis, contractions, P.S. variants, quoted answers, titles, JSON in fences,
separators with empty pieces, text in other scripts, preambles and sign-offs for the loose
reading...) plus prompts that combine 2-4 ids. Both implementations score every case, strict and
loose; the test prints the agreement per id and asserts at least 99.5% for each.

Offline notes:
- lm-eval's `instructions_util` calls `nltk.download("punkt_tab")` at import when the data is
  missing; the import here replaces `nltk.download` with a stub, so nothing is fetched.
- `number_sentences` and `capital_word_frequency` need nltk's punkt model. With the real
  `punkt_tab` data installed (`python -m nltk.downloader punkt_tab`) both sides use it. Without
  it (no pip or Debian package ships it), both sides load a small stand-in punkt model written
  here in the same format, so the comparison still covers both code paths, tokenizer for
  tokenizer; only the model's statistics differ from the real one. Our fallback without any
  punkt data (`approximated_ids`) is measured too and printed, not asserted.
- langdetect samples at random: its seed is fixed at 0 and its answers are memoised per text,
  so both sides see the same language for the same text (and the test stays fast).
- The reference draws from `random` when kwargs are missing or invalid: `random.seed(0)` runs
  before each reference call, and every generated kwarg is valid and truthy.

Run it alone with `python -m pytest tests/eval/test_ifeval_reference.py -s` to see the table.
"""

from __future__ import annotations

import functools
import logging
import random
import re
import string
from collections import defaultdict

import pytest

pytest.importorskip("lm_eval")
langdetect = pytest.importorskip("langdetect")
nltk = pytest.importorskip("nltk")

from nif_lightning.evaluation import ifeval  # noqa: E402
from nif_lightning.evaluation.ifeval import CHECKERS, IFEvalPrompt, score  # noqa: E402

SEED = 20240613
SINGLE_CASES = 200  # per id
SINGLE_CASES_SLOW = 120  # per id that runs langdetect or punkt (each call costs milliseconds)
COMBINED_PROMPTS = 300
MIN_AGREEMENT = 99.5
PUNKT_IDS = ("length_constraints:number_sentences", "change_case:capital_word_frequency")

# --------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------

SENTENCES = [
    "The river rises every spring.",
    "I don't think it's a problem, but we can't finish today.",
    "Rock'n'roll was born in the 1950s.",
    "Dr. Smith met Mr. Jones at 5 p.m. in the U.S. office.",
    "This is a well-known fact, e.g. about the sea.",
    "NASA and ESA both LAUNCH rockets.",
    "We'll see; they're late again!",
    "Is it ready? Yes.",
    'He said "Stop." Then he left.',
    "Prices rose 3.5% in Q2.",
    "The quick brown fox jumps over the lazy dog.",
    "Bake the bread at 200 degrees for forty minutes.",
    "Water boils at sea level... usually.",
    "I.B.M. and A.T.&T. are OLD companies.",
    "Fog rolled over the pier and the boats waited.",
    "My answer is yes.",
    "Keep the dice, plan a strategy, and enjoy the war game.",
    "See section 2 for details.",
    "THE MEETING IS AT NOON.",
    "Ok.",
]

FOREIGN = {
    "fr": "Le chat dort sur le canapé pendant que la pluie tombe dehors.",
    "de": "Der Hund schläft den ganzen Tag im Garten, weil die Sonne scheint.",
    "es": "El gato duerme en el sofá mientras la lluvia cae afuera.",
    "it": "Il gatto dorme sul divano mentre fuori piove.",
    "pt": "O gato dorme no sofá enquanto a chuva cai lá fora.",
    "fi": "Kissa nukkuu sohvalla, kun ulkona sataa vettä.",
    "ru": "Кошка спит на диване, пока на улице идёт дождь.",
    "bg": "Котката спи на дивана, докато навън вали дъжд.",
    "vi": "Con mèo ngủ trên ghế sofa trong khi trời mưa bên ngoài.",
    "ko": "고양이가 밖에 비가 오는 동안 소파에서 자고 있습니다.",
    "ja": "猫は外で雨が降っている間、ソファの上で寝ています。",
    "hi": "बाहर बारिश हो रही है और बिल्ली सोफे पर सो रही है।",
    "ar": "القطة تنام على الأريكة بينما يهطل المطر في الخارج.",
    "fa": "گربه روی مبل می‌خوابد در حالی که بیرون باران می‌بارد.",
    "th": "แมวนอนอยู่บนโซฟาขณะที่ฝนตกข้างนอก",
    "sw": "Paka analala kwenye kochi wakati mvua inanyesha nje.",
    "zh": "猫在沙发上睡觉，外面正在下雨。",
}
LANGS = [code for code in FOREIGN if code != "zh"] + ["en"]  # zh: not one of IFEval's codes

KEYWORDS = ["dice", "strategy", "war", "river", "fog", "bread", "pier", "spring", "rockets"]
FORBIDDEN = ["boring", "cheap", "war", "sea", "fact", "river", "the"]
END_PHRASES = [
    "Is there anything else I can help with?",
    "Any other questions?",
    "Peace!",
    "Let me know if you have additional questions.",
]
PROMPTS_TO_REPEAT = [
    "Write a short poem about the sea.",
    "Name a river.",
    "What is the capital of France? Answer briefly.",
]
SPLITTERS = ["SECTION", "Section", "PARAGRAPH", "Day", "Audience"]
PREAMBLES = ["Sure! Here is my answer:", "**Answer**", "Okay.", "Here you go"]
SIGNOFFS = ["Hope this helps!", "*Have a nice day!*", "Thanks.", "---"]
HOSTILE = [
    "",
    "   \n\t ",
    "\x00nul\x00",
    "\ufeffBOM first. P.S. here",
    "line\u2028sep\u2029para",
    "* a\r\n* b\r\n- c",
    "zero\u200bwidth",
    "emoji 😀 🎉 *x*",
    "Ⅰ Ⅱ Ⅲ",
    "ⅰ ⅱ",
    "12345 678",
]


def sentences(rng: random.Random, lo: int = 1, hi: int = 4) -> str:
    return " ".join(rng.choice(SENTENCES) for _ in range(rng.randint(lo, hi)))


def text_blob(rng: random.Random) -> str:
    """A paragraph: English sentences, sometimes other languages or markdown bits."""
    roll = rng.random()
    if roll < 0.12:
        return rng.choice(list(FOREIGN.values()))
    if roll < 0.2:
        return sentences(rng) + " " + rng.choice(list(FOREIGN.values()))
    return sentences(rng)


def bullet(rng: random.Random) -> str:
    marker = rng.choice(
        ["* ", "- ", "*", "-", "  * ", "• ", "+ ", "1. ", "---", "--", "* ", "- ", "**", "*Note:* "]
    )
    body = rng.choice(["", "Eat well.", "Sleep **well**.", "5 degrees", "A *key* point", "x"])
    return marker + body


def highlight(rng: random.Random) -> str:
    word = rng.choice(["very important", "Step 1:", "key", " ", "", "a*b", "note"])
    return rng.choice(["*{}*", "**{}**", "***{}***", "**{}*", "*{}**", "{}"]).format(word)


def postscript(rng: random.Random) -> str:
    marker = rng.choice(
        ["P.S.", "P.S", "P. S.", "p.s.", "**P.S.**", "P.P.S.", "P.P.S", "P. P. S.", "PS", "(P.S."]
    )
    lead = rng.choice(["", "", "See you! ", "> ", "Dr. ", "up"])
    return lead + marker + " " + rng.choice(["Bring snacks.", "Call me.", ""])


def wrap_loose(rng: random.Random, response: str) -> str:
    """Material for the loose reading: a preamble, a sign-off, or emphasis around it all."""
    roll = rng.random()
    if roll < 0.15:
        response = rng.choice(PREAMBLES) + "\n" + response
    elif roll < 0.3:
        response = response + "\n" + rng.choice(SIGNOFFS)
    elif roll < 0.38:
        response = "**" + response + "**"
    elif roll < 0.44:
        response = '"' + response + '"'
    return response


def near(rng: random.Random, count: int, lo: int = 1) -> int:
    return max(lo, count + rng.randint(-2, 2))


def relation(rng: random.Random) -> str:
    return rng.choice(["less than", "at least"])


# --------------------------------------------------------------------------------------------
# One generator per instruction id: rng -> (kwargs, response)
# --------------------------------------------------------------------------------------------


def gen_no_comma(rng):
    return {}, text_blob(rng)


def gen_case(upper: bool):
    def gen(rng):
        text = text_blob(rng)
        roll = rng.random()
        if roll < 0.75:
            text = text.upper() if upper else text.lower()
        elif roll < 0.85:  # mostly right, one word off
            words = text.split()
            i = rng.randrange(len(words))
            words[i] = words[i].lower() if upper else words[i].upper()
            text = " ".join(words)
        return {}, text

    return gen


def gen_number_words(rng):
    text = "\n".join(text_blob(rng) for _ in range(rng.randint(1, 4)))
    count = len(re.findall(r"\w+", text))
    return {"num_words": near(rng, count), "relation": relation(rng)}, text


def gen_number_sentences(rng):
    text = " ".join(text_blob(rng) for _ in range(rng.randint(1, 4)))
    if rng.random() < 0.3:
        text = text.replace(". ", ".\n", rng.randint(0, 3))
    approx = text.count(".") + text.count("!") + text.count("?")
    return {"num_sentences": near(rng, approx), "relation": relation(rng)}, text


def gen_number_paragraphs(rng):
    n = rng.randint(1, 5)
    pieces = [text_blob(rng) for _ in range(n)]
    for _ in range(rng.choice([0, 0, 1, 2])):  # empty pieces, anywhere
        pieces.insert(rng.randint(0, len(pieces)), rng.choice(["", " ", "\n"]))
    seps = ["\n***\n", "***", " *** ", "\n\n***\n\n", "\n******\n", "\n\n"]
    text = pieces[0]
    for piece in pieces[1:]:
        text += rng.choice(seps) + piece
    return {"num_paragraphs": near(rng, n)}, text


def gen_bullets(rng):
    lines = [bullet(rng) for _ in range(rng.randint(0, 6))]
    if rng.random() < 0.5:
        lines.insert(0, rng.choice(["Tips:", "*Tips:*", "**Tips**", "Here are tips."]))
    if rng.random() < 0.3:
        lines.insert(rng.randint(0, len(lines)), "")
    return {"num_bullets": near(rng, len(lines))}, "\n".join(lines)


def gen_title(rng):
    title = rng.choice(
        ["<<Poem of Joy>>", "<<>>", "<<<>>>", "<<>>>", "<< >>", "<<\t>><>>", "<<a>> <<b>>",
         "<Poem>", "<<Line\nbreak>>", "<<<Deep>>>", "", "**<<Bold Title>>**"]
    )  # fmt: skip
    return {}, title + "\n" + text_blob(rng)


def deep_json(rng):
    depth = rng.choice([50, 400, 5000, 50_000])
    return "[" * depth + "]" * depth


def gen_json(rng):
    body = rng.choice(
        ['{"a": 1}', '{"a": [1, 2], "b": {"c": null}}', "[1, 2, 3,]", "{'a': 1}", "6",
         '"text"', "not json", '{"a": 1} trailing', "", "null", "{}"]
    )  # fmt: skip
    if rng.random() < 0.06:
        body = deep_json(rng)
    fence = rng.choice(
        [("", ""), ("```json\n", "\n```"), ("```JSON\n", "\n```"), ("```Json\n", "\n```"),
         ("```\n", "\n```"), ("```python\n", "\n```"), ("```json```", ""), ("```json", "```"),
         ("  ```json\n", "\n```  "), ("Here:\n```json\n", "\n```")]
    )  # fmt: skip
    return {}, fence[0] + body + fence[1]


def gen_highlights(rng):
    parts = [text_blob(rng) if rng.random() < 0.4 else highlight(rng) for _ in range(6)]
    text = rng.choice([" ", "\n", " and "]).join(parts)
    approx = text.count("*") // 2
    return {"num_highlights": near(rng, approx)}, text


def gen_keywords_existence(rng):
    keywords = rng.sample(KEYWORDS, rng.randint(1, 3))
    return {"keywords": keywords}, text_blob(rng) + " " + " ".join(
        rng.choice([k, k.upper(), k + "s", "un" + k, ""]) for k in keywords
    )


def gen_forbidden(rng):
    return {"forbidden_words": rng.sample(FORBIDDEN, rng.randint(1, 3))}, text_blob(rng)


def gen_frequency(rng):
    keyword = rng.choice(KEYWORDS)
    n = rng.randint(0, 5)
    text = text_blob(rng) + " " + " ".join([rng.choice([keyword, keyword.title()])] * n)
    return {"keyword": keyword, "frequency": near(rng, n), "relation": relation(rng)}, text


def gen_end_checker(rng):
    phrase = rng.choice(END_PHRASES)
    tail = rng.choice(
        [phrase, phrase, phrase.lower(), f"**{phrase}**", phrase + '"', phrase + " ",
         phrase + " Bye.", phrase[:-1], f'"{phrase}"']
    )  # fmt: skip
    text = text_blob(rng) + rng.choice([" ", "\n"]) + tail
    if rng.random() < 0.3:
        text = '"' + text + '"'
    return {"end_phrase": phrase}, text


def gen_quotation(rng):
    text = text_blob(rng)
    return {}, rng.choice(['"{}"', "“{}”", '"{}', '{}"', "{}", '"', '""', ' "{}" ']).format(text)


def gen_postscript(rng):
    text = text_blob(rng) + rng.choice(["\n\n", "\n", " "]) + postscript(rng)
    return {"postscript_marker": rng.choice(["P.S.", "P.P.S"])}, text


def gen_placeholders(rng):
    holes = rng.choices(["[name]", "[]", "[[x]]", "[a\nb]", "[link](url)", "[ ]", "name"], k=5)
    text = " ".join(holes) + " " + text_blob(rng)
    return {"num_placeholders": near(rng, text.count("["))}, text


def gen_constrained(rng):
    answer = rng.choice(
        ["My answer is yes.", "My answer is no.", "My answer is maybe.", "my answer is yes.",
         "My answer is yes", "Yes.", "My answer is **yes**."]
    )  # fmt: skip
    return {}, rng.choice(["{} {}", "{1}", "{1} {0}"]).format(text_blob(rng), answer)


def gen_sections(rng):
    splitter = rng.choice(SPLITTERS)
    n = rng.randint(1, 5)
    header = rng.choice(["{s} {i}", "{s}{i}", "{l} {i}", "**{s} {i}**", "{s} X", "# {s} {i}"])
    parts = [header.format(s=splitter, l=splitter.lower(), i=i + 1) for i in range(n)]
    text = "\n".join(p + "\n" + text_blob(rng) for p in parts)
    return {"section_spliter": splitter, "num_sections": near(rng, n)}, text


def gen_letter(rng):
    # Letters a-z only. IFEval's data also asks for `#` and `!`, where lm-eval replaces the
    # letter with a random one and Google's original (and ours) count the literal character:
    # that case is left out of this comparison on purpose (test_eval_ifeval.py checks ours).
    letter = rng.choice(string.ascii_lowercase + "AZ")
    text = text_blob(rng) + " " + letter * rng.randint(0, 6)
    count = text.lower().count(letter.lower())
    return {"letter": letter, "let_frequency": near(rng, count), "let_relation": relation(rng)}, (
        text
    )


def gen_capital_words(rng):
    text = " ".join(
        rng.choice([text_blob(rng), "WELL-KNOWN", "I DON'T agree.", "U.S.A.", "OK.", "NASA"])
        for _ in range(rng.randint(1, 4))
    )
    approx = sum(1 for w in text.split() if w.isupper())
    kwargs = {"capital_frequency": near(rng, approx), "capital_relation": relation(rng)}
    return kwargs, text


def gen_language(rng):
    language = rng.choice(LANGS)
    if rng.random() < 0.5:
        text = FOREIGN.get(language, "The cat sleeps on the sofa while it rains outside.")
    else:
        text = text_blob(rng)
    return {"language": language}, text


def gen_nth_paragraph(rng):
    n = rng.randint(1, 4)
    nth = rng.randint(1, n)
    first_word = rng.choice(["summary", "my", "salt", "the", "first"])
    paragraphs = [text_blob(rng) for _ in range(n)]
    opener = rng.choice(
        ["{w}", "{W}", '"{w}', "'{w}", "\"'{w}", "'\"{w}", "{w},", "{w}'s", "**{w}**", "{w}s"]
    )
    paragraphs[nth - 1] = opener.format(w=first_word, W=first_word.title()) + " is here."
    if rng.random() < 0.2:
        paragraphs.insert(rng.randint(0, n), rng.choice(["", " "]))
    text = rng.choice(["\n\n", "\n\n\n"]).join(paragraphs)
    kwargs = {"num_paragraphs": near(rng, n), "nth_paragraph": nth, "first_word": first_word}
    kwargs["nth_paragraph"] = min(nth, kwargs["num_paragraphs"])  # valid: nth <= num
    return kwargs, text


def gen_two_responses(rng):
    a, b = text_blob(rng), rng.choice([text_blob(rng), None])
    b = a if b is None else b
    sep = rng.choice(["\n******\n", "******", "\n******\n******\n", "************", "\n***\n"])
    text = a + sep + b
    if rng.random() < 0.2:
        text = rng.choice(["******\n" + text, text + "\n******"])
    return {}, text


def gen_repeat(rng):
    prompt = rng.choice(PROMPTS_TO_REPEAT)
    lead = rng.choice([prompt, prompt.upper(), " " + prompt, "Sure. " + prompt, prompt[:-1]])
    return {"prompt_to_repeat": prompt}, lead + "\n" + text_blob(rng)


GENERATORS = {
    "punctuation:no_comma": gen_no_comma,
    "change_case:english_lowercase": gen_case(upper=False),
    "change_case:english_capital": gen_case(upper=True),
    "length_constraints:number_words": gen_number_words,
    "length_constraints:number_sentences": gen_number_sentences,
    "length_constraints:number_paragraphs": gen_number_paragraphs,
    "detectable_format:number_bullet_lists": gen_bullets,
    "detectable_format:title": gen_title,
    "detectable_format:json_format": gen_json,
    "detectable_format:number_highlighted_sections": gen_highlights,
    "keywords:existence": gen_keywords_existence,
    "keywords:forbidden_words": gen_forbidden,
    "keywords:frequency": gen_frequency,
    "startend:end_checker": gen_end_checker,
    "startend:quotation": gen_quotation,
    "detectable_content:postscript": gen_postscript,
    "detectable_content:number_placeholders": gen_placeholders,
    "detectable_format:constrained_response": gen_constrained,
    "detectable_format:multiple_sections": gen_sections,
    "keywords:letter_frequency": gen_letter,
    "change_case:capital_word_frequency": gen_capital_words,
    "language:response_language": gen_language,
    "length_constraints:nth_paragraph_first_word": gen_nth_paragraph,
    "combination:two_responses": gen_two_responses,
    "combination:repeat_prompt": gen_repeat,
}
LANGDETECT_IDS = (
    "language:response_language",
    "change_case:english_capital",
    "change_case:english_lowercase",
)
WRAPS_WHOLE = ("detectable_format:json_format", "startend:quotation", "combination:two_responses")


def single_case(rng: random.Random, iid: str) -> tuple[dict, str]:
    kwargs, response = GENERATORS[iid](rng)
    roll = rng.random()
    if roll < 0.03:
        response = rng.choice(HOSTILE)
    elif roll < 0.06:
        response = rng.choice(["", " ", "\n\n"])
    elif iid not in WRAPS_WHOLE:
        response = wrap_loose(rng, response)
    return kwargs, response


def combined_case(rng: random.Random, conflicts: dict) -> tuple[list[str], list[dict], str]:
    """2-4 ids that IFEval lets share a prompt; their fragments joined into one response."""
    ids: list[str] = []
    wanted = rng.randint(2, 4)
    for iid in rng.sample(sorted(GENERATORS), len(GENERATORS)):
        if len(ids) == wanted:
            break
        if iid in ids or any(iid in conflicts.get(other, ()) for other in ids):
            continue
        if any(other in conflicts.get(iid, ()) for other in ids):
            continue
        ids.append(iid)
    kwargs, fragments = [], []
    for iid in ids:
        kw, fragment = GENERATORS[iid](rng)
        kwargs.append(kw)
        fragments.append(fragment)
    middle = [f for iid, f in zip(ids, fragments, strict=True) if iid not in WRAPS_WHOLE]
    rng.shuffle(middle)
    response = "\n\n".join(middle)
    for iid, fragment in zip(ids, fragments, strict=True):
        if iid == "startend:quotation":  # quote the whole answer, mostly
            response = '"' + response + '"' if rng.random() < 0.7 else fragment + response
        elif iid in WRAPS_WHOLE:  # JSON or two answers: the rest goes before or after it
            parts = [fragment, response] if rng.random() < 0.5 else [response, fragment]
            response = "\n".join(p for p in parts if p)
    return ids, kwargs, wrap_loose(rng, response)


# --------------------------------------------------------------------------------------------
# The reference, imported offline
# --------------------------------------------------------------------------------------------


def write_standin_punkt(root) -> None:
    """A small punkt model in nltk's `punkt_tab` format: common English abbreviations and
    sentence starters. A stand-in for the real model (not installable offline)."""
    folder = root / "tokenizers" / "punkt_tab" / "english"
    folder.mkdir(parents=True)
    abbreviations = ["dr", "mr", "mrs", "ms", "st", "prof", "inc", "jr", "e.g", "i.e", "etc"]
    abbreviations += ["vs", "u.s", "p.m", "a.m", "no", "fig"]
    (folder / "abbrev_types.txt").write_text("\n".join(abbreviations) + "\n")
    (folder / "sent_starters.txt").write_text("he\nshe\nthe\nthis\nit\nthey\nwe\n")
    (folder / "collocations.tab").write_text("")
    (folder / "ortho_context.tab").write_text("")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """lm-eval's `utils` module (the two scoring functions), with punkt (real or stand-in) and
    langdetect set up identically for both sides; everything restored afterwards."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(nltk, "download", lambda *a, **k: False)  # import offline: fetch nothing
        from lm_eval.tasks.ifeval import instructions, instructions_registry, instructions_util
        from lm_eval.tasks.ifeval import utils as ref_utils

    def punkt_model_available() -> bool:
        try:
            nltk.tokenize.PunktTokenizer("english")
        except LookupError:
            return False
        return True

    def clear_punkt_caches():
        ifeval._punkt.cache_clear()
        instructions_util._get_sentence_tokenizer.cache_clear()
        nltk_cache = getattr(nltk.tokenize, "_get_punkt_tokenizer", None)  # nltk's own
        if hasattr(nltk_cache, "cache_clear"):
            nltk_cache.cache_clear()

    with pytest.MonkeyPatch.context() as mp:
        # Ours without punkt data first (the fallback; measured, not asserted).
        clear_punkt_caches()
        fallback = ifeval._punkt() is None
        punkt = "real punkt_tab data"
        if not punkt_model_available():
            root = tmp_path_factory.mktemp("nltk_data")
            write_standin_punkt(root)
            mp.setattr(nltk.data, "path", [str(root), *nltk.data.path])
            punkt = "stand-in punkt model (real punkt_tab data not installed)"
        clear_punkt_caches()
        assert ifeval._punkt() is not None
        # Same language for the same text on both sides, and fast: seed 0, memoised.
        langdetect.DetectorFactory.seed = 0
        mp.setattr(langdetect, "detect", functools.lru_cache(maxsize=None)(langdetect.detect))
        ifeval._language.cache_clear()
        quiet = logging.getLogger(instructions.__name__)
        mp.setattr(quiet, "disabled", True)
        # nltk >= 3.10 compiles RegexpTokenizer(r"\w+") with the `regex` engine (marks belong to
        # the word), as ours counts; older nltk used stdlib `re`, which cuts Hindi or Persian
        # words at each vowel sign. Under such an nltk, number_words is printed, not asserted.
        unicode_words = len(nltk.tokenize.RegexpTokenizer(r"\w+").tokenize("बिल्ली")) == 1
        yield {
            "utils": ref_utils,
            "unicode_words": unicode_words,
            "conflicts": instructions_registry.INSTRUCTION_CONFLICTS,
            "punkt": punkt,
            "fallback_possible": fallback,
        }
    clear_punkt_caches()
    ifeval._language.cache_clear()


def ref_verdicts(utils, ids, kwargs, prompt, response) -> tuple[list[bool], list[bool]]:
    inp = utils.InputExample(key=0, instruction_id_list=ids, prompt=prompt, kwargs=kwargs)
    random.seed(0)  # the reference draws from `random` for missing kwargs (none are)
    strict = utils.test_instruction_following_strict(inp, response).follow_instruction_list
    random.seed(0)
    loose = utils.test_instruction_following_loose(inp, response).follow_instruction_list
    return strict, loose


# --------------------------------------------------------------------------------------------
# The comparison
# --------------------------------------------------------------------------------------------


def build_cases(conflicts) -> list[tuple[list[str], list[dict], str]]:
    rng = random.Random(SEED)
    cases = []
    for iid in sorted(GENERATORS):
        n = SINGLE_CASES_SLOW if iid in LANGDETECT_IDS + PUNKT_IDS else SINGLE_CASES
        for _ in range(n):
            kwargs, response = single_case(rng, iid)
            cases.append(([iid], [kwargs], response))
    for _ in range(COMBINED_PROMPTS):
        cases.append(combined_case(rng, conflicts))
    return cases


def compare(reference, cases):
    prompts = [
        IFEvalPrompt(str(n), "p", tuple(ids), tuple(kw)) for n, (ids, kw, _) in enumerate(cases)
    ]
    ours = score(prompts, {str(n): r for n, (_, _, r) in enumerate(cases)})["per_prompt"]
    per_id = defaultdict(lambda: [0, 0, 0])  # id -> [cases, strict agree, loose agree]
    prompt_agree = [0, 0, 0, 0]  # combined prompts, strict agree, loose agree, ref crashed
    examples = []
    for (ids, kwargs, response), mine in zip(cases, ours, strict=True):
        prompt = next((k["prompt_to_repeat"] for k in kwargs if "prompt_to_repeat" in k), "p")
        try:
            strict, loose = ref_verdicts(reference["utils"], ids, kwargs, prompt, response)
        except RecursionError:
            # Deeply nested JSON: the reference's json.loads raises and aborts the call (as it
            # aborts lm-eval's whole scoring run); ours scores it "not JSON". Counted apart.
            at = ids.index("detectable_format:json_format")
            assert (mine["strict"][at], mine["loose"][at]) == (False, False)
            prompt_agree[3] += 1
            continue
        for i, iid in enumerate(ids):
            row = per_id[iid]
            row[0] += 1
            row[1] += mine["strict"][i] == strict[i]
            row[2] += mine["loose"][i] == loose[i]
            if (mine["strict"][i], mine["loose"][i]) != (strict[i], loose[i]):
                examples.append((iid, kwargs[i], response, mine, (strict, loose)))
        if len(ids) > 1:
            prompt_agree[0] += 1
            prompt_agree[1] += all(mine["strict"]) == all(strict)
            prompt_agree[2] += all(mine["loose"]) == all(loose)
    return per_id, prompt_agree, examples


def table(per_id) -> list[str]:
    lines = [f"{'instruction id':48} {'cases':>6} {'strict %':>9} {'loose %':>8}"]
    for iid in sorted(per_id):
        n, s, lo = per_id[iid]
        lines.append(f"{iid:48} {n:6d} {100 * s / n:9.2f} {100 * lo / n:8.2f}")
    return lines


def test_generator_covers_every_id():
    assert set(GENERATORS) == set(CHECKERS)


def test_scorer_agrees_with_reference_per_id(reference, capsys):
    cases = build_cases(reference["conflicts"])
    per_id, prompt_agree, examples = compare(reference, cases)
    with capsys.disabled():
        print(
            f"\nIFEval vs lm-eval's reference checkers (seed {SEED}; punkt: {reference['punkt']})"
        )
        print("\n".join(table(per_id)))
        n, s, lo, crashed = prompt_agree
        print(f"reference crashed (RecursionError, deep JSON; ours: not JSON): {crashed}")
        print(f"combined prompts: {n}, prompt-level agreement strict {100 * s / n:.2f}% "
              f"loose {100 * lo / n:.2f}%")  # fmt: skip
        for iid, kwargs, response, mine, ref in examples[:10]:
            print(f"  disagreement {iid} {kwargs} {response!r}: ours {mine} ref {ref}")
    assert set(per_id) == set(CHECKERS)
    low = {
        iid: (round(100 * s / n, 2), round(100 * lo / n, 2))
        for iid, (n, s, lo) in per_id.items()
        if 100 * s / n < MIN_AGREEMENT or 100 * lo / n < MIN_AGREEMENT
    }
    if not reference["unicode_words"]:
        low.pop("length_constraints:number_words", None)
    assert not low, f"agreement below {MIN_AGREEMENT}% (strict, loose): {low}"
    assert 100 * prompt_agree[1] / prompt_agree[0] >= MIN_AGREEMENT
    assert 100 * prompt_agree[2] / prompt_agree[0] >= MIN_AGREEMENT


def test_punkt_fallback_agreement_is_reported(reference, capsys):
    """Without punkt data ours approximates the two punkt ids; how close, for the record."""
    rng = random.Random(SEED + 1)
    cases = [
        ([iid], [kw], r)
        for iid in PUNKT_IDS
        for kw, r in (single_case(rng, iid) for _ in range(SINGLE_CASES_SLOW))
    ]

    def forget_tokens():
        ifeval._sentences.cache_clear()
        ifeval._word_tokens.cache_clear()

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ifeval, "_punkt", lambda: None)
        forget_tokens()
        got = score([IFEvalPrompt("k", "p", (PUNKT_IDS[0],), ({"num_sentences": 1,
                                                               "relation": "at least"},))],
                    {"k": "One. Two."})  # fmt: skip
        assert got["approximated_ids"] == [PUNKT_IDS[0]]
        per_id, _, _ = compare(reference, cases)
    forget_tokens()
    with capsys.disabled():
        print(f"\nours without punkt data vs the reference with {reference['punkt']}:")
        print("\n".join(table(per_id)))
    for n, s, lo in per_id.values():
        assert s / n > 0.5 and lo / n > 0.5  # an approximation, not noise


def test_deep_json_scores_not_json_in_ours_and_raises_in_reference(reference):
    deep = "[" * 100_000 + "]" * 100_000
    prompts = [IFEvalPrompt("d", "p", ("detectable_format:json_format",), ({},))]
    got = score(prompts, {"d": deep})
    assert got["per_prompt"][0] == {"key": "d", "strict": [False], "loose": [False]}
    with pytest.raises(RecursionError):  # why ours catches it: the reference aborts
        ref_verdicts(reference["utils"], ["detectable_format:json_format"], [{}], "p", deep)
