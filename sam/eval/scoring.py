"""Per-task scores of generated answers (the protocols are listed in `sam.eval`), and `evaluate_examples`, which
generates (`sam.eval.generation`) and scores in one call. Baselines and bootstrap CIs over the test clips are
added beside every task's scores by `sam.eval.annotate.annotate`.

It must never hide a failure as a score: items whose audio cannot be loaded or whose batch fails to generate
are listed with their error and left out of every metric.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from sam.config import EvalConfig
from sam.data.types import Example, label_matrix
from sam.eval.annotate import annotate
from sam.eval.generation import generate_predictions, generation_key
from sam.eval.metrics import (
    caption_metrics,
    classification_metrics,
    exact_match_metrics,
    grouped_accuracy,
    mmau_named_choice,
    mmau_string_match,
    normalized_answer_match,
    parse_labels,
)
from sam.eval.text_encoders import TextClassifier, TextEncoder, make_text_encoder

# Metadata keys that accuracy is broken down by when present (MMAU's task / category /
# sub-category / difficulty, and the scene composer's question types).
GROUP_KEYS = ("task", "mmau_task", "category", "sub-category", "difficulty", "question_type", "dataset")

# --------------------------------------------------------------------------------------------
# Text encoders


# --------------------------------------------------------------------------------------------
# Generation


# --------------------------------------------------------------------------------------------
# Scoring


def _score_classification(
    frame: pd.DataFrame, examples: list[Example], class_names: Sequence[str] | None, encoder: TextEncoder | None, config: EvalConfig
) -> dict[str, Any]:
    names = list(class_names) if class_names else sorted({l for ex in examples for l in ex.labels})
    if not names:
        raise ValueError("classification examples carry no labels and no class_names were given")
    index = {c: i for i, c in enumerate(names)}
    for ex in examples:
        for label in ex.labels:
            if label not in index:
                raise ValueError(f"example {ex.id}: label {label!r} is not in the class list ({len(names)} classes)")
    y = label_matrix(examples, names)
    preds = [frame.at[i, "prediction"] for i in frame.index[frame["_cls"]]]
    if encoder is None:
        encoder = make_text_encoder(config.text_encoder, config.text_encoder_path)
    clf = TextClassifier(names, encoder)
    scores = clf.scores(preds)
    metrics = classification_metrics(y, scores, top_k=config.f1_top_k)
    metrics["per_class_ap"] = {c: ap for c, ap in zip(names, metrics["per_class_ap"]) if not math.isnan(ap)}
    metrics["text_encoder"] = getattr(encoder, "name", type(encoder).__name__)
    parsed = [parse_labels(p, names) for p in preds]
    y_exact = np.zeros_like(y)
    for r, (found, _) in enumerate(parsed):
        y_exact[r, [index[c] for c in found]] = 1
    metrics["exact_match"] = exact_match_metrics(y, y_exact)
    rows = frame.index[frame["_cls"]]
    frame.loc[rows, "top_class"] = [names[i] for i in scores.argmax(axis=1)]
    frame.loc[rows, "top_score"] = scores.max(axis=1)
    frame.loc[rows, "parsed_labels"] = ["; ".join(f) for f, _ in parsed]
    frame.loc[rows, "correct"] = [bool(ex_y[i]) for ex_y, i in zip(y, scores.argmax(axis=1))]
    return metrics


def _score_captions(frame: pd.DataFrame, examples: list[Example], mask: pd.Series, config: EvalConfig) -> dict[str, Any]:
    # one scored item per clip + instruction, with every answer given for it as a reference
    refs: dict[str, list[str]] = {}
    first: dict[str, int] = {}
    for pos, ex in zip(frame.index[mask], examples):
        key = generation_key(ex)
        extra = ex.metadata.get("references") or []
        if isinstance(extra, str) or not all(isinstance(r, str) for r in extra):
            raise ValueError(f"example {ex.id}: metadata['references'] must be a list of strings")
        bucket = refs.setdefault(key, [])
        for r in [ex.answer, *extra]:
            if r.strip() and r not in bucket:
                bucket.append(r)
        first.setdefault(key, pos)
    keys = list(refs)
    preds = [frame.at[first[k], "prediction"] for k in keys]
    metrics, per_clip = caption_metrics(preds, [refs[k] for k in keys], config.corenlp_dir or None)
    metrics["n_examples"] = int(mask.sum())
    per_clip.index = keys
    score_cols = [c for c in per_clip.columns if c != "prediction"]
    keyed = [generation_key(ex) for ex in examples]
    for col in score_cols:
        frame.loc[mask, col] = per_clip.loc[keyed, col].to_numpy()
    return metrics


def _score_answers(
    frame: pd.DataFrame, examples: list[Example], mask: pd.Series, group_keys: Sequence[str], multiple_choice: bool
) -> dict[str, Any]:
    correct, chance, named = [], [], {}
    for pos, ex in zip(frame.index[mask], examples):
        pred = frame.at[pos, "prediction"]
        if multiple_choice and ex.choices:
            correct.append(mmau_string_match(pred, ex.answer, ex.choices))
            chance.append(1.0 / len(ex.choices))
            named[pos] = mmau_named_choice(pred, ex.choices)
        else:
            correct.append(normalized_answer_match(pred, ex.answer))
    frame.loc[mask, "correct"] = correct
    if named:
        if "named_choice" not in frame.columns:
            frame["named_choice"] = pd.Series(None, index=frame.index, dtype=object)
        for pos, choice in named.items():
            frame.at[pos, "named_choice"] = choice
    sub = pd.DataFrame({k: frame.loc[mask, f"metadata.{k}"] for k in group_keys if f"metadata.{k}" in frame.columns})
    sub["correct"] = np.asarray(correct, dtype=float)
    out: dict[str, Any] = {
        "n": len(correct),
        "accuracy": float(np.mean(correct)),
        "rule": "MMAU string match" if multiple_choice else "normalized exact match",
        "by": grouped_accuracy(sub, "correct", group_keys),
    }
    if chance:
        out["chance"] = float(np.mean(chance))
        # Diagnostics: how often an answer picks exactly one choice, and the accuracy over those answers
        # (None when none does); the chance level of the latter is the same 1 / len(choices).
        hits = [c for pos, c in zip(frame.index[mask], correct) if named.get(pos) is not None]
        out["valid_choice_rate"] = len(hits) / len(named)
        out["accuracy_among_valid"] = float(np.mean(hits)) if hits else None
    return out


def score_predictions(
    examples: Sequence[Example],
    predictions: Sequence[str | None],
    *,
    errors: Sequence[str | None] | None = None,
    class_names: Sequence[str] | None = None,
    text_encoder: TextEncoder | None = None,
    config: EvalConfig | None = None,
    group_keys: Sequence[str] = GROUP_KEYS,
) -> tuple[dict[str, Any], pd.DataFrame]:
    """Metrics per task (keys = task names) and a per-example table, from generated texts.

    `config` (default `EvalConfig()`) picks the text encoder, CoreNLP dir and micro-F1 top-k;
    `text_encoder` overrides the configured encoder. Items with `prediction None` (failed)
    are listed under "failed" and scored nowhere. `class_names` defaults to the sorted union of the
    classification examples' labels; for a real dataset pass its full class list.
    """
    examples = list(examples)
    config = config or EvalConfig()
    if len(predictions) != len(examples):
        raise ValueError(f"{len(predictions)} predictions for {len(examples)} examples")
    errors = list(errors) if errors is not None else [None] * len(examples)
    frame = pd.DataFrame(
        {
            "id": [ex.id for ex in examples],
            "task": [ex.task for ex in examples],
            "instruction": [ex.instruction for ex in examples],
            "answer": [ex.answer for ex in examples],
            "labels": ["; ".join(ex.labels) for ex in examples],
            "prediction": list(predictions),
            "error": errors,
            "correct": pd.Series([None] * len(examples), dtype=object),
        }
    )
    for key in group_keys:
        values = [ex.metadata.get(key) for ex in examples]
        if any(v is not None for v in values):
            frame[f"metadata.{key}"] = values
    ok = frame["prediction"].notna()
    metrics: dict[str, Any] = {
        "n_examples": len(examples),
        "n_failed": int((~ok).sum()),
        "failed": frame.loc[~ok, ["id", "error"]].to_dict("records"),
    }
    tasks = frame["task"]
    frame["_cls"] = ok & (tasks == "classification")
    if frame["_cls"].any():
        cls_examples = [ex for ex, m in zip(examples, frame["_cls"]) if m]
        metrics["classification"] = _score_classification(frame, cls_examples, class_names, text_encoder, config)
    for task in ("caption", "open"):
        mask = ok & (tasks == task)
        if mask.any():
            metrics[task] = _score_captions(frame, [ex for ex, m in zip(examples, mask) if m], mask, config)
    for task, mc in (("reasoning", True), ("closed", False)):
        mask = ok & (tasks == task)
        if mask.any():
            metrics[task] = _score_answers(frame, [ex for ex, m in zip(examples, mask) if m], mask, group_keys, mc)
    unknown = sorted(set(tasks[ok]) - {"classification", "caption", "open", "reasoning", "closed"})
    if unknown:
        metrics["unscored_tasks"] = unknown
    return annotate(metrics, frame, examples, class_names, config.f1_top_k), frame.drop(columns="_cls")


def evaluate_examples(
    model: Any,
    examples: Sequence[Example],
    *,
    batch_size: int = 16,
    max_new_tokens: int = 32,
    audio_loader: Callable[[Example], Any] | None = None,
    class_names: Sequence[str] | None = None,
    text_encoder: TextEncoder | None = None,
    config: EvalConfig | None = None,
    group_keys: Sequence[str] = GROUP_KEYS,
    progress: bool = False,
) -> tuple[dict[str, Any], pd.DataFrame]:
    """Generate answers for `examples` with `model` and score them: (metrics, predictions table).

    `model` is `sam.SAM` or any `generate(audio_list, prompts, max_new_tokens) -> list[str]`
    callable; `audio_loader` maps an Example to what `generate` takes per clip (default: a 16 kHz
    waveform from `default_audio_loader`). See `score_predictions` for the metrics.
    """
    examples = list(examples)
    gen = generate_predictions(
        model, examples, batch_size=batch_size, max_new_tokens=max_new_tokens, audio_loader=audio_loader, progress=progress
    )
    return score_predictions(
        examples,
        gen["prediction"].tolist(),
        errors=gen["error"].tolist(),
        class_names=class_names,
        text_encoder=text_encoder,
        config=config,
        group_keys=group_keys,
    )


# --------------------------------------------------------------------------------------------
# Multiple choice by likelihood (a second protocol beside MMAU's string match)
