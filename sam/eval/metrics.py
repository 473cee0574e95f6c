"""Pure metric functions for SAM's evaluation: classification, captioning and multiple choice.

What lives here:
- `classification_metrics`: mAP (scikit-learn `average_precision_score`, macro over the classes
  that have at least one positive), top-1 accuracy and micro-F1 from a score matrix, with the
  baseline of each on the same labels (`sam.eval.baselines`) and a bootstrap CI over examples.
- `parse_labels` / `exact_match_metrics`: the second classification protocol, which reads class
  names verbatim out of the generated text.
- `caption_metrics`: BLEU-1..4, METEOR, ROUGE-L and CIDEr-D through pycocoevalcap after its
  PTBTokenizer (Java), exactly as the coco-caption pipeline runs them; SPICE and SPIDEr only when
  a local Stanford CoreNLP 3.6.0 jar is configured.
- `mmau_string_match`: MMAU's official string-match rule for multiple-choice answers;
  `mmau_named_choice`: which choice an answer picks under it, if exactly one (a diagnostic).

What this module must never do: download anything (pycocoevalcap's `Spice()` constructor fetches
CoreNLP from the internet, so SPICE is run here through its jar with an explicit classpath), report
a metric it could not compute as a number (SPICE without CoreNLP is the string "not computed: ..."),
or load models. It knows nothing about SAM; inputs are arrays and strings.
"""

from __future__ import annotations

import functools
import json
import math
import re
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, f1_score, precision_score, recall_score

from sam.eval.baselines import BOOTSTRAP_DRAWS, bootstrap_ci, fast_map, label_baselines

NOT_COMPUTED = "not computed"
CORENLP_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")

# --------------------------------------------------------------------------------------------
# Classification from scores


def _check_matrix(y_true: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true)
    scores = np.asarray(scores, dtype=np.float64)
    if y_true.ndim != 2 or scores.shape != y_true.shape:
        raise ValueError(f"y_true and scores must be [examples, classes] of one shape, got {y_true.shape} and {scores.shape}")
    if not np.isin(y_true, (0, 1)).all():
        raise ValueError("y_true must be a 0/1 multi-hot matrix")
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or infinite values")
    return y_true.astype(np.int64), scores


def mean_average_precision(y_true: np.ndarray, scores: np.ndarray) -> tuple[float, np.ndarray]:
    """Macro mAP over classes with >= 1 positive, and per-class AP (NaN for classes without one).

    Classes without positives are left out because their AP is undefined (scikit-learn warns and
    returns 0), which would drag the mean down for reasons unrelated to the model.
    """
    y_true, scores = _check_matrix(y_true, scores)
    keep = y_true.sum(axis=0) > 0
    per_class = np.full(y_true.shape[1], np.nan)
    if not keep.any():
        return math.nan, per_class
    per_class[keep] = average_precision_score(y_true[:, keep], scores[:, keep], average=None)
    return float(np.mean(per_class[keep])), per_class


def top_k_predictions(scores: np.ndarray, k: int = 1) -> np.ndarray:
    """0/1 matrix marking each row's k highest scores (ties go to the lower class index)."""
    scores = np.asarray(scores)
    if not 1 <= k <= scores.shape[1]:
        raise ValueError(f"top-k must be between 1 and the number of classes ({scores.shape[1]}), got {k}")
    # stable sort on -score keeps the lower index first among ties, as np.argmax does
    idx = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    pred = np.zeros(scores.shape, dtype=np.int64)
    np.put_along_axis(pred, idx, 1, axis=1)
    return pred


def classification_metrics(y_true: np.ndarray, scores: np.ndarray, top_k: int = 1, bootstrap: int = BOOTSTRAP_DRAWS) -> dict[str, Any]:
    """mAP, top-1 accuracy and micro-F1 from per-class scores, with chance levels.

    - mAP: `mean_average_precision` (macro over classes with positives).
    - accuracy: the top-scoring class is one of the example's labels (for single-label data this
      is plain argmax accuracy, LTU's ESC-50 / VocalSound metric). Rows without labels are skipped.
    - micro_f1: each example predicts its `top_k` best classes (LTU's DCASE17 protocol predicts the
      argmax class, i.e. top_k=1), scored with scikit-learn's micro-averaged F1 against the labels.
    Baselines on these labels (`sam.eval.baselines`), under "chance":
    - mAP: the exact expected mAP of a uniformly random ranking (`random_map`). It is NOT the class
      prevalence: that is a random ranking's expected precision, and its expected AP only for
      infinitely many clips (at 64 clips it is about half the random-ranking AP). The prevalence is
      kept as "mAP_prevalence", the AP of a constant score.
    - accuracy: the majority rule (always the most frequent class, "accuracy_majority") or
      "accuracy_uniform" = mean(|labels|) / C (a uniformly random class), whichever is higher.
    - micro_f1: the top_k most frequent classes for every example ("micro_f1_majority") or the
      expected micro-F1 of k uniformly random classes ("micro_f1_uniform"), whichever is higher.
    "baselines": the same per metric as {chance, uniform, prior, prior_rule} (`label_baselines`).
    "ci": the 95% bootstrap interval over examples of each metric (`bootstrap` resamples; 0 = none).
    """
    y_true, scores = _check_matrix(y_true, scores)
    n, c = y_true.shape
    if n == 0:
        raise ValueError("classification_metrics needs at least one example")
    mAP, per_class = mean_average_precision(y_true, scores)
    keep = y_true.sum(axis=0) > 0
    labelled = y_true.sum(axis=1) > 0
    top1 = scores.argmax(axis=1)
    hits = y_true[np.arange(n), top1].astype(bool)
    pred = top_k_predictions(scores, top_k)
    base = label_baselines(y_true, top_k)
    return {
        "n": int(n),
        "num_classes": int(c),
        "num_classes_with_positives": int(keep.sum()),
        "mAP": mAP,
        "accuracy": float(hits[labelled].mean()) if labelled.any() else math.nan,
        "micro_f1": float(f1_score(y_true, pred, average="micro", zero_division=0)),
        "f1_rule": f"top-{top_k} classes per example",
        "chance": {
            "mAP": base["mAP"]["chance"],
            "mAP_prevalence": base["mAP"]["prior"],
            "accuracy": base["accuracy"]["chance"],
            "accuracy_majority": base["accuracy"]["prior"],
            "accuracy_uniform": base["accuracy"]["uniform"],
            "micro_f1": base["micro_f1"]["chance"],
            "micro_f1_majority": base["micro_f1"]["prior"],
            "micro_f1_uniform": base["micro_f1"]["uniform"],
        },
        "baselines": base,
        "ci": _classification_ci(y_true, scores, pred, hits, labelled, bootstrap) if bootstrap else {},
        "per_class_ap": per_class.tolist(),
    }


def _classification_ci(
    y: np.ndarray, scores: np.ndarray, pred: np.ndarray, hits: np.ndarray, labelled: np.ndarray, draws: int
) -> dict[str, list[float]]:
    """95% bootstrap intervals over examples of mAP, accuracy and micro-F1 (one set of resamples)."""
    tp, fp, fn = (pred & y).sum(axis=1), (pred & (1 - y)).sum(axis=1), ((1 - pred) & y).sum(axis=1)

    def micro_f1(idx: np.ndarray) -> float:
        t, p, f = tp[idx].sum(), fp[idx].sum(), fn[idx].sum()
        return float(2 * t / (2 * t + p + f)) if t + p + f else 0.0

    def accuracy(idx: np.ndarray) -> float:
        keep = labelled[idx]
        return float(hits[idx][keep].mean()) if keep.any() else math.nan

    n = len(y)
    return {
        "mAP": list(bootstrap_ci(n, lambda idx: fast_map(y[idx], scores[idx]), draws=draws)),
        "accuracy": list(bootstrap_ci(n, accuracy, draws=draws)),
        "micro_f1": list(bootstrap_ci(n, micro_f1, draws=draws)),
    }


# --------------------------------------------------------------------------------------------
# Exact-match label parsing (the second classification protocol)


def normalize_label(text: str) -> str:
    """Lowercase, underscores as spaces, outer punctuation stripped, whitespace collapsed."""
    text = text.replace("_", " ").lower()
    text = re.sub(r"\s+", " ", text)
    return text.strip(" \t\n.,;:!?\"'()[]{}")


def parse_labels(text: str, class_names: Sequence[str]) -> tuple[list[str], list[str]]:
    """Class names found verbatim in a generated label list, and the pieces that matched none.

    The output is split on commas, semicolons and newlines (LTU answers "a; b", ours "a, b"); a
    piece that is not a class name is split once more on " and ", so "dog and rain" yields both
    while a class literally named "rock and roll" still matches whole. Matching is exact after
    `normalize_label`; nothing fuzzy, which is the point of this protocol.
    """
    lookup = {normalize_label(c): c for c in class_names}
    found: list[str] = []
    unmatched: list[str] = []
    for piece in re.split(r"[,;\n]", text):
        piece = normalize_label(piece)
        if not piece:
            continue
        parts = [piece] if piece in lookup else [normalize_label(p) for p in piece.split(" and ")]
        for part in parts:
            if part in lookup:
                if lookup[part] not in found:
                    found.append(lookup[part])
            elif part:
                unmatched.append(part)
    return found, unmatched


def exact_match_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, Any]:
    """Subset accuracy (predicted set == label set), micro precision / recall / F1, macro-F1."""
    y_true, _ = _check_matrix(y_true, y_pred)
    y_pred = np.asarray(y_pred).astype(np.int64)
    keep = y_true.sum(axis=0) > 0
    return {
        "n": int(y_true.shape[0]),
        "subset_accuracy": float((y_true == y_pred).all(axis=1).mean()),
        "micro_precision": float(precision_score(y_true, y_pred, average="micro", zero_division=0)),
        "micro_recall": float(recall_score(y_true, y_pred, average="micro", zero_division=0)),
        "micro_f1": float(f1_score(y_true, y_pred, average="micro", zero_division=0)),
        "macro_f1": float(f1_score(y_true[:, keep], y_pred[:, keep], average="macro", zero_division=0)) if keep.any() else math.nan,
        "empty_predictions": int((y_pred.sum(axis=1) == 0).sum()),
    }


# --------------------------------------------------------------------------------------------
# Multiple choice: MMAU's string-match rule


def _word_tokens(text: str) -> set[str]:
    # MMAU tokenizes with \b\w+\b on lowercased text; a maximal \w+ run is exactly that
    return set(re.findall(r"\w+", text.lower()))


def mmau_string_match(prediction: str, answer: str, choices: Sequence[str]) -> bool:
    """MMAU's official rule: is `prediction` a correct pick of `answer` among `choices`?

    Words are lowercase `\\w+` runs (so punctuation and case never matter). Correct means:
    the prediction has at least one word; every word of the answer is in the prediction; and the
    prediction contains no word that belongs to a wrong choice but not to the answer. A wrong
    choice whose word set equals the answer's contributes nothing. So "a dog barks" matches
    answer "Dog" only if no wrong choice has the words "a" or "barks".
    """
    pred = _word_tokens(prediction)
    if not pred:
        return False
    ans = _word_tokens(answer)
    wrong: set[str] = set()
    for choice in choices:
        words = _word_tokens(choice)
        if words != ans:
            wrong |= words - ans
    return ans <= pred and not (pred & wrong)


def mmau_named_choice(prediction: str, choices: Sequence[str]) -> str | None:
    """The choice that `prediction` picks under MMAU's rule, or None where it picks none or several.

    A diagnostic beside the accuracy, not part of MMAU's scoring: a model that answers with no
    valid choice scores below 1/len(choices), so a low accuracy reads differently when most answers
    name no choice. Choices with equal word sets count as one (the first is named)."""
    picked: dict[frozenset[str], str] = {}
    for c in choices:
        if mmau_string_match(prediction, c, choices):
            picked.setdefault(frozenset(_word_tokens(c)), c)
    return next(iter(picked.values())) if len(picked) == 1 else None


def normalized_answer_match(prediction: str, answer: str) -> bool:
    """Closed-question accuracy rule: the same words in the same order, ignoring case and punctuation."""
    return re.findall(r"\w+", prediction.lower()) == re.findall(r"\w+", answer.lower())


def grouped_accuracy(frame: pd.DataFrame, correct: str, keys: Sequence[str]) -> dict[str, dict[str, dict[str, float]]]:
    """{key: {value: {"accuracy", "n"}}} for each column in `keys` present in `frame`."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for key in keys:
        if key not in frame.columns or frame[key].isna().all():
            continue
        groups = frame.dropna(subset=[key]).groupby(frame[key].astype(str))[correct]
        out[key] = {str(v): {"accuracy": float(g.mean()), "n": int(len(g))} for v, g in groups}
    return out


# --------------------------------------------------------------------------------------------
# Captioning through pycocoevalcap


def _coco_dicts(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> tuple[dict, dict]:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} reference lists")
    if not predictions:
        raise ValueError("caption_metrics needs at least one prediction")
    gts, res = {}, {}
    for i, (pred, refs) in enumerate(zip(predictions, references)):
        if not isinstance(pred, str):
            raise ValueError(f"prediction {i} is {type(pred).__name__}, not a string")
        if isinstance(refs, str) or not refs or not all(isinstance(r, str) and r.strip() for r in refs):
            raise ValueError(f"references of item {i} must be a non-empty list of non-empty strings, got {refs!r}")
        gts[str(i)] = [{"caption": r} for r in refs]
        res[str(i)] = [{"caption": pred}]
    return gts, res


def ptb_tokenize(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> tuple[dict, dict]:
    """coco-caption's tokenization (Stanford PTBTokenizer, lowercased, punctuation dropped).

    Returns (gts, res) keyed "0".."n-1", the inputs every pycocoevalcap scorer takes.
    """
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    gts, res = _coco_dicts(predictions, references)
    tok = PTBTokenizer()
    gts_t, res_t = tok.tokenize(gts), tok.tokenize(res)
    if gts_t.keys() != gts.keys() or res_t.keys() != res.keys():
        raise RuntimeError("PTBTokenizer returned a different number of lines than it was given")
    return gts_t, res_t


@functools.cache
def _meteor() -> Any:
    # The METEOR jar spends seconds loading its paraphrase tables; one process serves all calls.
    from pycocoevalcap.meteor.meteor import Meteor

    return Meteor()


def corenlp_status(corenlp_dir: str | Path | None) -> tuple[Path | None, str]:
    """(directory holding the CoreNLP 3.6.0 jars, "") or (None, why SPICE cannot run)."""
    if not corenlp_dir:
        return (
            None,
            f"{NOT_COMPUTED}: no Stanford CoreNLP 3.6.0 directory configured (eval.corenlp_dir); SPICE needs {' and '.join(CORENLP_JARS)}",
        )
    path = Path(corenlp_dir)
    if path.is_file():
        path = path.parent
    missing = [j for j in CORENLP_JARS if not (path / j).is_file()]
    if missing:
        return None, f"{NOT_COMPUTED}: {', '.join(missing)} not found in {path}"
    return path, ""


def spice_scores(gts: dict, res: dict, corenlp_dir: Path, java: str = "java") -> tuple[float, list[float]]:
    """SPICE F-scores of tokenized captions via pycocoevalcap's SPICE jar, never downloading.

    Same jar, flags and averaging as pycocoevalcap's `Spice.compute_score`, but the CoreNLP jars
    come from `corenlp_dir` on an explicit classpath instead of being fetched into site-packages.
    """
    import pycocoevalcap.spice as spice_pkg

    spice_dir = Path(spice_pkg.__file__).parent
    classpath = [str(spice_dir / "spice-1.0.jar"), str(spice_dir / "lib" / "*")] + [str(corenlp_dir / j) for j in CORENLP_JARS]
    ids = sorted(gts)
    items = [{"image_id": i, "test": res[i][0], "refs": gts[i]} for i in ids]
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.json", Path(tmp) / "out.json"
        src.write_text(json.dumps(items))
        cmd = [java, "-Xmx8G", "-cp", ":".join(classpath), "edu.anu.spice.SpiceScorer", str(src), "-out", str(dst), "-subset", "-silent"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            # a Java stack trace: its last "Caused by" / exception line says what went wrong
            lines = [l.strip() for l in proc.stderr.splitlines() if l.strip()]
            causes = [l for l in lines if "Exception" in l or "Error" in l] or lines or ["no output"]
            raise RuntimeError(f"SPICE jar failed (exit {proc.returncode}): {causes[-1]}")
        by_id = {r["image_id"]: r["scores"]["All"]["f"] for r in json.loads(dst.read_text())}
    per = [float(by_id[i]) if by_id[i] is not None else math.nan for i in ids]
    order = {i: k for k, i in enumerate(ids)}
    return float(np.mean(per)), [per[order[i]] for i in gts]


def caption_metrics(
    predictions: Sequence[str], references: Sequence[Sequence[str]], corenlp_dir: str | Path | None = None
) -> tuple[dict[str, Any], pd.DataFrame]:
    """Corpus-level caption metrics and a per-clip table, the coco-caption way.

    Keys: BLEU_1..BLEU_4, METEOR, ROUGE_L, CIDEr-D, SPICE, SPIDEr. pycocoevalcap's `Cider` is the
    coco-caption implementation, which is CIDEr-D (clipped n-gram counts, Gaussian length penalty
    sigma=6, x10; IDF from the evaluated references), the variant audio-captioning papers report.
    SPICE runs only when `corenlp_dir` holds the CoreNLP 3.6.0 jars; otherwise SPICE and SPIDEr
    (= (CIDEr-D + SPICE) / 2) are the string "not computed: <reason>".
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    gts, res = ptb_tokenize(predictions, references)
    out: dict[str, Any] = {"n": len(gts)}
    per: dict[str, Any] = {"prediction": list(predictions)}
    bleu, bleu_each = Bleu(4).compute_score(gts, res, verbose=0)
    for k in range(4):
        out[f"BLEU_{k + 1}"], per[f"BLEU_{k + 1}"] = float(bleu[k]), bleu_each[k]
    for name, scorer in (("METEOR", _meteor()), ("ROUGE_L", Rouge()), ("CIDEr-D", Cider())):
        score, each = scorer.compute_score(gts, res)
        out[name], per[name] = float(score), list(each)
    where, reason = corenlp_status(corenlp_dir)
    if where is None:
        out["SPICE"] = out["SPIDEr"] = reason
    else:
        try:
            spice, spice_each = spice_scores(gts, res, where)
        except (RuntimeError, OSError) as e:
            out["SPICE"] = out["SPIDEr"] = f"{NOT_COMPUTED}: {e}"
        else:
            out["SPICE"], per["SPICE"] = spice, spice_each
            out["SPIDEr"] = (out["CIDEr-D"] + spice) / 2
            per["SPIDEr"] = [(c + s) / 2 for c, s in zip(per["CIDEr-D"], spice_each)]
    return out, pd.DataFrame(per)
