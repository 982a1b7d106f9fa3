"""Load a demo task's documents from the jsonl file beside this one (lm-eval's `custom_dataset`).

lm-eval imports this file by path (`!function loader.load` in each task YAML), so the tasks
work from any working directory and with plain `lm_eval --include_path` too. Each line is one
document with a `split` key (`train` holds the few-shot examples, `test` the scored ones).
"""

import json
from pathlib import Path


def load(data_file: str, **_metadata):
    import datasets

    path = Path(__file__).parent / data_file
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    splits = {}
    for row in rows:
        splits.setdefault(row.pop("split"), []).append(row)
    return datasets.DatasetDict({k: datasets.Dataset.from_list(v) for k, v in splits.items()})
