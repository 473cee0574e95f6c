"""The audio-use gate: do the preset's trained runs listen? Writes ``audio_use.csv`` (and its figure).

For every LM size and seed of the preset (`measure.grid`), at the run's final stage, on the test
scenes: classification mAP, captions' CIDEr-D and multiple-choice accuracy (MMAU's string-match
rule), each with the run's own audio and with another test scene's (the other-audio control,
`sam.evaluate_baselines.other_audio`), their difference with a paired 95% bootstrap CI over test
clips, the expected mAP of random scores on the same scenes, and the probe ceiling (the mAP of one
logistic regression per class on the run's mean-pooled encoder output after the final stage, fit on
up to `PROBE_TRAIN_CLIPS` training scenes: `check_encoder_probe.probe`). The rules G1-G3 are in
experiments/gate.py. Answers are generated and cached by `measure.evaluate` (so ``--defer-scoring``
and ``--cached`` work as for the tables); the probe needs the weights and is cached under
``<runs>/evals/<key>.probe.json``, so with ``--cached`` a probe not measured where the run was
trained reads empty.
"""
from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pandas as pd

import common
import gate
import measure

TASKS = ("classification", "caption")
PROBE_TRAIN_CLIPS = 2048  # the gate asks for >= 1,000: the cpu preset has 1,000 training scenes, the gpu 4,000
PROBE_VERSION = 1


def plot(data: pd.DataFrame):
    """Own vs other-audio score per gated metric and LM size (mean over seeds), random baseline dashed."""
    metrics = [m for m in ("mAP", "CIDEr-D", "reasoning accuracy") if m in set(data.metric)]
    fig, axes = common.figure(ncols=max(1, len(metrics)), width=4.4)
    for ax, metric in zip(axes, metrics):
        sub = data[(data.metric == metric) & data.gate.str.startswith(("G2", "G3"))]
        if sub.empty:
            sub = data[data.metric == metric]
        long = sub.melt(id_vars=["lm_size", "seed"], value_vars=["own", "other_audio"], var_name="audio").dropna(subset=["value"])
        long = long.assign(task="gate", metric=metric, chance=float(sub.random_baseline.mean()))
        common.bars(ax, long, "gate", metric, "lm_size", "audio", order=common.sizes_in(data), hue_order=["own", "other_audio"],
                    title=f"{metric}: own vs other audio", ylabel=metric)
    return fig


def probe_ceiling(s: common.Settings, run: measure.Run, stage: str) -> float | None:
    """Linear-probe test mAP (percent) of the run's encoder after `stage`, cached; None where it cannot be
    measured here (``--cached`` without a record, or another measurement worker's share)."""
    from sam.config import config_hash

    key = config_hash({"run": run.dir.name, "stage": stage, "train_clips": PROBE_TRAIN_CLIPS, "n_test": run.cfg.data.n_test,
                       "version": PROBE_VERSION})
    path = s.runs / "evals" / f"{key}.probe.json"
    if not path.is_file():
        if s.cached or not measure._in_shard(s, key):
            return None
        from check_encoder_probe import probe

        out = probe(run.dir, stage, train_clips=PROBE_TRAIN_CLIPS)
        measure._write_json(path, {**out, "made_on": measure._origin()})
    return float(json.loads(path.read_text())["linear_probe_mAP"])


def _tables(s: common.Settings, run: measure.Run, checkpoint: Any, tasks: tuple[str, ...]) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """Per-example tables (own, other audio) of `tasks`, indexed by example id; None when deferred."""
    own = measure.evaluate(s, run, checkpoint, list(tasks))
    other = measure.evaluate(s, run, checkpoint, list(tasks), other_audio=True)
    if own is None or other is None:
        return None
    return tuple(pd.read_csv(measure.predictions_path(s, run, checkpoint, tasks, o)).set_index("id") for o in (False, True))


def _classification_scores(run: measure.Run, texts: list[str], names: list[str]) -> np.ndarray:
    from sam.evaluate import TextClassifier, make_text_encoder

    clf = TextClassifier(names, make_text_encoder(run.cfg.eval.text_encoder, run.cfg.eval.text_encoder_path))
    return clf.scores([t if isinstance(t, str) else "" for t in texts])


def gate_rows(s: common.Settings, run: measure.Run) -> list[dict[str, Any]]:
    """The rows of audio_use.csv for one run (experiments/gate.py); [] with ``--defer-scoring``."""
    from sam.baselines import fast_map, paired_bootstrap_ci, random_map
    from sam.data.types import label_matrix
    from sam.evaluate_baselines import clip_ids

    stage_name, checkpoint = measure.checkpoints(run)[-1][1:]
    probe = probe_ceiling(s, run, stage_name)
    main, reasoning = _tables(s, run, checkpoint, TASKS), _tables(s, run, checkpoint, ("reasoning",))
    if main is None or reasoning is None:
        return []
    labels, rows = dict(lm_size=run.labels["lm_size"], seed=run.labels["seed"]), []

    cls = measure.test_examples(run.cfg, ["classification"])
    names = sorted({l for ex in cls for l in ex.labels})
    y = label_matrix(cls, names)
    ids = [ex.id for ex in cls]
    own_s, other_s = (_classification_scores(run, t.loc[ids, "prediction"].tolist(), names) for t in main)
    own, other, random = 100 * fast_map(y, own_s), 100 * fast_map(y, other_s), 100 * random_map(y)
    ci = paired_bootstrap_ci(len(y), lambda i: 100 * fast_map(y[i], own_s[i]), lambda i: 100 * fast_map(y[i], other_s[i]))
    common_args = dict(other_audio=other, random_baseline=random, probe_ceiling=probe, ci=ci)
    rows.append(gate.row(*labels.values(), "mAP", own, gate.g1(s.preset, own, random, probe), **common_args))
    rows.append(gate.row(*labels.values(), "mAP", own, gate.g2("mAP", own - other, ci[0]), **common_args))

    caps = measure.test_examples(run.cfg, ["caption"])
    first = {c: ex.id for c, ex in zip(clip_ids(caps), caps)}  # one scored caption per clip
    cap_ids = list(first.values())
    c_own, c_other = (100 * pd.to_numeric(t.loc[cap_ids, "CIDEr-D"]).to_numpy() for t in main)
    ci = paired_bootstrap_ci(len(cap_ids), lambda i: c_own[i].mean(), lambda i: c_other[i].mean())
    rows.append(gate.row(*labels.values(), "CIDEr-D", c_own.mean(), gate.g2("CIDEr-D", c_own.mean() - c_other.mean(), ci[0]),
                         other_audio=c_other.mean(), ci=ci))

    qs = measure.test_examples(run.cfg, ["reasoning"])
    q_ids, groups = [ex.id for ex in qs], clip_ids(qs)
    r_own, r_other = (100 * t.loc[q_ids, "correct"].astype(float).to_numpy() for t in reasoning)
    ci = paired_bootstrap_ci(len(q_ids), lambda i: r_own[i].mean(), lambda i: r_other[i].mean(), groups=groups)
    rows.append(gate.row(*labels.values(), "reasoning accuracy", r_own.mean(), gate.g3(s.preset, r_own.mean(), r_own.mean() - r_other.mean()),
                         other_audio=r_other.mean(), ci=ci, note=f"after {stage_name}"))
    return rows


def main(argv: list[str] | None = None) -> dict:
    s = common.parse_args("audio_use", __doc__, argv=argv)
    runs = measure.grid(s)
    rows = [r for run in runs for r in gate_rows(s, run)]
    if s.defer_scoring:
        return measure.deferred(s, len(runs))
    data = pd.DataFrame(rows, columns=gate.COLUMNS)
    table = data.assign(passes=data.passes.map({True: "yes", False: "no"}).fillna("not measured"))
    notes = ("Every run at its final stage on the preset's test scenes. own / other_audio: the same prompts with the "
             "run's own audio and with another test scene's; ci_low / ci_high: paired 95% bootstrap CI over test clips of "
             "own - other audio; random_baseline: the expected mAP of random scores on these scenes; probe_ceiling: a "
             "linear probe on the run's own encoder output. Rules: experiments/gate.py. passes empty: not measured.")
    return common.write_outputs(s, data, plot(data), table.round(2), title="The audio-use gate", notes=notes,
                                configs=measure.configs(runs))


if __name__ == "__main__":
    main()
