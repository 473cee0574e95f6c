"""Recompute the baselines of committed result CSVs on the test scenes they were measured on.

The scene composer is deterministic from the corpus and the data config (scene i of a split
depends only on the seed, the split and i), and composing a scene's labels and questions renders
no audio. So each output's provenance (``<name>.json``: the run configs and the corpus manifest)
is enough to rebuild its test split and compute `sam.eval.baselines` on it. For every CSV with a
`chance` column this rewrites, on the rows that have a baseline (classification mAP / accuracy /
micro-F1, multiple-choice accuracies), the columns chance (the line figures draw), uniform and
prior (experiments/rows.py says what each is); the `... chance` columns of the Markdown tables;
the figure (each script's `plot` rebuilds it from the CSV); and a `baselines` entry in the JSON
provenance. Scores are never touched.

It also writes ``audio_use.csv`` beside each folder's Table 1 from its committed mAP (the final
stage of Table 1, stage 4) and the recomputed random baseline: the other-audio control and the probe
ceiling were not measured for those runs, so they are empty, and `passes` is False only where G1's
margin (mAP >= random + 5 / 10 pp) already fails, with the reason in `note`.

    python experiments/rebaseline.py [FOLDER ...]    (default: figures figures/gpu figures/cpu_medium_large)
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lib import common, gate

FOLDERS = ("figures", "figures/gpu", "figures/cpu_medium_large")
MARKER = "Baselines recomputed on the same test scenes by experiments/rebaseline.py"


def test_baselines(prov: dict[str, Any], where: Path) -> dict[str, Any]:
    """{"classification": {...}, "reasoning": {...}, "categories": {cat: {...}}, "test_scenes": n} (fractions)
    on the test split the provenance's configs describe; an error names the file if that split cannot be rebuilt."""
    from sam.config import ExperimentConfig, from_dict
    from sam.data import build_examples
    from sam.eval.baselines import answer_prior, example_baselines

    configs = prov.get("configs") or {}
    if not configs:
        raise ValueError(f"{where}: no run configs in its provenance, so its test split cannot be rebuilt")
    datas = {json.dumps(c.get("data"), sort_keys=True) for c in configs.values()}
    if len(datas) != 1:
        raise ValueError(f"{where}: its runs were measured on {len(datas)} different data configs; rebaselining needs one")
    cfg = from_dict(ExperimentConfig, next(iter(configs.values())))
    manifest = (prov.get("data_manifests") or {}).get("data")
    if manifest and manifest != common.manifest_hash(cfg.data.root):
        raise ValueError(f"{where}: measured on corpus {manifest}, but {cfg.data.root}/ holds {common.manifest_hash(cfg.data.root)}")
    cls = build_examples(cfg.data, "test", ["classification"])
    qs = build_examples(cfg.data, "test", ["reasoning"])
    out = {**example_baselines(cls + qs, None, cfg.eval.f1_top_k), "test_scenes": len(cls), "categories": {}}
    for cat in sorted({str(ex.metadata.get("category")) for ex in qs}):
        sub = [ex for ex in qs if str(ex.metadata.get("category")) == cat]
        out["categories"][cat] = answer_prior(
            [ex.answer for ex in sub], [ex.metadata.get("question_type") for ex in sub], [ex.choices for ex in sub]
        )
    return out


def _baseline_for(row: pd.Series, base: dict[str, Any]) -> dict[str, float] | None:
    if row.task == "classification" and row.metric in base.get("classification", {}):
        return base["classification"][row.metric]
    if row.task == "reasoning" and (row.metric.startswith("likelihood_accuracy") or row.metric in ("accuracy", "accuracy_among_valid")):
        category = row.get("category", "all")
        if isinstance(category, str) and category != "all":
            return base["categories"].get(category)
        return base["reasoning"]["accuracy"]
    return None


def rebaseline_csv(data: pd.DataFrame, base: dict[str, Any]) -> pd.DataFrame:
    """`data` with chance / uniform / prior (percent) recomputed where a row has a baseline."""
    data = data.copy()
    for col in ("uniform", "prior"):
        if col not in data.columns:
            data.insert(
                list(data.columns).index("chance") + 1 if col == "uniform" else list(data.columns).index("uniform") + 1, col, np.nan
            )
    for i, row in data.iterrows():
        b = _baseline_for(row, base)
        if b is not None:
            for col in ("chance", "uniform", "prior"):
                data.at[i, col] = 100 * b[col]
    return data


def rewrite_markdown(text: str, data: pd.DataFrame) -> str:
    """The Markdown with each table column headed '<task> <metric> chance' set to the CSV's new value
    (its mean over the rows of that task and metric, category 'all' where the CSV has categories),
    and a note naming the recomputation."""
    lines, header = text.split("\n"), None
    overall = data[data.category == "all"] if "category" in data.columns else data
    for k, line in enumerate(lines):
        if not line.startswith("|"):
            header = None
            continue
        cells = line.split("|")[1:-1]
        if header is None:
            header = [c.strip() for c in cells]
            continue
        if set(line) <= set("|:- "):
            continue
        for j, name in enumerate(header):
            if name.endswith(" chance") and " " in name[: -len(" chance")]:
                task, metric = name[: -len(" chance")].split(" ", 1)
                sub = overall[(overall.task == task) & (overall.metric == metric)].chance
                if sub.notna().any():
                    cells[j] = f" {sub.mean():.1f} ".rjust(len(cells[j]))
        lines[k] = "|" + "|".join(cells) + "|"
    text = "\n".join(lines)
    text = re.sub(rf"\n\n{re.escape(MARKER)}[^\n]*\n?", "\n", text).rstrip() + "\n"
    return text + (
        f"\n{MARKER}: chance = the larger of uniform (random scores / a random class / 1 / choices) and the "
        "prior (a constant score, the majority class(es), the best single-answer prior); for mAP the exact "
        "expected mAP of random scores. The scores are as measured.\n"
    )


def audio_use_rows(main: pd.DataFrame, preset: str) -> pd.DataFrame:
    """audio_use.csv rows from a committed Table 1 (stage 4 mAP): G1's margin only (module docstring)."""
    maps = main[(main.task == "classification") & (main.metric == "mAP")]
    rows = []
    for _, r in maps.sort_values(["lm_size", "seed"]).iterrows():
        passes, rule, why = gate.g1(preset, float(r.value), float(r.chance), None)
        rows.append(
            gate.row(
                r.lm_size,
                int(r.seed),
                "mAP",
                float(r.value),
                (passes, rule, why),
                random_baseline=float(r.chance),
                note="Table 1's mAP after stage 4; the other-audio control was not measured for these runs",
            )
        )
    return pd.DataFrame(rows, columns=gate.COLUMNS)


def rebaseline_folder(folder: Path) -> dict[str, Any]:
    """Rewrite every output of `folder` that has a chance column; returns what was done per output."""
    sys.path.insert(0, str(common.REPO / "experiments"))
    done: dict[str, Any] = {}
    for csv in sorted(folder.glob("*.csv")):
        prov_path = csv.with_suffix(".json")
        data = pd.read_csv(csv)
        if "chance" not in data.columns or csv.stem == "audio_use" or not prov_path.is_file():
            continue
        prov = json.loads(prov_path.read_text())
        base = test_baselines(prov, prov_path)
        data = rebaseline_csv(data, base)
        data.to_csv(csv, index=False, float_format="%.6g", lineterminator="\n")
        md = csv.with_suffix(".md")
        if md.is_file():
            md.write_text(rewrite_markdown(md.read_text(), data))
        module = importlib.import_module(csv.stem)
        common.save_figure(module.plot(data), csv.with_suffix(""))
        summary = {
            f"{t} {m}": {k: round(100 * v[k], 3) if isinstance(v[k], float) else v[k] for k in ("chance", "uniform", "prior", "prior_rule")}
            for t in ("classification", "reasoning")
            for m, v in base.get(t, {}).items()
        }
        prov["baselines"] = {"recomputed_by": "experiments/rebaseline.py", "test_scenes": base["test_scenes"], "percent": summary}
        prov_path.write_text(json.dumps(prov, indent=2) + "\n")
        done[csv.name] = summary
        if csv.stem == "table_main":
            audio_use_rows(data, prov["preset"]).to_csv(folder / "audio_use.csv", index=False, float_format="%.6g", lineterminator="\n")
    return done


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("folders", nargs="*", type=Path, default=[common.REPO / f for f in FOLDERS])
    args = p.parse_args(argv)
    out = {str(f): rebaseline_folder(f) for f in args.folders}
    for folder, done in out.items():
        for name, summary in done.items():
            shown = {k: v["chance"] for k, v in summary.items()}
            print(f"{folder}/{name}: chance {shown}")
    return out


if __name__ == "__main__":
    main()
