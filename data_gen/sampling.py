"""Which documents, and where each is cut: seeded, reproducible, independent of run order.

- Documents: `--num-docs` uniformly at random without replacement, by reservoir sampling over
  the source's fixed order (one pass, memory O(num_docs), so a streamed `hf:` corpus never has to
  be held or even counted first). Same source + same seed = same documents.
- Cut point: in words, uniform over [split_min, split_max] of the document's word count (the
  paper: 25%-75%), drawn from a generator seeded by (seed, document id), so a document's cut does
  not depend on which other documents were sampled or in what order they are processed.
- The prompt is the text up to the end of the cut word, verbatim (original whitespace and line
  breaks); the reference is the true rest, from the whitespace after it.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass

from data_gen.corpus import Document

_WORD = re.compile(r"\S+")


@dataclass(frozen=True)
class Example:
    id: str
    prompt: str
    reference: str


def sample_documents(docs: Iterable[Document], n: int | None, seed: int) -> list[Document]:
    """`n` documents uniformly without replacement (all of them when `n` is None)."""
    if n is None:
        return list(docs)
    rng = random.Random(seed)
    reservoir: list[Document] = []
    for i, doc in enumerate(docs):
        if i < n:
            reservoir.append(doc)
        else:
            j = rng.randrange(i + 1)
            if j < n:
                reservoir[j] = doc
    return reservoir


def cut_document(doc: Document, seed: int, split_min: float, split_max: float) -> Example:
    """Cut `doc` after a word chosen uniformly in [split_min, split_max] of its word count."""
    words = list(_WORD.finditer(doc.text))
    n = len(words)
    if n < 2:
        raise ValueError(f"document {doc.id} has {n} word(s); it cannot be cut in two")
    # Words in the prompt: at least one, and at least one word left for the continuation.
    lo = min(max(1, math.ceil(split_min * n)), n - 1)
    hi = max(min(n - 1, math.floor(split_max * n)), lo)
    k = random.Random(f"{seed}:{doc.id}").randint(lo, hi)
    end = words[k - 1].end()
    return Example(doc.id, doc.text[:end], doc.text[end:])
