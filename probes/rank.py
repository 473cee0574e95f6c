"""Rank measures of a set of tokens: tau-effective rank, Roy-Vetterli effective rank, stable rank.

For one clip, X is [N tokens, d dims]; a batch of clips is [B, N, d]. Every measure is a function of
the singular values of X (mean-centred over tokens by default), computed in float64. Definitions
(see the paper notes, "Analysis definitions"):

- tau-effective rank: min{k : sum_{i<=k} s_i^2 / sum_i s_i^2 >= tau}; `normalized` divides by
  min(N, d) so token sets of different lengths compare.
- effective rank (Roy & Vetterli 2007): exp(H(p)), p_i = s_i / sum_j s_j.
- stable rank: sum_i s_i^2 / s_1^2.

A token set with no energy (all-zero tokens, or identical tokens once centred) has rank 0 under
every measure: it spans no direction. Singular values below a round-off floor relative to the
uncentred tokens' norm count as zero, so identical tokens give exactly 0 after centring and a
rank-1 set gives exactly 1. This module only measures; it must never run a model or keep state.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

ArrayLike = Tensor | np.ndarray
# Spectrum entries this far (relative, times max(N, d)) below the uncentred tokens' norm are
# round-off: centring identical float64 tokens can leave ~1e-17 residues.
_ROUNDOFF = float(torch.finfo(torch.float64).eps)


def as_tokens(X: ArrayLike) -> tuple[Tensor, bool]:
    """X as a float64 tensor [B, N, d] and whether the input was a single clip [N, d]."""
    X = torch.as_tensor(X) if not isinstance(X, Tensor) else X
    if X.dim() not in (2, 3):
        raise ValueError(f"tokens must be [N, d] or [B, N, d], got shape {tuple(X.shape)}")
    if X.shape[-2] < 1 or X.shape[-1] < 1:
        raise ValueError(f"tokens must have at least one token and one dim, got shape {tuple(X.shape)}")
    single = X.dim() == 2
    X = X.detach().to(torch.float64)
    if not torch.isfinite(X).all():
        raise ValueError("tokens contain NaN or inf")
    return (X[None] if single else X), single


def singular_values(X: ArrayLike, center: bool = True) -> Tensor:
    """Singular values [B, min(N, d)] (float64, descending), round-off entries set to exactly 0."""
    X, _ = as_tokens(X)
    scale = torch.linalg.matrix_norm(X, ord="fro")  # [B]
    if center:
        X = X - X.mean(dim=-2, keepdim=True)
    s = torch.linalg.svdvals(X)
    floor = (max(X.shape[-2:]) * _ROUNDOFF) * scale[:, None]
    return torch.where(s > floor, s, torch.zeros_like(s))


def _out(values: Tensor, single: bool) -> float | Tensor:
    return float(values[0]) if single else values


def tau_effective_rank(X: ArrayLike, tau: float = 0.99, center: bool = True, normalized: bool = False) -> float | Tensor:
    """Smallest k whose top-k singular values hold a fraction >= tau of the energy sum s_i^2.

    X is [N, d] (returns a float) or [B, N, d] (returns a float64 tensor [B]). 0 for no energy.
    """
    if not 0.0 < tau <= 1.0:
        raise ValueError(f"tau must be in (0, 1], got {tau}")
    Xt, single = as_tokens(X)
    s2 = singular_values(Xt, center) ** 2
    energy = s2.sum(-1, keepdim=True)
    frac = torch.cumsum(s2, -1) / energy.clamp_min(torch.finfo(torch.float64).tiny)
    # The relative slack keeps exact boundaries (k/N == tau) from flipping on the last bit.
    below = (frac < tau * (1.0 - 1e-12)).sum(-1)
    nonzero = (s2 > 0).sum(-1)
    rank = torch.minimum(below + 1, nonzero).to(torch.float64)
    rank = torch.where(energy[:, 0] > 0, rank, torch.zeros_like(rank))
    if normalized:
        rank = rank / min(Xt.shape[-2:])
    return _out(rank, single)


def effective_rank(X: ArrayLike, center: bool = True) -> float | Tensor:
    """Roy-Vetterli effective rank exp(-sum p_i log p_i), p_i = s_i / sum s; 0 for no energy."""
    Xt, single = as_tokens(X)
    s = singular_values(Xt, center)
    total = s.sum(-1, keepdim=True)
    p = s / total.clamp_min(torch.finfo(torch.float64).tiny)
    entropy = -torch.special.xlogy(p, p).sum(-1)
    rank = torch.where(total[:, 0] > 0, torch.exp(entropy), torch.zeros_like(entropy))
    return _out(rank, single)


def stable_rank(X: ArrayLike, center: bool = True) -> float | Tensor:
    """Stable rank ||X||_F^2 / ||X||_2^2 (between 1 and rank(X)); 0 for no energy."""
    Xt, single = as_tokens(X)
    s2 = singular_values(Xt, center) ** 2
    top = s2[:, 0]
    rank = torch.where(top > 0, s2.sum(-1) / top.clamp_min(torch.finfo(torch.float64).tiny), torch.zeros_like(top))
    return _out(rank, single)


def windowed_tau_rank(X: ArrayLike, window: int, tau: float = 0.99, center: bool = True) -> float | Tensor:
    """tau-effective rank over contiguous, non-overlapping windows of `window` tokens, averaged over
    the windows (a trailing window shorter than `window` is dropped; fewer tokens than `window` give
    one window of them all).

    Comparing token sets of different lengths by their rank confounds length: the rank is bounded by
    min(N, d), and dividing by it changes the scale per length. At one window length the rank of a
    long sequence and of a short one are bounded alike, so their difference is the tokens' own.
    """
    if window < 1:
        raise ValueError(f"window must be at least 1 token, got {window}")
    Xt, single = as_tokens(X)
    n = Xt.shape[-2]
    if n <= window:
        return tau_effective_rank(X, tau, center)
    k = n // window
    windows = Xt[:, : k * window].reshape(Xt.shape[0] * k, window, Xt.shape[-1])
    ranks = tau_effective_rank(windows, tau, center).reshape(Xt.shape[0], k).mean(-1)
    return _out(ranks, single)
