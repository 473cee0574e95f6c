"""Data: the embedded real-audio corpus, scene composer, real-dataset readers, dataset + collate.

Public entry points: `build_examples` and `corpus_texts` (embedded corpus), `prepare_corpus`
(building it), `Example` (the one example type). They load lazily, so importing `sam.data.types`
stays cheap (no torch, no audio libraries).
"""

from __future__ import annotations

from typing import Any

from sam.data.types import TASKS, Example

_LAZY = {"build_examples": "sam.data.build", "corpus_texts": "sam.data.build", "prepare_corpus": "sam.data.corpus"}
__all__ = ["Example", "TASKS", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sam.data' has no attribute {name!r}")
