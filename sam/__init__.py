"""SAM: a Mamba-2 state-space audio-language model. `sam.SAM` is imported lazily so that light
modules (`sam.config`, `sam.prompt`) stay cheap to import; this file must never import torch eagerly."""

from __future__ import annotations

from typing import Any

__all__ = ["SAM"]


def __getattr__(name: str) -> Any:
    if name == "SAM":
        from sam.model import SAM

        return SAM
    raise AttributeError(f"module 'sam' has no attribute {name!r}")
