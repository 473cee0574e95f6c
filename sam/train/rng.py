"""Seeds and random-number-generator states: what a checkpoint saves so that a resumed stage draws the same numbers.
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
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state

def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])

def stage_seed(train: TrainConfig, stage_index: int) -> int:
    # Each stage starts from its own seed, so a stage trained after loading its predecessors from
    # the run cache matches one trained straight after them.
    return train.seed * 1009 + stage_index
