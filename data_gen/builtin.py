"""The built-in corpus: real English prose that ships with CPython, so everything works offline.

`pydoc_data.topics` holds the language reference's help topics (~65k words over 79 topics).
Each topic is split at blank lines into paragraphs, and consecutive paragraphs are joined into
documents of roughly web-article length, so the random cut of the method has text on both sides.
"""

from __future__ import annotations

import re

_TARGET_WORDS = 250  # about the length of a short web article; enough for 25-75% cuts


def builtin_documents() -> list[dict[str, str]]:
    """Documents as `{"id": "builtin/<topic>/<n>", "text": ...}`, in a fixed order."""
    from pydoc_data.topics import topics

    docs = []
    for topic in sorted(topics):
        paragraphs = [p.strip() for p in re.split(r"\n\s*\n", topics[topic]) if p.strip()]
        chunk: list[str] = []
        words = 0
        for paragraph in paragraphs:
            chunk.append(paragraph)
            words += len(paragraph.split())
            if words >= _TARGET_WORDS:
                docs.append({"id": f"builtin/{topic}/{len(docs)}", "text": "\n\n".join(chunk)})
                chunk, words = [], 0
        if words >= _TARGET_WORDS // 4:
            docs.append({"id": f"builtin/{topic}/{len(docs)}", "text": "\n\n".join(chunk)})
    return docs


def builtin_texts() -> list[str]:
    """Just the texts of `builtin_documents()`, e.g. to train a tokenizer."""
    return [doc["text"] for doc in builtin_documents()]
