"""`nif export llamafactory DIR OUT`: a generated folder as a LLaMA-Factory dataset.

LLaMA-Factory reads a dataset folder holding the data files and a `dataset_info.json` whose
entry maps alpaca columns to fields. The paper trained with exactly this (template `vanilla`):
prompt -> `instruction`, completion -> `output`, an empty `input`. Files are written atomically
(`store`), so the folder never holds a half-written file.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from data_gen.shards import read_rows
from data_gen.store import check_dataset_dir, write_json_atomic

FORMATS = ("llamafactory",)


def export_llamafactory(src: str | Path, out: str | Path, *, name: str = "nif") -> Path:
    """Write `OUT/<name>.json` (alpaca records) and add `<name>` to `OUT/dataset_info.json`."""
    src, out = Path(src), Path(out)
    check_dataset_dir(src, what="DIR")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ValueError(f"`--name` must be letters, digits, '_', '.' or '-', got {name!r}")
    out.mkdir(parents=True, exist_ok=True)
    records = [
        {"instruction": row["prompt"], "input": "", "output": row["completion"]}
        for row in read_rows(src)
    ]
    data_file = out / f"{name}.json"
    write_json_atomic(data_file, records, indent=None)

    info_path = out / "dataset_info.json"
    info = json.loads(info_path.read_text(encoding="utf-8")) if info_path.is_file() else {}
    info[name] = {
        "file_name": data_file.name,
        "columns": {"prompt": "instruction", "query": "input", "response": "output"},
    }
    write_json_atomic(info_path, info)
    return data_file
