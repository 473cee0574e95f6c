"""Baselines and bootstrap intervals beside the scores of `sam.eval.score_predictions`.

`annotate` adds to each task's metrics, computed from the same test items:
- "baselines": {metric: {chance, uniform, prior, prior_rule}} (`sam.eval.baselines.example_baselines`);
  reasoning and closed questions also get "chance" (= the larger of uniform and prior), "uniform"
  and "prior" at the top level, the numbers tables draw;
- "ci": {metric: [low, high]}, the 95% bootstrap interval over test clips (items grouped by their
  scene, so all questions about one clip are resampled together). Captions get it for the metrics
  that are a mean over clips (CIDEr-D, ROUGE_L, SPICE, SPIDEr), with the corpus statistics (CIDEr's
  IDF) held at the full test set; corpus-level BLEU and METEOR get none. Classification's comes
  from `sam.eval.metrics.classification_metrics`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from sam.eval.baselines import example_baselines, mean_ci

MEAN_OVER_CLIPS = ("CIDEr-D", "ROUGE_L", "SPICE", "SPIDEr")


def clip_ids(examples: Sequence[Any]) -> list[str]:
    """Each example's clip: its scene id, else its audio (a path or a spec's id)."""
    out = []
    for ex in examples:
        audio = ex.audio.get("id") if isinstance(ex.audio, dict) else ex.audio
        out.append(str(ex.metadata.get("scene") or audio))
    return out


def annotate(
    metrics: dict[str, Any], frame: pd.DataFrame, examples: Sequence[Any], class_names: Sequence[str] | None = None, top_k: int = 1
) -> dict[str, Any]:
    """`metrics` with baselines and per-clip CIs added (module docstring), in place and returned.
    `frame` is score_predictions' per-example table, row i = examples[i]."""
    ok = frame["prediction"].notna().to_numpy()
    scored = [ex for ex, good in zip(examples, ok) if good]
    base = example_baselines(scored, class_names, top_k)
    clips = np.asarray(clip_ids(examples))
    tasks = frame["task"].to_numpy()
    for task, m in metrics.items():
        if not isinstance(m, dict) or task not in ("classification", "caption", "open", "reasoning", "closed"):
            continue
        if task in base:
            m["baselines"] = base[task]
        if task in ("reasoning", "closed"):
            b = base[task]["accuracy"]
            m.update(chance=b["chance"], uniform=b["uniform"], prior=b["prior"], prior_rule=b["prior_rule"])
            rows = ok & (tasks == task)
            correct = frame.loc[rows, "correct"].astype(float).to_numpy()
            m["ci"] = {"accuracy": list(mean_ci(correct, list(clips[rows])))}
        elif task in ("caption", "open"):
            rows = ok & (tasks == task)
            sub = frame.loc[rows]
            first = ~pd.Series(list(zip(clips[rows], sub["instruction"]))).duplicated().to_numpy()  # one row per scored item
            m["ci"] = {
                k: list(mean_ci(pd.to_numeric(sub[k], errors="coerce").to_numpy()[first], list(clips[rows][first])))
                for k in MEAN_OVER_CLIPS
                if k in sub.columns and isinstance(m.get(k), (int, float))
            }
    return metrics


def ci_of(metrics: dict[str, Any] | None, task: str, metric: str) -> tuple[float, float]:
    """(low, high) of a task's metric from annotated metrics, NaN where none was computed."""
    ci = ((metrics or {}).get(task) or {}).get("ci") or {}
    lo, hi = ci.get(metric, (math.nan, math.nan))
    return float(lo), float(hi)


def question_baselines(examples: Sequence[Any]) -> dict[str, Any]:
    """chance / uniform / prior / prior_rule of multiple-choice `examples` (every example's task is
    taken as reasoning), for protocols that score them without `annotate` (the likelihood protocol)."""
    b = example_baselines([ex if ex.task == "reasoning" else _as_reasoning(ex) for ex in examples])["reasoning"]["accuracy"]
    return {k: b[k] for k in ("chance", "uniform", "prior", "prior_rule")}


def accuracy_ci(correct: Sequence[bool], examples: Sequence[Any]) -> list[float]:
    """95% bootstrap CI of the accuracy of `correct` (one per example) over the examples' clips."""
    return list(mean_ci(np.asarray(correct, dtype=float), clip_ids(examples)))


def _as_reasoning(example: Any) -> Any:
    from dataclasses import replace

    return replace(example, task="reasoning")


def other_audio(examples: Sequence[Any]) -> list[Any]:
    """The other-audio control: every example with the audio of another test scene, the same prompt.

    Scenes are numbered in order of first appearance; scene i gets scene (i + n // 2) mod n's audio
    (n scenes, n >= 2), a fixed derangement, so every question of a scene is asked about one other
    scene and reruns pair the same clips."""
    from dataclasses import replace

    clips = clip_ids(examples)
    order = list(dict.fromkeys(clips))
    n = len(order)
    if n < 2:
        raise ValueError(f"the other-audio control needs at least 2 test scenes, got {n}")
    audio = {c: ex.audio for c, ex in zip(clips, examples)}
    swap = {c: audio[order[(i + n // 2) % n]] for i, c in enumerate(order)}
    return [replace(ex, audio=swap[c]) for c, ex in zip(clips, examples)]
