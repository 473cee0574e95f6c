"""SSM state-update distance: how far each token moves each Mamba-2 head's state, exactly.

Imports run one way: `closed_form` (the math, its token-by-token reference, shared choices) <-
`torch_path` and `triton_path` (two implementations of the chunked closed form) <- `inputs` (the
mixer's x, B, dt, A from its in_proj output; backend choice) <- `runner` (hooks on a model, tidy rows).
"""

from .closed_form import (
    BACKENDS,
    COLUMNS,
    DEFAULT_TRITON_PRECISION,
    TRITON_PRECISIONS,
    check_backend,
    check_triton_precision,
    default_chunk_size,
    default_dtype,
    update_stats_ref,
)
from .inputs import MixerShape, mixer_shape, resolve_backend, ssm_inputs
from .runner import OVERLAP_LAYERS, StateUpdates, state_update_distance, state_update_distance_ref, state_updates, update_stats
from .torch_path import update_stats_torch

__all__ = [
    "BACKENDS",
    "COLUMNS",
    "DEFAULT_TRITON_PRECISION",
    "OVERLAP_LAYERS",
    "TRITON_PRECISIONS",
    "MixerShape",
    "StateUpdates",
    "check_backend",
    "check_triton_precision",
    "default_chunk_size",
    "default_dtype",
    "mixer_shape",
    "resolve_backend",
    "ssm_inputs",
    "state_update_distance",
    "state_update_distance_ref",
    "state_updates",
    "update_stats",
    "update_stats_ref",
    "update_stats_torch",
]
