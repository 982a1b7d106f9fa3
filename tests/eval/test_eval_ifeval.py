"""IFEval checks: every checker passes on a response that follows it and fails on one that
does not; scoring from a local IFEval-format file gives IFEval's four accuracies."""

import json
import sys

import pytest

from nif_lightning.evaluation import ifeval
from nif_lightning.evaluation.ifeval import CHECKERS, check_instruction, load_prompts, score

# instruction id -> (kwargs, a response that follows it, one that does not)
CASES = {
    "punctuation:no_comma": ({}, "Gears trade speed for force.", "Gears, wheels and chains."),
    "change_case:english_lowercase": ({}, "please water them daily.", "Please water them."),
    "change_case:english_capital": ({}, "CAUTION: WET FLOOR", "CAUTION: Wet floor"),
    "length_constraints:number_words": (
        {"num_words": 5, "relation": "less than"},
        "Bread dries out.",
        "Bread loses water to the air over time.",
    ),
    "length_constraints:number_sentences": (
        {"num_sentences": 3, "relation": "at least"},
        "It rains. The fog rolls in. Boats wait.",
        "It rains. Boats wait.",
    ),
    "length_constraints:number_paragraphs": (
        {"num_paragraphs": 2},
        "Maps began on clay.\n***\nPaper came later.",
        "Maps began on clay. Paper came later.",
    ),
    "detectable_format:number_bullet_lists": (
        {"num_bullets": 3},
        "Tips:\n* feed it\n* keep it warm\n- stir daily",
        "Tips:\n* feed it\n* keep it warm",
    ),
    "detectable_format:title": ({}, "<<The Keeper>>\nA lamp burns.", "The Keeper\nA lamp burns."),
    "detectable_format:json_format": (
        {},
        '```json\n{"water": 100, "ethanol": 78.4}\n```',
        "water: 100, ethanol: 78.4",
    ),
    "detectable_format:number_highlighted_sections": (
        {"num_highlights": 2},
        "A *grey sky* over a *quiet pier*.",
        "A *grey sky* over a quiet pier.",
    ),
    "keywords:existence": (
        {"keywords": ["dice", "strategy"]},
        "Roll the Dice and plan your strategy.",
        "Roll the dice and enjoy.",
    ),
    "keywords:forbidden_words": (
        {"forbidden_words": ["boring", "cheap"]},
        "A lively game for all ages.",
        "Not boring at all.",
    ),
    "keywords:frequency": (
        {"keyword": "fog", "frequency": 2, "relation": "at least"},
        "Fog at dawn; more fog by noon.",
        "Fog at dawn; rain by noon.",
    ),
    "startend:end_checker": (
        {"end_phrase": "Any other questions?"},
        "Maps matter. Any other questions?",
        "Any other questions? Maps matter.",
    ),
    "startend:quotation": ({}, '"Come to the picnic!"', "Come to the picnic!"),
    "detectable_content:postscript": (
        {"postscript_marker": "P.S."},
        "See you there.\nP.S. Bring a hat.",
        "See you there. Bring a hat.",
    ),
    "detectable_content:number_placeholders": (
        {"num_placeholders": 2},
        "Dear [name], meet me at [address].",
        "Dear [name], meet me at the pier.",
    ),
    "detectable_format:constrained_response": (
        {},
        "Tides follow the moon. My answer is yes.",
        "Yes, tides follow the moon.",
    ),
    "detectable_format:multiple_sections": (
        {"section_spliter": "SECTION", "num_sections": 2},
        "SECTION 1\nFlour and water.\nSECTION 2\nBake it.",
        "SECTION 1\nFlour and water, then bake it.",
    ),
    "keywords:letter_frequency": (
        {"letter": "z", "let_frequency": 3, "let_relation": "at least"},
        "Zebras zigzag in the haze.",
        "Zebras run in the haze.",
    ),
    "change_case:capital_word_frequency": (
        {"capital_frequency": 2, "capital_relation": "less than"},
        "Only ONE shout here.",
        "NASA and ESA both LAUNCH rockets.",
    ),
    "language:response_language": (
        {"language": "de"},
        "Der Hund schläft den ganzen Tag im Garten, weil die Sonne scheint und es warm ist.",
        "The dog sleeps all day in the garden because the sun is shining and it is warm.",
    ),
    "length_constraints:nth_paragraph_first_word": (
        {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "salt"},
        'Boil the water.\n\n"Salt it," the cook said.',
        "Boil the water.\n\nThen salt it.",
    ),
    "combination:two_responses": (
        {},
        "Bake at dawn.\n******\nBake at dusk.",
        "Bake at dawn.\n******\nBake at dawn.",
    ),
    "combination:repeat_prompt": (
        {"prompt_to_repeat": "Name a river."},
        "Name a river. The Danube.",
        "The Danube.",
    ),
}


def test_every_checker_has_a_case():
    assert set(CASES) == set(CHECKERS)
    assert len(CHECKERS) == 25  # all of IFEval's instruction ids


def test_checker_edge_cases_follow_ifeval():
    paragraphs = {"num_paragraphs": 2}
    # A stray divider before the first or after the last paragraph is forgiven, not between.
    assert check_instruction("length_constraints:number_paragraphs", "***\nA.\n***\nB.", paragraphs)
    assert check_instruction("length_constraints:number_paragraphs", "A.\n***\nB.\n***", paragraphs)
    three = "A.\n***\n\n***\nB."
    assert not check_instruction("length_constraints:number_paragraphs", three, paragraphs)
    nth = {"num_paragraphs": 3, "nth_paragraph": 2, "first_word": "salt"}
    # The paragraph count must match too, not only the first word.
    assert not check_instruction(
        "length_constraints:nth_paragraph_first_word", "Boil.\n\nSalt it.", nth
    )
    # No detectable language (only digits) is not held against the answer, as in IFEval.
    assert check_instruction("language:response_language", "12345", {"language": "fr"})


# IFEval's rules where they surprise: (id, kwargs, response, strict verdict, loose verdict).
# Each was a disagreement with the reference checkers (../shared/reviews/ifeval-vs-reference.md).
QUIRKS = [
    # `don't` is two words (IFEval's words are runs of \w).
    (
        "length_constraints:number_words",
        {"num_words": 4, "relation": "at least"},
        "I don't go.",
        True,
        True,
    ),
    # `*Note:*`, `-text` and `---` lines are bullets; `**bold**` lines are not.
    (
        "detectable_format:number_bullet_lists",
        {"num_bullets": 3},
        "*Note:* two tips.\n* Eat well.\n* Sleep well.",
        True,
        True,
    ),
    (
        "detectable_format:number_bullet_lists",
        {"num_bullets": 2},
        "* Eat well.\n* Sleep well.\n---",
        False,
        True,
    ),
    (
        "detectable_format:number_bullet_lists",
        {"num_bullets": 3},
        "-Eat well.\n-Sleep well.\n-Walk daily.",
        True,
        True,
    ),
    (
        "detectable_format:number_bullet_lists",
        {"num_bullets": 1},
        "**Tips**\n* Eat well.",
        True,
        True,
    ),
    # P.S. anywhere in a line, spaced, in bold, or inside P.P.S.
    (
        "detectable_content:postscript",
        {"postscript_marker": "P.S."},
        "Thanks for reading.\n\nP.P.S. Bring snacks.",
        True,
        True,
    ),
    (
        "detectable_content:postscript",
        {"postscript_marker": "P.S."},
        "See you soon! P.S. Bring snacks.",
        True,
        True,
    ),
    (
        "detectable_content:postscript",
        {"postscript_marker": "P.S."},
        "See you soon!\n\n**P. S.** Bring snacks.",
        True,
        True,
    ),
    (
        "detectable_content:postscript",
        {"postscript_marker": "P.P.S"},
        "See you soon!\n\nP.S. Bring snacks.",
        False,
        False,
    ),
    # A fully quoted answer still ends with its end phrase.
    (
        "startend:end_checker",
        {"end_phrase": "Any other questions?"},
        '"The sky is blue. Any other questions?"',
        True,
        True,
    ),
    # `***x***` is two highlights; `**a** and **b**` two, not three.
    (
        "detectable_format:number_highlighted_sections",
        {"num_highlights": 2},
        "This is ***very important*** to remember.",
        True,
        True,
    ),
    (
        "detectable_format:number_highlighted_sections",
        {"num_highlights": 3},
        "**Step 1:** mix the flour and **Step 2:** bake it.",
        False,
        False,
    ),
    (
        "detectable_format:number_highlighted_sections",
        {"num_highlights": 1},
        "This is **bold* text.",
        False,
        False,
    ),
    # In English as well as in the right case; a script without case is neither.
    (
        "change_case:english_capital",
        {},
        "LE CHAT DORT SUR LE CANAPÉ PENDANT QUE LA PLUIE TOMBE DEHORS.",
        False,
        False,
    ),
    ("change_case:english_capital", {}, "猫はソファの上で寝ています。", False, False),
    ("change_case:english_lowercase", {}, "बिल्ली सोफे पर सो रही है।", False, False),
    ("change_case:english_capital", {}, "THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG.", True, True),
    # Empty pieces between separators fail; one stray divider at each end is forgiven.
    ("combination:two_responses", {}, "Answer one.\n******\n******\nAnswer two.", False, False),
    (
        "length_constraints:number_paragraphs",
        {"num_paragraphs": 1},
        "******\nOnly paragraph.",
        False,
        True,
    ),
    # `"'word`: IFEval strips `'` then `"`, so the first word reads as empty.
    (
        "length_constraints:nth_paragraph_first_word",
        {"first_word": "summary", "num_paragraphs": 2, "nth_paragraph": 2},
        "Intro text.\n\n\"'Summary' is what follows.",
        False,
        False,
    ),
    (
        "length_constraints:nth_paragraph_first_word",
        {"first_word": "summary", "num_paragraphs": 2, "nth_paragraph": 2},
        'Intro text.\n\n\'"Summary" is what follows.',
        True,
        True,
    ),
    # ```json``` loses both fences; bracket-only titles are empty.
    ("detectable_format:json_format", {}, '```json```{"a": 1}', True, True),
    ("detectable_format:title", {}, "<<<>>>\nA poem.", False, False),
    ("detectable_format:title", {}, "<<\t>><>>", True, True),
    # Google's IFEval counts any character asked for (its data asks for `#`).
    (
        "keywords:letter_frequency",
        {"letter": "#", "let_frequency": 2, "let_relation": "at least"},
        "# Title\n## Part",
        True,
        True,
    ),
]


@pytest.mark.parametrize("iid, kwargs, response, strict, loose", QUIRKS)
def test_ifeval_quirks(tmp_path, iid, kwargs, response, strict, loose):
    record = {"key": "q", "prompt": "p", "instruction_id_list": [iid], "kwargs": [kwargs]}
    got = score(load_prompts(_write(tmp_path / "q.jsonl", [record])), {"q": response})
    assert got["per_prompt"][0] == {"key": "q", "strict": [strict], "loose": [loose]}


@pytest.mark.parametrize("depth", [1_000, 100_000])
def test_deep_json_is_not_json_never_a_crash(depth):
    for deep in ("[" * depth + "]" * depth, '{"a": ' * depth + "1" + "}" * depth):
        assert check_instruction("detectable_format:json_format", deep, {}) is False
        fenced = "```json\n" + deep + "\n```"
        assert check_instruction("detectable_format:json_format", fenced, {}) is False
    assert check_instruction("detectable_format:json_format", "[" * 50 + "]" * 50, {}) is True


@pytest.mark.parametrize("iid", ["change_case:english_capital", "language:response_language"])
def test_language_checks_need_langdetect(tmp_path, monkeypatch, iid):
    monkeypatch.setitem(sys.modules, "langdetect", None)  # as if not installed
    record = {
        "key": "x",
        "prompt": "p",
        "instruction_id_list": [iid],
        "kwargs": [{"language": "de"}],
    }
    with pytest.raises(ValueError, match=f"x.jsonl:1: {iid} needs langdetect: pip install"):
        load_prompts(_write(tmp_path / "x.jsonl", [record]))


def test_letter_must_be_one_character(tmp_path):
    record = {
        "key": "x",
        "prompt": "p",
        "instruction_id_list": ["keywords:letter_frequency"],
        "kwargs": [{"letter": "ab", "let_frequency": 2, "let_relation": "at least"}],
    }
    with pytest.raises(ValueError, match="x.jsonl:1: .* letter must be one character"):
        load_prompts(_write(tmp_path / "x.jsonl", [record]))


@pytest.mark.parametrize("iid", sorted(CASES))
def test_checker_passes_and_fails(iid):
    kwargs, good, bad = CASES[iid]
    assert check_instruction(iid, good, kwargs) is True
    assert check_instruction(iid, bad, kwargs) is False
    assert check_instruction(iid, "   ", kwargs) is False  # an empty answer follows nothing


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_score_from_local_file_strict_and_loose(tmp_path):
    prompts = load_prompts(
        _write(
            tmp_path / "p.jsonl",
            [
                {
                    "key": "a",
                    "prompt": "No commas, all lowercase.",
                    "instruction_id_list": [
                        "punctuation:no_comma",
                        "change_case:english_lowercase",
                    ],
                    "kwargs": [{}, {}],
                },
                {
                    "key": "b",
                    "prompt": "End with 'Bye now.'",
                    "instruction_id_list": ["startend:end_checker"],
                    "kwargs": [{"end_phrase": "Bye now."}],
                },
                {
                    "key": "c",
                    "prompt": "Answer in JSON.",
                    "instruction_id_list": ["detectable_format:json_format"],
                    "kwargs": [{}],
                },
            ],
        )
    )
    responses = {
        # follows both (langdetect must call it English: "all good here" reads as Welsh)
        "a": "this answer is all in lowercase and has no commas at all",
        # follows only once the sign-off line is dropped: a loose pass, a strict fail
        "b": "Here you go. Bye now.\nHope that helps!",
        "c": "not json at all",  # fails both ways
    }
    got = score(prompts, responses)
    assert got["prompts"] == 3 and got["instructions"] == 4
    assert got["prompt_level_strict"] == pytest.approx(100 / 3, abs=0.01)
    assert got["inst_level_strict"] == 50.0
    assert got["prompt_level_loose"] == pytest.approx(200 / 3, abs=0.01)
    assert got["inst_level_loose"] == 75.0
    assert got["per_prompt"][1] == {"key": "b", "strict": [False], "loose": [True]}


def test_shipped_prompt_file_loads():
    from pathlib import Path

    path = Path(ifeval.__file__).parent / "data" / "ifeval_prompts.jsonl"
    prompts = load_prompts(path)
    assert len(prompts) >= 10
    used = {i for p in prompts for i in p.instruction_id_list}
    assert used == set(CHECKERS)  # the shipped prompts exercise every checker


@pytest.mark.parametrize(
    "record, message",
    [
        (
            {"key": "x", "prompt": "p", "instruction_id_list": ["made:up"], "kwargs": [{}]},
            "made:up",
        ),
        (
            {"key": "x", "prompt": "p", "instruction_id_list": [], "kwargs": [{}]},
            "differ in length",
        ),
        (
            {
                "key": "x",
                "prompt": "p",
                "instruction_id_list": ["keywords:existence"],
                "kwargs": [{}],
            },
            "needs kwargs ['keywords']",
        ),
        ({"key": "x", "prompt": "p", "kwargs": []}, "missing field 'instruction_id_list'"),
    ],
)
def test_bad_prompt_file_refused_with_line(tmp_path, record, message):
    path = _write(tmp_path / "bad.jsonl", [record])
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")) as err:
        load_prompts(path)
    assert "bad.jsonl:1" in str(err.value)


def test_missing_response_refused(tmp_path):
    record = {"key": "k", "prompt": "p", "instruction_id_list": ["startend:quotation"]}
    prompts = load_prompts(_write(tmp_path / "p.jsonl", [{**record, "kwargs": [{}]}]))
    with pytest.raises(ValueError, match="no response for IFEval prompt key"):
        score(prompts, {})
