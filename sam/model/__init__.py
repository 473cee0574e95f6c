"""The model: audio front end -> encoder -> connector -> Mamba-2 LM, assembled as `SAM`.

Modules, in the order data flows: `audio` (waveform -> fbank), `encoder` (ViT over fbank patches),
`connector` (patch grid -> LM tokens), `ssd` (the chunked state-space scan), `mamba2` (the mixer
and kernel dispatch), `lm` (`MambaLM`) with `lm_formats` (its checkpoint formats), and `sam` (`SAM`).
Names load lazily, so importing one submodule does not import torch for the others.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {"SAM": "sam.model.sam", "label_positions": "sam.model.sam"}
__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sam.model' has no attribute {name!r}")
