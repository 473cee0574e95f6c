"""Seeds and the global random generators' states (Python, NumPy, torch, CUDA): what a checkpoint saves so that
a resumed stage draws the same numbers.

States are stored as tensors and plain containers only, so a checkpoint holding them loads with
`torch.load(weights_only=True)`: no pickled NumPy arrays or Python objects, nothing that could run
code when an untrusted file is loaded.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from sam.config import TrainConfig


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def rng_state() -> dict[str, Any]:
    """Every global generator's state as tensors, ints, floats and strings."""
    version, words, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": int(version), "state": torch.tensor(words, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` returned."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(w) for w in py["state"].tolist()), py["gauss"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def stage_seed(train: TrainConfig, stage_index: int) -> int:
    # Each stage starts from its own seed, so a stage trained after loading its predecessors from
    # the run cache matches one trained straight after them.
    return train.seed * 1009 + stage_index
