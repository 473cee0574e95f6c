"""Tidy tables of token measures over the sites of an `ActivationCache`, ready for seaborn.

One row per (site, clip, measure[, tau]): columns site, part (encoder/connector/lm/module), layer
(the block index in the site name, else -1), clip, measure (tau_rank, tau_rank_normalized,
tau_rank_window when a window is given, effective_rank, stable_rank, similarity), tau (NaN unless a
tau measure), value, tokens, dim.
Experiments add their own columns (model size, training stage, layout) before concatenating. This
module must never run a model.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence

import pandas as pd
import torch

from .hooks import ActivationCache
from .rank import effective_rank, stable_rank, tau_effective_rank, windowed_tau_rank
from .similarity import token_similarity

MEASURES = ("tau_rank", "tau_rank_normalized", "tau_rank_window", "effective_rank", "stable_rank", "similarity")
_LAYER = re.compile(r"(?:layers|blocks)\.(\d+)")


def site_part(name: str) -> str:
    """encoder / connector / lm for stable names, module for raw module paths."""
    head = name.split(".")[0]
    return head if head in ("encoder", "connector", "lm") else "module"


def site_layer(name: str) -> int:
    """Block index in a site name (lm.layers.3 -> 3, encoder.blocks.1 -> 1), else -1."""
    found = _LAYER.search(name)
    return int(found.group(1)) if found else -1


def _rows_for(site: str, clips: list[torch.Tensor], taus: Sequence[float], center: bool, window: int | None) -> Iterable[dict]:
    same = len({tuple(c.shape) for c in clips}) == 1
    groups = [torch.stack(clips)] if same else [c[None] for c in clips]
    values: dict[tuple[str, float], list[float]] = {}
    for X in groups:
        for tau in taus:
            values.setdefault(("tau_rank", tau), []).extend(tau_effective_rank(X, tau, center).tolist())
            values.setdefault(("tau_rank_normalized", tau), []).extend(tau_effective_rank(X, tau, center, normalized=True).tolist())
            if window is not None:
                values.setdefault(("tau_rank_window", tau), []).extend(windowed_tau_rank(X, window, tau, center).tolist())
        values.setdefault(("effective_rank", math.nan), []).extend(effective_rank(X, center).tolist())
        values.setdefault(("stable_rank", math.nan), []).extend(stable_rank(X, center).tolist())
        sim = token_similarity(X) if X.shape[1] >= 2 else torch.full((X.shape[0],), math.nan)
        values.setdefault(("similarity", math.nan), []).extend(sim.tolist())
    for (measure, tau), vals in values.items():
        for clip, value in enumerate(vals):
            n, d = clips[clip].shape
            yield dict(
                site=site, part=site_part(site), layer=site_layer(site), clip=clip, measure=measure, tau=tau, value=value, tokens=n, dim=d
            )


def token_measures(
    cache: ActivationCache,
    names: Sequence[str] | None = None,
    taus: Sequence[float] = (0.9, 0.95, 0.99),
    center: bool = True,
    window: int | None = None,
) -> pd.DataFrame:
    """Rank and similarity of each clip's audio tokens at each cached site (default: all of them);
    with `window`, also the rank over contiguous windows of that many tokens (`windowed_tau_rank`),
    which compares sites or layouts of different lengths at one length."""
    rows: list[dict] = []
    for name in names if names is not None else list(cache):
        if name not in cache:
            raise KeyError(f"site {name!r} is not in the cache (cached: {sorted(cache)[:12]})")
        clips = [c for c in cache.tokens(name)]
        empty = [i for i, c in enumerate(clips) if c.shape[0] == 0]
        if empty:
            raise ValueError(f"site {name!r}: clips {empty} have no audio tokens in their span")
        rows.extend(_rows_for(name, clips, taus, center, window))
    return pd.DataFrame(rows, columns=["site", "part", "layer", "clip", "measure", "tau", "value", "tokens", "dim"])


def state_update_means(frame: pd.DataFrame) -> pd.DataFrame:
    """A `state_update_distance` table reduced to the mean distance and relative distance per LM layer
    and clip (over heads and positions): columns layer, clip, distance, relative, sorted by layer, clip.
    The figure, the token-length table and `sam probe` all report state updates at this grain."""
    return frame.groupby(["layer", "clip"], as_index=False)[["distance", "relative"]].mean()
