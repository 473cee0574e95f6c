"""Tidy metric rows of the experiment scripts, with each metric's baselines and its CI over test clips.

A row: task, metric, value, chance, uniform, prior, ci_low, ci_high (percent, CIDEr-D x100).
- chance: THE baseline line tables and figures draw (`common.bars` reads it): the larger of uniform
  and prior, computed on the same test items (`sam.eval.baselines`): for mAP the exact expected mAP of
  random scores; accuracy and micro-F1 the majority rule; questions the best single-answer prior.
- uniform: a uniformly random guess (random ranking, random class, 1 / number of choices);
- prior: the label / answer prior (a constant score, the majority class(es), the best
  answer-text or choice-position rule);
- ci_low / ci_high: the 95% bootstrap interval over test clips of the value (`sam.eval.annotate`).
Scores cached before baselines and CIs were computed give NaN in the columns they lack (and their
chance is the old one: rescore them). Strings such as "not computed: ..." are left out.
"""

from __future__ import annotations

import math
from typing import Any

ROW_KEYS = ("task", "metric", "value", "chance", "uniform", "prior", "ci_low", "ci_high")
NAN = math.nan


def _pct(v: Any) -> float:
    return 100 * float(v) if isinstance(v, (int, float)) and v is not None else NAN


def _row(task: str, metric: str, value: Any, m: dict[str, Any], base: dict[str, Any] | None = None, chance: Any = None) -> dict[str, Any]:
    lo, hi = (m.get("ci") or {}).get(metric, (NAN, NAN))
    base = base or {}
    return dict(
        task=task,
        metric=metric,
        value=_pct(value),
        chance=_pct(base.get("chance", chance)),
        uniform=_pct(base.get("uniform")),
        prior=_pct(base.get("prior")),
        ci_low=_pct(lo),
        ci_high=_pct(hi),
    )


def metric_rows(metrics: dict[str, Any] | None, **labels: Any) -> list[dict[str, Any]]:
    """Tidy rows (module docstring) from `sam.eval` metrics, each with `labels`; None (scoring
    deferred) gives no rows."""
    rows: list[dict[str, Any]] = []
    if metrics is None:
        return rows
    if "classification" in metrics:
        c = metrics["classification"]
        old = {"mAP": c["chance"]["mAP"], "accuracy": c["chance"]["accuracy_uniform"], "micro_f1": c["chance"]["micro_f1"]}
        for name in ("mAP", "accuracy", "micro_f1"):
            rows.append(_row("classification", name, c[name], c, (c.get("baselines") or {}).get(name), old[name]))
    for task in ("caption", "open"):
        m = metrics.get(task, {})
        for name, v in m.items():
            if name not in ("n", "n_examples") and isinstance(v, (int, float)):
                rows.append(_row(task, name, v, m))
    for task in ("reasoning", "closed"):
        if task in metrics:
            m = metrics[task]
            base = (m.get("baselines") or {}).get("accuracy") or {"chance": m.get("chance")}
            rows.append(_row(task, "accuracy", m["accuracy"], m, base))
            # multiple-choice diagnostics (absent in scores cached before they existed)
            if m.get("valid_choice_rate") is not None:
                rows.append(_row(task, "valid_choice_rate", m["valid_choice_rate"], {}))
            if m.get("accuracy_among_valid") is not None:
                rows.append(_row(task, "accuracy_among_valid", m["accuracy_among_valid"], {}, base))
    return [{**labels, **r} for r in rows]
