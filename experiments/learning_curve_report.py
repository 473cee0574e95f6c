"""Scores `check_learning_curve.py`'s measurement records and writes `learning_curve.{csv,md,png,json}`.

Kept apart from the measuring script because scoring needs the text scorers (MiniLM, the
coco-caption tokenizer's Java), which the machine that trains may lack. Classification answers are
scored as everywhere else in the project (`sam.eval.TextClassifier` scores -> mAP), next to the
exact expected mAP of random scores on the same clips (`sam.eval.baselines.random_map`); "audio use" is
own minus other-audio with a paired bootstrap 95% CI over the test clips.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lib.variants import variant_config


def _examples(record: dict[str, Any], task: str) -> list[Any]:
    """The record's test examples of `task`, rebuilt from the (deterministic) scene composer by id."""
    from sam.data import build_examples

    exp = variant_config(record["preset"], record["variant"], record["seed"], record.get("set", []))
    by_id = {ex.id: ex for ex in build_examples(exp.data, "test", [task])}
    missing = [i for i in record["test"][task] if i not in by_id]
    if missing:
        raise ValueError(f"record {record['variant']}: test example {missing[0]!r} is not in this corpus' test split")
    return [by_id[i] for i in record["test"][task]]


def score_record(record: dict[str, Any], encoder: Any) -> list[dict[str, Any]]:
    """Tidy rows (metric, value, ci_low, ci_high) of one record."""
    from sam.data.types import label_matrix
    from sam.eval import TextClassifier
    from sam.eval.baselines import fast_map, map_ci, paired_bootstrap_ci, random_map
    from sam.eval.metrics import caption_metrics

    base = {k: record[k] for k in ("variant", "what", "seed", "audio_steps")}
    rows: list[dict[str, Any]] = []

    def add(metric: str, value: float, ci: tuple[float, float] = (np.nan, np.nan)) -> None:
        rows.append({**base, "metric": metric, "value": float(value), "ci_low": ci[0], "ci_high": ci[1]})

    answers = record.get("answers", {})
    if "classification/own" in answers:
        exs = _examples(record, "classification")
        classes = sorted({c for ex in exs for c in ex.labels} | set(record.get("classes", [])))
        y = label_matrix(exs, classes)
        clf = TextClassifier(classes, encoder)
        own, other = (clf.scores([a or "" for a in answers[f"classification/{c}"]]) for c in ("own", "other_audio"))
        add("mAP own", 100 * fast_map(y, own), tuple(100 * v for v in map_ci(y, own)))
        add("mAP other audio", 100 * fast_map(y, other), tuple(100 * v for v in map_ci(y, other)))
        use = paired_bootstrap_ci(len(y), lambda i: fast_map(y[i], own[i]), lambda i: fast_map(y[i], other[i]))
        add("mAP audio use", 100 * (fast_map(y, own) - fast_map(y, other)), (100 * use[0], 100 * use[1]))
        add("mAP random scores", 100 * random_map(y))
        add("distinct answers", len(set(answers["classification/own"])))
    if "caption/own" in answers:
        exs = _examples(record, "caption")
        refs = [ex.metadata.get("references") or [ex.answer] for ex in exs]
        per = {}
        for cond in ("own", "other_audio"):
            corpus, table = caption_metrics([a or "" for a in answers[f"caption/{cond}"]], refs)
            per[cond] = table["CIDEr-D"].to_numpy(dtype=float) * 100
            add(f"CIDEr-D {cond.replace('_', ' ')}", 100 * corpus["CIDEr-D"])
        use = paired_bootstrap_ci(len(per["own"]), lambda i: per["own"][i].mean(), lambda i: per["other_audio"][i].mean())
        add("CIDEr-D audio use", per["own"].mean() - per["other_audio"].mean(), use)
    _gate_rows(record, rows, add)
    for key in ("loss_own", "loss_other_audio", "audio_token_norm", "text_embedding_norm", "energy_varying_across_clips", "raw_tau_rank"):
        if key in record:
            add(key.replace("_", " "), record[key])
    for site, value in record.get("probe_map", {}).items():
        add(f"probe mAP {site}", value)
    return rows


def _gate_rows(record: dict[str, Any], rows: list[dict[str, Any]], add: Any) -> None:
    """G1 and G2 of the audio-use gate (experiments/gate.py) for this variant; 1 = passes, 0 = fails.
    G3 needs the reasoning stage's answers, which the learning curve does not generate."""
    import gate

    got = {r["metric"]: r for r in rows}
    if "mAP own" in got:
        ceiling = record.get("probe_map", {}).get("encoder_mean")
        passes, _, _ = gate.g1(record["preset"], got["mAP own"]["value"], got["mAP random scores"]["value"], ceiling)
        add("gate G1", np.nan if passes is None else float(passes))
        use = got["mAP audio use"]
        add("gate G2 mAP", float(gate.g2("mAP", use["value"], use["ci_low"])[0]))
    if "CIDEr-D audio use" in got:
        use = got["CIDEr-D audio use"]
        add("gate G2 CIDEr-D", float(gate.g2("CIDEr-D", use["value"], use["ci_low"])[0]))


def plot(data: pd.DataFrame):
    """mAP own vs other audio against random scores and the probe ceiling; probe mAP along the LM."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = list(dict.fromkeys(data.variant))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.2))
    color = {v: plt.cm.tab10(i % 10) for i, v in enumerate(variants)}
    pick = lambda m: data[data.metric == m].groupby("variant").value.mean().reindex(variants)  # noqa: E731
    x = np.arange(len(variants))
    for off, metric, label in ((-0.2, "mAP own", "own audio"), (0.2, "mAP other audio", "another scene's audio")):
        ax1.bar(x + off, pick(metric), width=0.4, label=label)
    ax1.plot(x, pick("mAP random scores"), "k_", ms=30, mew=2, label="random scores")
    ax1.plot(x, pick("probe mAP encoder_mean"), "r^", label="linear probe on the encoder")
    if (data.metric == "probe mAP fbank_stats").any():
        ax1.plot(x, pick("probe mAP fbank_stats"), "gv", label="linear probe on log-mel statistics")
    ax1.set(xticks=x, xticklabels=variants, ylabel="classification mAP (%)", title="Does the LM use the audio?")
    ax1.tick_params(axis="x", rotation=30)
    top = np.nanmax([pick(m).max() for m in ("mAP own", "mAP other audio", "mAP random scores", "probe mAP encoder_mean")])
    ax1.set_ylim(0, top * 1.7)  # headroom: the legend sits above the bars and markers
    ax1.legend(fontsize=7, loc="upper right", ncol=2)
    for variant in variants:
        sub = data[(data.variant == variant) & data.metric.str.startswith("probe mAP lm.")]
        for where, style in (("audio_last", "-"), ("prompt_last", "--")):
            part = sub[sub.metric.str.endswith(where)]
            ax2.plot(
                range(len(part)), part.value, style, marker="o", ms=4, color=color[variant], label=f"{variant}, {where.replace('_', ' ')}"
            )
    sites = [m.split(" ")[-1].split("@")[0] for m in data.metric if m.startswith("probe mAP lm.") and m.endswith("@audio_last")]
    sites = list(dict.fromkeys(sites))
    ax2.set_xticks(range(len(sites)), [s.replace("lm.", "").replace("layers.", "layer ") for s in sites])
    ax2.plot(range(len(sites)), [pick("mAP random scores").mean()] * len(sites), "k:", label="random scores")
    ax2.set(xlabel="LM site at the last audio / last prompt token", ylabel="linear-probe mAP (%)", title="Class information along the LM")
    ax2.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    return fig


def _earlier_rows(csv: Path, scored: set[str]) -> pd.DataFrame:
    """Rows of an earlier `learning_curve.csv` for the variants not scored now (empty if none)."""
    if not csv.is_file():
        return pd.DataFrame()
    old = pd.read_csv(csv)
    return old[~old.variant.isin(scored)]


def write_report(args: argparse.Namespace) -> pd.DataFrame:
    """Score every record under `args.records` for `args.preset` and write the outputs to `args.out`."""
    from sam.eval import make_text_encoder

    paths = sorted(args.records.glob(f"{args.preset}-*.json"))
    if not paths:
        raise SystemExit(f"no measurement records {args.records}/{args.preset}-*.json: measure first")
    encoder = make_text_encoder("minilm")
    records = [json.loads(p.read_text()) for p in paths]
    data = pd.DataFrame([row for r in records for row in score_record(r, encoder)])
    out = args.out or (Path("figures") if args.preset == "cpu" else Path("figures") / args.preset)
    out.mkdir(parents=True, exist_ok=True)
    kept = _earlier_rows(out / "learning_curve.csv", set(data.variant))
    kept_names = list(dict.fromkeys(kept.variant)) if len(kept) else []
    if kept_names:  # variants scored before whose records are not here (records stay on the machine that measured)
        data = pd.concat([kept, data], ignore_index=True)
    data.to_csv(out / "learning_curve.csv", index=False)
    table = data.pivot_table(index="metric", columns="variant", values="value", sort=False).round(2)
    incomplete = [r["variant"] for r in records if not r.get("complete")]
    lossy = sorted({r["corpus_transcode"]["codec"] for r in records if r.get("corpus_transcode")})
    (out / "learning_curve.md").write_text(
        f"# Why the LM ignores its audio: recipe variants ({args.preset} preset, small LM, seed {args.seed})\n\n"
        + table.to_markdown()
        + "\n\n"
        + "mAP from generated text, as Table 1; 'random scores' is the exact expected mAP of a random ranking of the same clips; "
        "'audio use' = own minus another scene's audio (95% CIs over clips in the CSV). Probe mAP: one logistic "
        "regression per class on the named features of the training scenes, scored on the test clips (`encoder_mean`: the "
        "mean-pooled encoder output, the gate's probe ceiling). Gate rows: 1 passes, 0 fails (experiments/gate.py; G3 "
        "needs reasoning answers, not generated here). Made by `python experiments/check_learning_curve.py --preset "
        f"{args.preset} --variants {','.join(dict.fromkeys(data.variant))}` then `--score`. "
        + (f"Incomplete records (a phase was not reached): {', '.join(incomplete)}. " if incomplete else "")
        + (f"Measured on a corpus restored from a lossy {'/'.join(lossy)} archive (`sam export-corpus --codec`). " if lossy else "")
        + (f"Kept from the earlier scoring in this folder (no record here): {', '.join(kept_names)}.\n" if kept_names else "\n")
    )
    fig = plot(data)
    fig.savefig(out / "learning_curve.png", dpi=150)
    (out / "learning_curve.json").write_text(
        json.dumps(
            {
                "experiment": "check_learning_curve",
                "preset": args.preset,
                "records": [p.name for p in paths],
                "measured_on": sorted({r.get("device", "?") for r in records}),
                "scored_at": time.strftime("%Y-%m-%d %H:%M:%S"),
                "runs": {r["variant"]: r["run"] for r in records},
                "kept_from_earlier": kept_names,
            },
            indent=1,
        )
    )
    print(f"[curve] wrote {out / 'learning_curve.csv'} ({len(data)} rows)")
    return data
