"""The audio-use gate: do the preset's trained runs listen? Writes ``audio_use.csv`` (and its figure).

For every LM size and seed of the preset (`measure.grid`), at the run's final stage, on the test
scenes: classification mAP, captions' CIDEr-D and multiple-choice accuracy (MMAU's string-match
rule), each with the run's own audio and with another test scene's (the other-audio control,
`controls.paired`), their difference with a paired 95% bootstrap CI over test clips, the expected mAP of random scores on the same scenes, and the probe ceiling (the mAP of one
logistic regression per class on the run's mean-pooled encoder output after the final stage, fit on
up to `PROBE_TRAIN_CLIPS` training scenes: `check_encoder_probe.probe`). The rules G1-G3 are in
experiments/gate.py. Answers are generated and cached by `measure.evaluate` (so ``--defer-scoring``
and ``--cached`` work as for the tables); the probe needs the weights and is cached under
``<runs>/evals/<key>.probe.json``, so with ``--cached`` a probe not measured where the run was
trained reads empty.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from lib import cache, common, controls, gate, measure

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
        common.bars(
            ax,
            long,
            "gate",
            metric,
            "lm_size",
            "audio",
            order=common.sizes_in(data),
            hue_order=["own", "other_audio"],
            title=f"{metric}: own vs other audio",
            ylabel=metric,
        )
    return fig


def probe_ceiling(s: common.Settings, run: measure.Run, stage: str) -> float | None:
    """Linear-probe test mAP (percent) of the run's encoder after `stage`, cached; None where it cannot be
    measured here (``--cached`` without a record, or another measurement worker's share)."""
    from sam.config import config_hash

    key = config_hash(
        {"run": run.dir.name, "stage": stage, "train_clips": PROBE_TRAIN_CLIPS, "n_test": run.cfg.data.n_test, "version": PROBE_VERSION}
    )
    ceiling = cache.slot(s, s.runs / "evals" / f"{key}.probe.json")
    if ceiling is None:
        return None

    def linear_probe() -> dict[str, Any]:
        from check_encoder_probe import probe

        return probe(run.dir, stage, train_clips=PROBE_TRAIN_CLIPS)

    return float(ceiling.record(linear_probe)["linear_probe_mAP"])


def gate_rows(s: common.Settings, run: measure.Run) -> list[dict[str, Any]]:
    """The rows of audio_use.csv for one run (experiments/gate.py); [] with ``--defer-scoring``."""
    from sam.data.types import label_matrix
    from sam.eval.baselines import random_map

    stage_name, checkpoint = measure.checkpoints(run)[-1][1:]
    probe = probe_ceiling(s, run, stage_name)
    main, reasoning = controls.paired(s, run, checkpoint, TASKS), controls.paired(s, run, checkpoint, ["reasoning"])
    if main is None or reasoning is None:
        return []
    cls = measure.test_examples(run.cfg, ["classification"])
    random = 100 * random_map(label_matrix(cls, sorted({l for ex in cls for l in ex.labels})))
    size, seed = run.labels["lm_size"], run.labels["seed"]

    def row(metric: str, r: dict[str, float], result: tuple, **extra: Any) -> dict[str, Any]:
        return gate.row(size, seed, metric, r["own"], result, other_audio=r["other_audio"], ci=(r["ci_low"], r["ci_high"]), **extra)

    m, c, q = main[("classification", "mAP")], main[("caption", "CIDEr-D")], reasoning[("reasoning", "accuracy")]
    return [
        row("mAP", m, gate.g1(s.preset, m["own"], random, probe), random_baseline=random, probe_ceiling=probe),
        row("mAP", m, gate.g2("mAP", m["audio_use"], m["ci_low"]), random_baseline=random, probe_ceiling=probe),
        row("CIDEr-D", c, gate.g2("CIDEr-D", c["audio_use"], c["ci_low"])),
        row("reasoning accuracy", q, gate.g3(s.preset, q["own"], q["audio_use"]), note=f"after {stage_name}"),
    ]


def main(argv: list[str] | None = None) -> dict:
    s = common.parse_args("audio_use", __doc__, argv=argv)
    runs = measure.grid(s)
    rows = [r for run in runs for r in gate_rows(s, run)]
    if s.defer_scoring:
        return measure.deferred(s, len(runs))
    data = pd.DataFrame(rows, columns=gate.COLUMNS)
    table = data.assign(passes=data.passes.map({True: "yes", False: "no"}).fillna("not measured"))
    notes = (
        "Every run at its final stage on the preset's test scenes. own / other_audio: the same prompts with the "
        "run's own audio and with another test scene's; ci_low / ci_high: paired 95% bootstrap CI over test clips of "
        "own - other audio; random_baseline: the expected mAP of random scores on these scenes; probe_ceiling: a "
        "linear probe on the run's own encoder output. Rules: experiments/gate.py. passes empty: not measured."
    )
    return common.write_outputs(s, data, plot(data), table.round(2), title="The audio-use gate", notes=notes, configs=measure.configs(runs))


if __name__ == "__main__":
    main()
