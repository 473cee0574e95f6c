"""Token similarity: the mean pairwise cosine similarity between distinct tokens of a clip.

For X [N, d] (or a batch [B, N, d]) with unit rows u_i, the mean over ordered pairs i != j is
(||sum_i u_i||^2 - sum_i ||u_i||^2) / (N (N - 1)), which costs O(N d) instead of the O(N^2 d) of
the full similarity matrix. A zero token has cosine 0 with every other token (the convention of
scikit-learn's `cosine_similarity`, which the tests compare against), so zero rows never give NaN.
Computed in float64. This module only measures; it must never run a model or keep state.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .rank import ArrayLike, as_tokens


def token_similarity(X: ArrayLike) -> float | Tensor:
    """Mean cosine similarity over pairs of distinct tokens: a float for [N, d], a tensor [B] for [B, N, d]."""
    Xt, single = as_tokens(X)
    n = Xt.shape[-2]
    if n < 2:
        raise ValueError(f"token similarity needs at least 2 tokens, got {n}")
    norms = torch.linalg.vector_norm(Xt, dim=-1, keepdim=True)
    units = torch.where(norms > 0, Xt / norms.clamp_min(torch.finfo(torch.float64).tiny), torch.zeros_like(Xt))
    total = units.sum(-2)
    self_terms = (units * units).sum((-2, -1))
    sim = ((total * total).sum(-1) - self_terms) / (n * (n - 1))
    return float(sim[0]) if single else sim
