"""Baselines on the test labels and bootstrap intervals (sam.baselines), checked against simulation."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from sam.eval.baselines import (
    answer_prior,
    bootstrap_ci,
    expected_random_ap,
    fast_average_precision,
    majority_accuracy,
    majority_micro_f1,
    mean_ci,
    paired_bootstrap_ci,
    random_map,
)
from sam.eval.metrics import classification_metrics, mean_average_precision


def _labels(n: int, c: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y = (rng.random((n, c)) < rng.uniform(0.01, 0.3, size=c)).astype(int)
    y[0, 0] = 1
    return y


@pytest.mark.parametrize("k,n", [(1, 2), (2, 5), (3, 10), (7, 7)])
def test_expected_random_ap_is_exact_by_enumerating_every_ranking(k, n):
    from itertools import combinations

    aps = [
        average_precision_score(np.isin(np.arange(n), pos).astype(int), -np.arange(n, dtype=float)) for pos in combinations(range(n), k)
    ]  # every placement of the k positives among n ranks
    assert expected_random_ap(k, n) == pytest.approx(np.mean(aps), abs=1e-12)


def test_random_map_matches_random_scores_within_one_point_and_is_not_the_prevalence():
    y = _labels(64, 32, 0)
    rng = np.random.default_rng(1)
    simulated = np.mean([mean_average_precision(y, rng.random(y.shape))[0] for _ in range(300)])
    assert abs(random_map(y) - simulated) < 0.01
    prevalence = y[:, y.sum(0) > 0].mean(0).mean()
    # a prevalence baseline would fail the simulation check by several points at 64 clips
    assert abs(prevalence - simulated) > 0.02
    assert classification_metrics(y, rng.random(y.shape), bootstrap=0)["chance"]["mAP"] == pytest.approx(random_map(y))


def test_majority_baselines_predict_the_most_frequent_classes():
    y = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0], [1, 0, 1], [0, 0, 0]])
    assert majority_accuracy(y) == pytest.approx(3 / 4)  # the unlabelled row is left out
    # top-2 most frequent = classes 0 and 1 on every row: tp 4, fp 6, fn 1
    assert majority_micro_f1(y, 2) == pytest.approx(2 * 4 / (2 * 4 + 6 + 1))
    m = classification_metrics(y, np.random.default_rng(0).random(y.shape), bootstrap=0)
    assert m["chance"]["accuracy"] == m["chance"]["accuracy_majority"] >= m["chance"]["accuracy_uniform"]


def test_answer_prior_takes_the_better_of_answer_text_and_position():
    choices = [["a", "b", "c", "d"]] * 4
    by_text = answer_prior(["a", "a", "b", "a"], ["t1", "t1", "t2", "t1"], choices)
    assert by_text["uniform"] == 0.25 and by_text["answer_text"] == 1.0 and by_text["chance"] == 1.0
    shuffled = [["x", "y"], ["z", "x"], ["w", "v"], ["y", "q"]]
    by_pos = answer_prior(["x", "z", "w", "y"], None, shuffled)  # 4 different answers, always choice 1
    assert by_pos["answer_text"] == 0.25 and by_pos["position"] == 1.0 and by_pos["prior_rule"] == "always choice 1"
    closed = answer_prior(["Yes", "yes.", "no"])
    assert closed["prior"] == pytest.approx(2 / 3) and np.isnan(closed["uniform"]) and closed["chance"] == closed["prior"]


def test_fast_average_precision_equals_sklearn_with_ties():
    y = _labels(200, 6, 3)
    scores = np.round(np.random.default_rng(4).random(y.shape), 1)  # many ties
    keep = y.sum(0) > 0
    assert np.allclose(fast_average_precision(y, scores)[keep], average_precision_score(y[:, keep], scores[:, keep], average=None))


def test_bootstrap_intervals_cover_the_estimate_and_pairing_removes_shared_noise():
    rng = np.random.default_rng(0)
    v = rng.random(400)
    lo, hi = mean_ci(v)
    assert lo < v.mean() < hi and hi - lo < 0.08
    assert mean_ci(v) == mean_ci(v)  # deterministic
    own, other = v + 0.05, v  # the same clips plus a constant: the paired interval is that constant
    lo, hi = paired_bootstrap_ci(len(v), lambda i: own[i].mean(), lambda i: other[i].mean())
    assert lo == pytest.approx(0.05) and hi == pytest.approx(0.05)
    # grouping: a clip's items are drawn together, so duplicated items do not narrow the interval
    grouped = bootstrap_ci(800, lambda i: np.r_[v, v][i].mean(), groups=list(range(400)) * 2)
    assert grouped[1] - grouped[0] > 0.8 * (mean_ci(v)[1] - mean_ci(v)[0])


def test_classification_metrics_report_a_ci_around_map():
    y = _labels(128, 8, 5)
    scores = y + np.random.default_rng(6).normal(0, 1, y.shape)
    m = classification_metrics(y, scores, bootstrap=200)
    for k in ("mAP", "accuracy", "micro_f1"):
        lo, hi = m["ci"][k]
        assert lo <= m[k] <= hi


def test_other_audio_gives_every_scene_another_scenes_audio_deterministically():
    from sam.data.types import Example
    from sam.eval.annotate import other_audio

    examples = [
        Example(f"{s}-{q}", {"id": f"s{s}"}, f"q{q}", "a", "closed", metadata={"scene": f"s{s}"}) for s in range(5) for q in range(2)
    ]
    swapped = other_audio(examples)
    assert [ex.instruction for ex in swapped] == [ex.instruction for ex in examples]
    pairs = {ex.metadata["scene"]: sw.audio["id"] for ex, sw in zip(examples, swapped)}
    assert all(own != other for own, other in pairs.items()) and sorted(pairs.values()) == sorted(pairs)
    assert pairs["s0"] == "s2" and other_audio(examples) == swapped
