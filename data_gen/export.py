"""`nif export llamafactory DIR OUT --tokenizer MODEL`: a generated folder as a LLaMA-Factory
dataset that trains on the same token sequences as `nif train`.

LLaMA-Factory reads a dataset folder holding the data files and a `dataset_info.json` whose
entry maps alpaca columns to fields: prompt -> `instruction`, completion -> `output`, an empty
`input`. The paper trained through LLaMA-Factory 0.5.2's `vanilla` template: the raw prompt, the
raw completion, then the EOS. LLaMA-Factory 0.9.5 has no `vanilla`; its `default` template adds
`Human: ` / `Assistant:` text, and its `empty` template keeps the raw text but appends no EOS, so
a model trained through it never learns to stop. Hence the export writes each completion with
the tokenizer's EOS text at its end (`</s>`, `<|end_of_text|>`, ...), and training uses
`template: empty`. LLaMA-Factory then tokenizes `instruction` and `output` apart, without
special tokens added, and the EOS text becomes the EOS id: token for token what `nif train`
builds (tok(prompt) + tok(completion) + [eos], loss on the completion and the EOS).

`--tokenizer` (a folder or Hub id: the model you will train) gives the EOS text and checks, row
by row, that the tokenizer reads `completion + EOS text` back as tok(completion) + [eos id]
(a tokenizer that strips the text around its EOS would not; such a row is named). Without a
tokenizer, `--eos-token TEXT` names the EOS text itself (`--eos-token ''`: none, for a template
that appends its own).

Truncation: rows within LLaMA-Factory's `cutoff_len` are identical to ours. Longer rows would
be cut by LLaMA-Factory 0.9.5's `infer_seqlen`, which shares the budget between prompt and
completion differently from the paper's 0.5.2 rule that `nif train` keeps. With `--cutoff-len N`
(and `--tokenizer`) the export cuts such rows itself, by our rule (`split_budget`, which
`nif_lightning.packing` trains with), into text that tokenizes back to exactly the kept tokens;
trained with LLaMA-Factory's `cutoff_len` >= N, every row is then the sequence `nif train`
builds with `cutoff_len` N. A cut that does not read back exactly (inside a character, or a
merge across the cut) is left to LLaMA-Factory and counted in the entry's `nif` key.

Files are written atomically (`store`), so the folder never holds a half-written file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from data_gen.shards import read_rows
from data_gen.store import check_dataset_dir, read_json_object, write_json_atomic

FORMATS = ("llamafactory",)
# The LLaMA-Factory template the export is made for (0.9.5: the raw text, nothing added).
TEMPLATE = "empty"


@dataclass(frozen=True)
class Exported:
    """What `export_llamafactory` wrote: the data file and, with `cutoff_len`, how many rows it
    cut and how many of those it left whole (no text cut reads back exactly); both also in the
    entry's `nif` key."""

    data_file: Path
    rows_cut: int = 0
    rows_cut_inexactly: int = 0


def export_llamafactory(
    src: str | Path,
    out: str | Path,
    *,
    name: str = "nif",
    tokenizer: str | None = None,
    eos_token: str | None = None,
    cutoff_len: int | None = None,
) -> Exported:
    """Write `OUT/<name>.json` (alpaca records, each output ending with the EOS text) and add
    `<name>` to `OUT/dataset_info.json`; train it with LLaMA-Factory's `template: empty`.
    `cutoff_len` (needs `tokenizer`) cuts longer rows the way `nif train` does."""
    src, out = Path(src), Path(out)
    check_dataset_dir(src, what="DIR")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ValueError(f"`--name` must be letters, digits, '_', '.' or '-', got {name!r}")
    if tokenizer is not None and eos_token is not None:
        raise ValueError("give `--tokenizer` or `--eos-token`, not both")
    if cutoff_len is not None and (tokenizer is None or cutoff_len < 2):
        raise ValueError(
            "`--cutoff-len` needs `--tokenizer`"
            if tokenizer is None
            else f"`--cutoff-len` must be >= 2, got {cutoff_len}"
        )
    if tokenizer is None and eos_token is None:
        raise ValueError(
            "the export must end each output with the model's EOS (LLaMA-Factory's `empty` "
            "template adds none): name the model's tokenizer with `--tokenizer` (a folder or Hub "
            "id) or its EOS text with `--eos-token` (e.g. '</s>')"
        )
    info_path = out / "dataset_info.json"  # other datasets' entries are kept: read it first
    info = read_json_object(info_path, what="OUT's") if info_path.is_file() else {}
    rows = read_rows(src)
    cut = {"cut_to": cutoff_len, "rows_cut": 0, "rows_cut_inexactly": 0}
    tok = None
    if tokenizer is not None:
        tok = load_tokenizer(tokenizer)
        eos_token = eos_text_of(tok, tokenizer, [row["completion"] for row in rows])
        if Path(tokenizer).exists():  # recorded so that it reads the same from anywhere
            tokenizer = str(Path(tokenizer).resolve())
    records = []
    for row in rows:
        prompt, output = row["prompt"], row["completion"] + eos_token
        cut_row = (
            None if cutoff_len is None else _cut(tok, prompt, row["completion"], cutoff_len, cut)
        )
        if cut_row is not None:  # a cut output keeps what is left of the EOS (none if cut off)
            prompt, output = cut_row
        records.append({"instruction": prompt, "input": "", "output": output})
    out.mkdir(parents=True, exist_ok=True)
    data_file = out / f"{name}.json"
    write_json_atomic(data_file, records, indent=None)

    info[name] = dataset_info_entry(data_file.name, eos_token, tokenizer)
    if cutoff_len is not None:
        info[name]["nif"].update(cut)
    write_json_atomic(info_path, info)
    return Exported(data_file, cut["rows_cut"], cut["rows_cut_inexactly"])


def dataset_info_entry(file_name: str, eos_token: str, tokenizer: str | None) -> dict:
    """The `dataset_info.json` entry; LLaMA-Factory ignores the `nif` key, which records how the
    file was made and the template to train it with."""
    ends = f"the EOS text {eos_token!r}" if eos_token else "no EOS (--eos-token '')"
    return {
        "file_name": file_name,
        "formatting": "alpaca",
        "columns": {"prompt": "instruction", "query": "input", "response": "output"},
        "nif": {
            "template": TEMPLATE,
            "eos_in_output": eos_token,
            "tokenizer": tokenizer,
            "note": (
                f"train with `template: {TEMPLATE}`: the raw prompt, then the output, which ends "
                f"with {ends}: the token sequences of `nif train`"
            ),
        },
    }


def load_tokenizer(tokenizer: str):
    """`AutoTokenizer.from_pretrained(tokenizer)`, or a one-line error naming it."""
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(tokenizer)
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"`--tokenizer` {tokenizer}: cannot load it ({first})") from None


def eos_text_of(tok, tokenizer: str, completions: list[str]) -> str:
    """The EOS text of `tok` (loaded from `tokenizer`), after checking that every completion
    followed by it tokenizes as the completion's tokens plus the EOS id (what `nif train`
    trains on)."""
    if tok.eos_token is None or tok.eos_token_id is None:
        raise ValueError(f"`--tokenizer` {tokenizer} has no EOS token; name one with --eos-token")
    eos, eos_id = tok.eos_token, tok.eos_token_id
    for start in range(0, len(completions), 1024):
        chunk = completions[start : start + 1024]
        plain = tok(chunk, add_special_tokens=False)["input_ids"]
        ended = tok([c + eos for c in chunk], add_special_tokens=False)["input_ids"]
        for i, (a, b) in enumerate(zip(plain, ended, strict=True)):
            if b != [*a, eos_id]:
                raise ValueError(
                    f"`--tokenizer` {tokenizer}: completion {start + i} followed by its EOS "
                    f"text {eos!r} does not tokenize as its tokens plus the EOS id {eos_id}; "
                    "this tokenizer cannot carry the EOS in the text"
                )
    return eos


def split_budget(prompt_len: int, response_len: int, cutoff_len: int) -> tuple[int, int]:
    """Token budgets (prompt, response) of an example longer than `cutoff_len`, shared in
    proportion to the two lengths (as LLaMA-Factory's `infer_max_len`), each at least 1: the rule
    of the paper's LLaMA-Factory 0.5.2, which `nif train` (`nif_lightning.packing`) uses too."""
    if prompt_len + response_len <= cutoff_len:
        return prompt_len, response_len
    response_max = int(cutoff_len * response_len / (prompt_len + response_len))
    response_max = min(max(response_max, 1), cutoff_len - 1)
    return cutoff_len - min(response_max, response_len), response_max


def _cut(tok, prompt: str, completion: str, cutoff_len: int, counts: dict):
    """(prompt, output) texts cut as `nif train` cuts the tokens tok(prompt) + tok(completion)
    + [eos] to `cutoff_len`, each tokenizing back to exactly its kept tokens; None when the row
    fits, or when a cut text does not read back exactly (left to LLaMA-Factory, counted)."""
    p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    r_ids = [*tok(completion, add_special_tokens=False)["input_ids"], tok.eos_token_id]
    if len(p_ids) + len(r_ids) <= cutoff_len:
        return None
    p_max, r_max = split_budget(len(p_ids), len(r_ids), cutoff_len)
    kept_p, kept_r = p_ids[:p_max], r_ids[:r_max]
    texts = [
        tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        for ids in (kept_p, kept_r)
    ]
    again = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    if again != [kept_p, kept_r]:
        counts["rows_cut_inexactly"] += 1
        return None
    counts["rows_cut"] += 1
    return texts[0], texts[1]
