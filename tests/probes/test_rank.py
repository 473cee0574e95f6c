"""Closed forms of the token measures (tau-effective rank, effective/stable rank, token similarity)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics.pairwise import cosine_similarity

import probes

pytestmark = pytest.mark.usefixtures("one_thread")


def _numpy_tau_rank(X: np.ndarray, tau: float, center: bool) -> int:
    if center:
        X = X - X.mean(0, keepdims=True)
    s = np.linalg.svd(X, compute_uv=False)
    energy = np.cumsum(s**2) / np.sum(s**2)
    return int(np.argmax(energy >= tau - 1e-12) + 1)


def _numpy_effective_rank(X: np.ndarray) -> float:
    s = np.linalg.svd(X - X.mean(0, keepdims=True), compute_uv=False)
    p = s / s.sum()
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


def test_orthonormal_tokens_have_full_rank_uncentred_and_one_less_centred():
    n, d = 12, 40
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(d, n)))
    for X in (np.eye(n, d), q.T):  # identity-like and random orthonormal token sets
        assert probes.tau_effective_rank(X, tau=0.99, center=False) == n
        assert probes.tau_effective_rank(X, tau=0.5, center=False) == n / 2  # equal energies: k/n >= tau
        assert probes.effective_rank(X, center=False) == pytest.approx(n, rel=1e-12)
        assert probes.stable_rank(X, center=False) == pytest.approx(n, rel=1e-12)
        # Centring removes the mean direction: n-1 equal singular values remain.
        assert probes.tau_effective_rank(X, tau=0.99) == n - 1
        assert probes.effective_rank(X) == pytest.approx(n - 1, rel=1e-12)
        assert probes.tau_effective_rank(X, tau=0.99, center=False, normalized=True) == 1.0


def test_rank_one_tokens_have_rank_one():
    rng = np.random.default_rng(1)
    X = np.outer(rng.normal(size=30), rng.normal(size=64))  # N < d
    for center in (False, True):
        assert probes.tau_effective_rank(X, tau=0.999999, center=center) == 1
        assert probes.effective_rank(X, center=center) == pytest.approx(1.0, abs=1e-12)
        assert probes.stable_rank(X, center=center) == pytest.approx(1.0, abs=1e-12)


def test_constant_tokens_have_similarity_one_rank_one_and_zero_centred_energy():
    X = torch.full((9, 16), 0.1, dtype=torch.float64)
    assert probes.token_similarity(X) == pytest.approx(1.0, abs=1e-14)
    assert probes.tau_effective_rank(X, center=False) == 1
    # Centred, identical tokens carry no energy: every rank is 0, never NaN.
    assert probes.tau_effective_rank(X) == 0
    assert probes.effective_rank(X) == 0
    assert probes.stable_rank(X) == 0
    assert probes.tau_effective_rank(torch.zeros(4, 3), center=False) == 0


def test_zero_rows_give_no_nan_and_match_scikit_learn_similarity():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(7, 5))
    X[[1, 4]] = 0
    S = cosine_similarity(X)
    expected = (S.sum() - np.trace(S)) / (7 * 6)
    assert probes.token_similarity(X) == pytest.approx(expected, abs=1e-14)
    assert np.isfinite(probes.tau_effective_rank(X)) and np.isfinite(probes.effective_rank(X))


def test_tau_effective_rank_is_monotone_in_tau():
    X = torch.randn(3, 50, 20, generator=torch.Generator().manual_seed(3)) * torch.logspace(0, -3, 20)
    ranks = torch.stack([probes.tau_effective_rank(X, tau=t) for t in (0.5, 0.8, 0.9, 0.95, 0.99, 0.999, 1.0)])
    assert (ranks[1:] >= ranks[:-1]).all() and (ranks[-1] == 20).all() and (ranks[0] < ranks[-1]).all()


def test_batched_measures_match_direct_numpy_on_random_matrices():
    rng = np.random.default_rng(4)
    X = rng.normal(size=(5, 24, 10)) @ rng.normal(size=(10, 10)) * rng.uniform(0.01, 1, size=10)
    for tau in (0.9, 0.95, 0.99):
        got = probes.tau_effective_rank(torch.from_numpy(X), tau=tau)
        assert got.tolist() == [_numpy_tau_rank(x, tau, True) for x in X]
        assert probes.tau_effective_rank(torch.from_numpy(X), tau=tau, normalized=True).tolist() == pytest.approx(
            [r / 10 for r in got.tolist()]
        )
    assert probes.effective_rank(torch.from_numpy(X)).numpy() == pytest.approx([_numpy_effective_rank(x) for x in X], rel=1e-10)
    sims = [(cosine_similarity(x).sum() - len(x)) / (len(x) * (len(x) - 1)) for x in X]
    assert probes.token_similarity(torch.from_numpy(X).float()).numpy() == pytest.approx(sims, abs=1e-6)


def test_bad_token_shapes_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="tokens must be"):
        probes.tau_effective_rank(torch.zeros(3))
    with pytest.raises(ValueError, match="tau must be"):
        probes.tau_effective_rank(torch.randn(4, 4), tau=0)
    with pytest.raises(ValueError, match="at least 2 tokens"):
        probes.token_similarity(torch.randn(1, 4))
    with pytest.raises(ValueError, match="NaN"):
        probes.effective_rank(torch.tensor([[float("nan"), 1.0]]))


def test_windowed_rank_does_not_grow_with_sequence_length_where_the_normalized_rank_shrinks():
    rng = np.random.default_rng(3)
    basis = rng.normal(size=(4, 64))  # every token lies in one 4-dim subspace
    short, long = (rng.normal(size=(n, 4)) @ basis for n in (16, 128))
    # normalized by min(N, d) the long set looks 4x "lower rank" though both span the same 4 dims
    assert probes.tau_effective_rank(short, normalized=True) == pytest.approx(4 * probes.tau_effective_rank(long, normalized=True), rel=0.3)
    assert probes.windowed_tau_rank(long, 16) == pytest.approx(probes.windowed_tau_rank(short, 16)) == 4
    # each window is ranked on its own: a set whose halves span different dims has a lower windowed rank
    halves = np.concatenate([rng.normal(size=(16, 2)) @ basis[:2], rng.normal(size=(16, 2)) @ basis[2:]])
    assert probes.tau_effective_rank(halves) >= 3 and probes.windowed_tau_rank(halves, 16) == 2
    # batches give per-clip means; a short remainder is dropped; fewer tokens than the window: the whole set
    batch = torch.as_tensor(np.stack([long[:40], long[40:80]]))
    assert probes.windowed_tau_rank(batch, 16).tolist() == [4.0, 4.0]
    assert probes.windowed_tau_rank(short[:5], 16) == probes.tau_effective_rank(short[:5])
    with pytest.raises(ValueError, match="window"):
        probes.windowed_tau_rank(short, 0)
