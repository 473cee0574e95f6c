"""Baselines computed on the test set itself, and bootstrap confidence intervals over its clips.

A score means something only next to what a model that does not listen would get on the *same*
test items, so every baseline here is a function of the test labels alone:

- `expected_random_ap` / `random_map`: the exact expected average precision of a uniformly random
  ranking. With k positives among n items the positive at rank r has precision (1 + positives above
  it) / r; averaging over random orders gives E[AP] = (k-1)/(n-1) + (H_n / n)(n-k)/(n-1) (H_n the
  n-th harmonic number). It equals the prevalence k/n only as n grows: at 64 clips and a few
  positives per class it is about twice the prevalence.
- `majority_accuracy` / `majority_micro_f1`: always predict the most frequent class (the k most
  frequent for micro-F1 with top-k predictions).
- `answer_prior`: for multiple-choice and closed questions, the best rule that ignores the audio:
  per question type always give that type's most frequent correct answer, or always pick one fixed
  choice position; the larger rate and which rule gave it. Both rules are fit on the test answers,
  so they are an upper bound on what answer priors alone can score there.
- `bootstrap_ci` / `paired_bootstrap_ci`: percentile 95% intervals of a statistic over test clips
  resampled with replacement (paired: the same resampled clips for both conditions), grouped by clip
  so that several questions about one scene move together.
- `fast_average_precision`: scikit-learn's `average_precision_score` (ties grouped by threshold) in
  numpy, for the thousands of mAPs a bootstrap needs.

Nothing here loads a model or reads a file; inputs are arrays and strings.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from sklearn.metrics import f1_score

BOOTSTRAP_DRAWS = 1000
CI_LEVEL = 0.95


def expected_random_ap(k: int, n: int) -> float:
    """Exact expected AP of a uniformly random ranking of `n` items of which `k` are positive."""
    if not 1 <= k <= n:
        raise ValueError(f"expected_random_ap needs 1 <= k <= n, got k={k}, n={n}")
    if n == 1:
        return 1.0
    harmonic = float(np.sum(1.0 / np.arange(1, n + 1)))
    return (k - 1) / (n - 1) + (harmonic / n) * (n - k) / (n - 1)


def random_map(y_true: np.ndarray) -> float:
    """Expected mAP of random scores on these labels: `expected_random_ap` averaged over the classes
    with at least one positive (the classes `sam.eval.metrics.mean_average_precision` keeps)."""
    y = np.asarray(y_true)
    n, positives = y.shape[0], y.sum(axis=0)
    kept = [expected_random_ap(int(k), n) for k in positives if k > 0]
    return float(np.mean(kept)) if kept else math.nan


def majority_accuracy(y_true: np.ndarray) -> float:
    """Top-1 accuracy of always predicting the most frequent class, over rows with a label."""
    y = np.asarray(y_true)
    labelled = y.sum(axis=1) > 0
    return float(y[labelled].mean(axis=0).max()) if labelled.any() else math.nan


def majority_micro_f1(y_true: np.ndarray, top_k: int = 1) -> float:
    """Micro-F1 of predicting the `top_k` most frequent classes for every row."""
    y = np.asarray(y_true).astype(np.int64)
    order = np.argsort(-y.sum(axis=0), kind="stable")[:top_k]
    pred = np.zeros_like(y)
    pred[:, order] = 1
    return float(f1_score(y, pred, average="micro", zero_division=0))


def _row(uniform: float, prior: float, rule: str) -> dict[str, Any]:
    """One metric's baselines: chance = the larger of uniform and prior (the line a model must beat)."""
    chance = float(np.nanmax([uniform, prior])) if np.isfinite([uniform, prior]).any() else math.nan
    return {"chance": chance, "uniform": float(uniform), "prior": float(prior), "prior_rule": rule}


def label_baselines(y_true: np.ndarray, top_k: int = 1) -> dict[str, dict[str, Any]]:
    """Baselines of classification mAP, accuracy and micro-F1 on multi-hot labels `y_true`.

    uniform: random scores / a uniformly random class (k classes for micro-F1); prior: the label
    prior (a constant score for mAP, whose AP is the prevalence; the majority class or the `top_k`
    most frequent classes). chance = max(uniform, prior)."""
    y = np.asarray(y_true).astype(np.int64)
    n, c = y.shape
    keep, labelled = y.sum(axis=0) > 0, y.sum(axis=1) > 0
    prevalence = float(y[:, keep].mean(axis=0).mean()) if keep.any() else math.nan
    p_rand, r_rand = y.sum() / (c * n), top_k / c
    f1_uniform = float(2 * p_rand * r_rand / (p_rand + r_rand)) if y.sum() else 0.0
    acc_uniform = float(y[labelled].sum(axis=1).mean() / c) if labelled.any() else math.nan
    return {
        "mAP": _row(random_map(y), prevalence, "constant score (AP = prevalence)"),
        "accuracy": _row(acc_uniform, majority_accuracy(y), "always the most frequent class"),
        "micro_f1": _row(f1_uniform, majority_micro_f1(y, top_k), f"always the top-{top_k} most frequent classes"),
    }


def example_baselines(
    examples: Sequence[Any], class_names: Sequence[str] | None = None, top_k: int = 1
) -> dict[str, dict[str, dict[str, Any]]]:
    """{task: {metric: baselines}} for the scored tasks among `examples` (`sam.data.Example`s):
    classification (`label_baselines`), reasoning (multiple choice: `answer_prior` by question type)
    and closed (the most frequent answer per question type). Captions have none."""
    from sam.data.types import label_matrix

    out: dict[str, dict[str, dict[str, Any]]] = {}
    cls = [ex for ex in examples if ex.task == "classification"]
    if cls:
        names = list(class_names) if class_names else sorted({l for ex in cls for l in ex.labels})
        out["classification"] = label_baselines(label_matrix(cls, names), top_k)
    for task in ("reasoning", "closed"):
        qs = [ex for ex in examples if ex.task == task]
        if qs:
            p = answer_prior(
                [ex.answer for ex in qs],
                [ex.metadata.get("question_type") for ex in qs],
                [ex.choices for ex in qs] if task == "reasoning" else None,
            )
            out[task] = {"accuracy": _row(p["uniform"], p["prior"], p["prior_rule"])}
    return out


def _words(text: str) -> tuple[str, ...]:
    return tuple(re.findall(r"\w+", str(text).lower()))


def answer_prior(
    answers: Sequence[str], groups: Sequence[Any] | None = None, choices: Sequence[Sequence[str] | None] | None = None
) -> dict[str, Any]:
    """Best answer-prior rate of questions that ignore the audio (module docstring).

    `answers`: the correct answers; `groups`: each question's type (None: one group); `choices`: each
    question's choices (None for closed questions: then only the answer-text rule applies). Answers
    are compared as lowercase word sequences. Returns {"uniform", "answer_text", "position", "prior",
    "prior_rule", "chance"}: uniform = mean 1/len(choices) (NaN without choices), prior = the larger of
    the two rules, chance = max(uniform, prior)."""
    n = len(answers)
    if n == 0:
        raise ValueError("answer_prior needs at least one question")
    groups = list(groups) if groups is not None else [None] * n
    if len(groups) != n or (choices is not None and len(choices) != n):
        raise ValueError(f"answer_prior: {n} answers but {len(groups)} groups / {len(choices or [])} choice lists")
    keys = [_words(a) for a in answers]
    by_group: dict[Any, Counter] = {}
    for g, k in zip(groups, keys):
        by_group.setdefault(g, Counter())[k] += 1
    text_rate = sum(c.most_common(1)[0][1] for c in by_group.values()) / n
    out: dict[str, Any] = {"answer_text": float(text_rate), "position": math.nan, "uniform": math.nan}
    rules = {"most frequent answer per question type": text_rate}
    if choices is not None and any(choices):
        positions: Counter = Counter()
        for a, cs in zip(keys, choices):
            words = [_words(c) for c in cs or ()]
            if a in words:
                positions[words.index(a)] += 1
        pos, hits = positions.most_common(1)[0] if positions else (0, 0)
        out["position"] = hits / n
        out["uniform"] = float(np.mean([1.0 / len(cs) for cs in choices if cs]))
        rules[f"always choice {pos + 1}"] = hits / n
    rule = max(rules, key=rules.get)
    out.update(prior=float(rules[rule]), prior_rule=rule)
    out["chance"] = float(np.nanmax([out["uniform"], out["prior"]]))
    return out


def fast_average_precision(y: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Per-column AP, equal to scikit-learn's `average_precision_score(average=None)` (tied scores
    form one threshold); NaN for columns without a positive."""
    y, scores = np.asarray(y, dtype=np.float64), np.asarray(scores, dtype=np.float64)
    out = np.full(y.shape[1], np.nan)
    for j in range(y.shape[1]):
        total = y[:, j].sum()
        if total == 0:
            continue
        order = np.argsort(-scores[:, j], kind="stable")
        s, t = scores[order, j], y[order, j]
        last = np.r_[s[1:] != s[:-1], True]  # the last item of each tie group closes a threshold
        tp = np.cumsum(t)[last]
        seen = np.arange(1, len(t) + 1)[last]
        recall_gain = np.diff(np.r_[0.0, tp]) / total
        out[j] = float(np.sum(recall_gain * tp / seen))
    return out


def fast_map(y: np.ndarray, scores: np.ndarray) -> float:
    """Macro mAP over columns with a positive (as `sam.eval.metrics.mean_average_precision`)."""
    ap = fast_average_precision(y, scores)
    return float(np.nanmean(ap)) if np.isfinite(ap).any() else math.nan


def _clusters(n: int, groups: Sequence[Any] | None) -> list[np.ndarray]:
    if groups is None:
        return [np.array([i]) for i in range(n)]
    if len(groups) != n:
        raise ValueError(f"{len(groups)} group ids for {n} items")
    index: dict[Any, list[int]] = {}
    for i, g in enumerate(groups):
        index.setdefault(g, []).append(i)
    return [np.asarray(v) for v in index.values()]


def _draws(n: int, groups: Sequence[Any] | None, draws: int, seed: int) -> list[np.ndarray]:
    """Item indices of `draws` resamples of the clips (all items of a drawn clip come along)."""
    clusters = _clusters(n, groups)
    rng = np.random.default_rng(seed)
    return [np.concatenate([clusters[c] for c in rng.integers(len(clusters), size=len(clusters))]) for _ in range(draws)]


def _interval(values: Sequence[float]) -> tuple[float, float]:
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=float)
    if not len(v):
        return math.nan, math.nan
    alpha = (1 - CI_LEVEL) / 2
    return float(np.quantile(v, alpha)), float(np.quantile(v, 1 - alpha))


def bootstrap_ci(
    n: int, statistic: Callable[[np.ndarray], float], groups: Sequence[Any] | None = None, draws: int = BOOTSTRAP_DRAWS, seed: int = 0
) -> tuple[float, float]:
    """Percentile 95% CI of `statistic(indices)` over clips resampled with replacement.

    `statistic` receives the item indices of one resample (rows of the caller's arrays); `groups`
    names each item's clip, so items of one clip are drawn together. Deterministic for a `seed`."""
    if n == 0:
        return math.nan, math.nan
    return _interval([statistic(idx) for idx in _draws(n, groups, draws, seed)])


def mean_ci(
    values: Sequence[float], groups: Sequence[Any] | None = None, draws: int = BOOTSTRAP_DRAWS, seed: int = 0
) -> tuple[float, float]:
    """`bootstrap_ci` of the mean of per-item `values` (e.g. 0/1 correctness, per-clip CIDEr-D)."""
    v = np.asarray(values, dtype=float)
    return bootstrap_ci(len(v), lambda idx: float(v[idx].mean()), groups, draws, seed)


def map_ci(y: np.ndarray, scores: np.ndarray, draws: int = BOOTSTRAP_DRAWS, seed: int = 0) -> tuple[float, float]:
    """`bootstrap_ci` of the mAP of `scores` over resampled clips (rows)."""
    y, scores = np.asarray(y), np.asarray(scores)
    return bootstrap_ci(len(y), lambda idx: fast_map(y[idx], scores[idx]), None, draws, seed)


def paired_bootstrap_ci(
    n: int,
    own: Callable[[np.ndarray], float],
    other: Callable[[np.ndarray], float],
    groups: Sequence[Any] | None = None,
    draws: int = BOOTSTRAP_DRAWS,
    seed: int = 0,
) -> tuple[float, float]:
    """95% CI of own(idx) - other(idx) with the same resampled clips for both conditions."""
    if n == 0:
        return math.nan, math.nan
    return _interval([own(idx) - other(idx) for idx in _draws(n, groups, draws, seed)])
