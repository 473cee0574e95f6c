"""The other-audio control of the experiment scripts: own vs another scene's audio, paired over clips.

`paired(s, run, checkpoint, tasks)` generates (through `measure.evaluate`, so cached, deferrable and
assembled with ``--cached`` like every score) the test split's answers for `tasks` with the run's own
audio and with another test scene's (`sam.eval.annotate.other_audio`), and scores both on the
same items. For each (task, metric) it returns own, other_audio and the paired 95% bootstrap CI over
test clips of own - other ("audio use"; the same resampled clips for both conditions):
- classification: mAP, accuracy, micro_f1 from the per-class text-embedding scores of each answer;
- caption / open: CIDEr-D and ROUGE_L per clip (the corpus statistics held at the full test set);
- reasoning (MMAU's string match) / closed: accuracy, questions of one scene resampled together.
`control_rows` turns it into tidy rows named `<metric>_other_audio` and `<metric>_audio_use` (the
difference), with the CI in ci_low / ci_high, beside the script's own rows of `<metric>`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from . import common, measure

CAPTION_METRICS = ("CIDEr-D", "ROUGE_L")


def _scores(run: measure.Run, texts: list[Any], names: list[str]) -> np.ndarray:
    from sam.eval import TextClassifier, make_text_encoder

    clf = TextClassifier(names, make_text_encoder(run.cfg.eval.text_encoder, run.cfg.eval.text_encoder_path))
    return clf.scores([t if isinstance(t, str) else "" for t in texts])


def _classification(run: measure.Run, own: pd.DataFrame, other: pd.DataFrame) -> dict[str, tuple]:
    """{metric: (per-condition statistic of row indices, n, groups)} for classification."""
    from sam.data.types import label_matrix
    from sam.eval.baselines import fast_map
    from sam.eval.metrics import top_k_predictions

    cls = measure.test_examples(run.cfg, ["classification"])
    names = sorted({l for ex in cls for l in ex.labels})
    y, ids = label_matrix(cls, names), [ex.id for ex in cls]
    k = run.cfg.eval.f1_top_k
    out: dict[str, list] = {"mAP": [], "accuracy": [], "micro_f1": []}
    for table in (own, other):
        s = _scores(run, table.loc[ids, "prediction"].tolist(), names)
        hits = y[np.arange(len(y)), s.argmax(axis=1)].astype(float)
        labelled = y.sum(axis=1) > 0
        pred = top_k_predictions(s, k)
        tp, fp, fn = (pred & y).sum(1), (pred & (1 - y)).sum(1), ((1 - pred) & y).sum(1)
        out["mAP"].append(lambda i, s=s: 100 * fast_map(y[i], s[i]))
        out["accuracy"].append(lambda i, h=hits, lab=labelled: 100 * float(h[i][lab[i]].mean()) if lab[i].any() else math.nan)
        out["micro_f1"].append(lambda i, a=tp, b=fp, c=fn: 100 * float(2 * a[i].sum() / max(1, 2 * a[i].sum() + b[i].sum() + c[i].sum())))
    return {m: (f, len(ids), None) for m, f in out.items()}


def _per_item(run: measure.Run, task: str, own: pd.DataFrame, other: pd.DataFrame) -> dict[str, tuple]:
    """{metric: ((own stat, other stat), n, groups)} for tasks scored per item (captions, questions)."""
    from sam.eval.annotate import clip_ids

    examples = measure.test_examples(run.cfg, [task])
    clips = clip_ids(examples)
    if task in ("caption", "open"):
        first = {}
        for c, ex in zip(clips, examples):
            first.setdefault((c, ex.instruction), ex.id)  # one scored answer per clip and prompt
        ids, groups = list(first.values()), [c for c, _ in first]
        cols = [m for m in CAPTION_METRICS if m in own.columns]
    else:
        ids, groups, cols = [ex.id for ex in examples], clips, ["correct"]
    out = {}
    for col in cols:
        values = [100 * pd.to_numeric(t.loc[ids, col].astype(float), errors="coerce").to_numpy() for t in (own, other)]
        out["accuracy" if col == "correct" else col] = ([lambda i, v=v: float(np.nanmean(v[i])) for v in values], len(ids), groups)
    return out


def paired(s: common.Settings, run: measure.Run, checkpoint: Any, tasks: Sequence[str]) -> dict[tuple[str, str], dict[str, float]] | None:
    """{(task, metric): {own, other_audio, audio_use, ci_low, ci_high}} (module docstring); None when
    scoring is deferred."""
    from sam.eval.baselines import paired_bootstrap_ci

    tasks = list(tasks)
    # both conditions before any return: with --defer-scoring (and so in --measure-shard workers) the
    # first always gives None, and the other-audio answers must still be generated and cached
    scores = [measure.evaluate(s, run, checkpoint, tasks, other_audio=o) for o in (False, True)]
    if None in scores:
        return None
    own, other = (pd.read_csv(measure.predictions_path(s, run, checkpoint, tasks, o)).set_index("id") for o in (False, True))
    out: dict[tuple[str, str], dict[str, float]] = {}
    for task in tasks:
        stats = _classification(run, own, other) if task == "classification" else _per_item(run, task, own, other)
        for metric, ((f_own, f_other), n, groups) in stats.items():
            everything = np.arange(n)
            lo, hi = paired_bootstrap_ci(n, f_own, f_other, groups=groups)
            a, b = f_own(everything), f_other(everything)
            out[(task, metric)] = dict(own=a, other_audio=b, audio_use=a - b, ci_low=lo, ci_high=hi)
    return out


def control_rows(result: dict[tuple[str, str], dict[str, float]] | None, **labels: Any) -> list[dict[str, Any]]:
    """Tidy rows `<metric>_other_audio` (value) and `<metric>_audio_use` (own - other, with its paired CI)."""
    rows: list[dict[str, Any]] = []
    for (task, metric), r in (result or {}).items():
        rows.append(dict(**labels, task=task, metric=f"{metric}_other_audio", value=r["other_audio"]))
        rows.append(dict(**labels, task=task, metric=f"{metric}_audio_use", value=r["audio_use"], ci_low=r["ci_low"], ci_high=r["ci_high"]))
    return rows
