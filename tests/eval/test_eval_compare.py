"""`nif eval compare`: the table from fixed eval.json inputs, exactly."""

import json

import pytest

from nif_lightning.cli import main
from nif_lightning.evaluation.compare import compare

OLL = {
    "arc_challenge": 52.1,
    "hellaswag": 77.25,
    "mmlu": 45.5,
    "truthfulqa_mc2": 39.0,
    "winogrande": 74.0,
    "gsm8k": 14.2,
}


def _run_dir(root, name, suites, layout="flat"):
    run = root / name
    where = run / "eval" if layout == "nested" else run
    where.mkdir(parents=True)
    data = {"name": name, "model": f"/models/{name}", "template": "one_shot", "suites": suites}
    (where / "eval.json").write_text(json.dumps(data), encoding="utf-8")
    return run


def _fixtures(tmp_path):
    base = _run_dir(
        tmp_path,
        "base",
        {
            "judge": {"single": {"score": 3.875}, "pairwise": None},
            "oll": {
                "tasks": {t: {"score": s} for t, s in OLL.items()},
                "oll_average": 50.34,
            },
            "ifeval": {"prompt_level_strict": 20.0, "inst_level_loose": 31.25},
        },
    )
    lora = _run_dir(
        tmp_path,
        "lora",
        {
            "judge": {
                "single": {"score": 5.125},
                "pairwise": {"win_rate": 62.5, "arena_hard_score": 66.67},
            }
        },
        layout="nested",  # the `nif run` layout: RUN_DIR/eval/eval.json
    )
    return base, lora


EXPECTED = """\
| Model | Template | MT-Bench | WR % | AH % | ARC | HellaSwag | MMLU | TruthfulQA | Winogrande | GSM8K | OLL | IFEval strict | IFEval loose |
|---|---|---|---|---|---|---|---|---|---|---|---|---|---|
| base | one_shot | 3.88 | - | - | 52.10 | 77.25 | 45.50 | 39.00 | 74.00 | 14.20 | 50.34 | 20.00 | 31.25 |
| lora | one_shot | 5.12 | 62.50 | 66.67 | - | - | - | - | - | - | - | - | - |
"""  # noqa: E501


def test_table_from_fixed_inputs(tmp_path):
    base, lora = _fixtures(tmp_path)
    table = compare([base, lora], tmp_path / "cmp")
    assert table == EXPECTED
    assert (tmp_path / "cmp" / "compare.md").read_text() == EXPECTED
    data = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert data["columns"][:5] == ["Model", "Template", "MT-Bench", "WR %", "AH %"]
    assert data["rows"][0]["ARC"] == 52.1 and data["rows"][1]["WR %"] == 62.5
    assert data["rows"][1]["OLL"] is None


def test_cli_compare(tmp_path, capsys):
    base, lora = _fixtures(tmp_path)
    assert main(["eval", "compare", str(base), str(lora), "--out", str(tmp_path / "o")]) == 0
    assert capsys.readouterr().out == EXPECTED


def test_compare_bad_input(tmp_path, capsys):
    assert main(["eval", "compare", str(tmp_path / "nowhere")]) == 2
    assert "holds no eval.json" in capsys.readouterr().err
    assert main(["eval", "compare", "--out", str(tmp_path)]) == 2
    assert "at least one RUN_DIR" in capsys.readouterr().err
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "eval.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="eval.json: not valid JSON"):
        compare([broken], tmp_path / "o")
