"""`nif export llamafactory DIR OUT`: a generated folder as a LLaMA-Factory dataset.

LLaMA-Factory reads a dataset folder holding the data files and a `dataset_info.json` whose
entry maps alpaca columns to fields. The paper trained with exactly this (template `vanilla`):
prompt -> `instruction`, completion -> `output`, an empty `input`. Files are written to temp
names and renamed, so the folder never holds a half-written file.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from data_gen.shards import read_rows, shard_paths, write_json_atomic

FORMATS = ("llamafactory",)


def export_llamafactory(src: str | Path, out: str | Path, *, name: str = "nif") -> Path:
    """Write `OUT/<name>.json` (alpaca records) and add `<name>` to `OUT/dataset_info.json`."""
    src, out = Path(src), Path(out)
    if not shard_paths(src):
        raise FileNotFoundError(f"DIR {src} holds no shards/*.arrow (run `nif gen` first)")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ValueError(f"`--name` must be letters, digits, '_', '.' or '-', got {name!r}")
    out.mkdir(parents=True, exist_ok=True)
    records = [
        {"instruction": row["prompt"], "input": "", "output": row["completion"]}
        for row in read_rows(src)
    ]
    data_file = out / f"{name}.json"
    tmp = out / f".{data_file.name}.tmp"
    with tmp.open("w", encoding="utf-8") as f:
        json.dump(records, f, ensure_ascii=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, data_file)

    info_path = out / "dataset_info.json"
    info = json.loads(info_path.read_text(encoding="utf-8")) if info_path.is_file() else {}
    info[name] = {
        "file_name": data_file.name,
        "columns": {"prompt": "instruction", "query": "input", "response": "output"},
    }
    write_json_atomic(info_path, info)
    return data_file
