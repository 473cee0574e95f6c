"""Whole-config checks run before any work: every number finite, every named choice known.

`check_stages` (sam.train) checks the curriculum's own rules; this module catches what type
coercion alone lets through (``lr=nan`` parses as a float, ``connector.layout=diagonal`` as a
string) so a run fails in its first second with the key named, not after the tokenizer trained.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from sam.config import ConfigError
from sam.model.connector import LAYOUTS
from sam.model.encoder import SIZES

# Dotted key (list indices left out) -> the values its consumer accepts.
CHOICES: dict[str, tuple[str, ...]] = {
    "model.encoder.kind": ("eat", "ast"),
    "model.encoder.size": tuple(SIZES),
    "model.encoder.pos_embed": ("fixed", "learned"),
    "model.connector.layout": LAYOUTS,
    "data.source": ("debian", "folder", "openaqa"),
    "train.precision": ("auto", "fp32", "bf16"),
    "eval.text_encoder": ("minilm", "clap"),
}


def check_settings(cfg: Any, prefix: str = "") -> None:
    """ConfigError naming the first non-finite number or unknown choice in the config tree `cfg`."""
    for key, value in _leaves(cfg, prefix):
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{key}: expected a finite number, got {value}")
        plain = ".".join(p for p in key.split(".") if not p.isdigit())
        if plain in CHOICES and value not in CHOICES[plain]:
            raise ConfigError(f"{key}: {value!r} unknown; choose one of {', '.join(CHOICES[plain])}")


def _leaves(node: Any, key: str):
    if dataclasses.is_dataclass(node):
        for f in dataclasses.fields(node):
            yield from _leaves(getattr(node, f.name), f"{key}.{f.name}" if key else f.name)
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            yield from _leaves(v, f"{key}.{i}")
    elif isinstance(node, dict):
        for k, v in node.items():
            yield from _leaves(v, f"{key}.{k}")
    else:
        yield key, node
