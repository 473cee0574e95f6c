"""Corpus statistics for `sam data-summary`: clips and hours per source, clips per class, durations.

Reads the manifest and class map only; never decodes audio and never writes anything.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd

from sam.data.archive import transcoded
from sam.data.corpus import read_class_map, read_manifest


def corpus_tables(root: str | Path = "data") -> dict[str, pd.DataFrame]:
    """Tables: per source (clips, hours, median/max seconds, licences) and per class (source clips, hours,
    median seconds, licences, sources, and source clips per scene split: train / valid / test)."""
    from sam.data.scenes import SPLITS, assign_splits

    rows = read_manifest(root)
    df = pd.DataFrame(rows)
    per_source = df.groupby("source").agg(
        clips=("id", "size"),
        hours=("duration", lambda d: round(d.sum() / 3600, 3)),
        median_s=("duration", "median"),
        max_s=("duration", "max"),
        licences=("licence", lambda x: ", ".join(sorted(set(x)))),
    )
    classes = read_class_map(root)
    exploded = df.explode("labels").dropna(subset=["labels"])
    exploded = exploded[exploded["labels"].isin(classes["classes"])]
    split_of = assign_splits(rows, sorted(classes["classes"]))
    exploded["split"] = exploded["id"].map(split_of)
    per_class = (
        exploded.groupby("labels")
        .agg(
            clips=("id", "size"),
            hours=("duration", lambda d: round(d.sum() / 3600, 3)),
            median_s=("duration", "median"),
            **{split: ("split", lambda x, s=split: int((x == s).sum())) for split in SPLITS},
            licences=("licence", lambda x: ", ".join(sorted(set(x)))),
            sources=("source", lambda x: ", ".join(sorted(set(x)))),
        )
        .sort_values("clips", ascending=False)
    )
    per_class.index.name = "class"
    return {"sources": per_source, "classes": per_class}


def corpus_summary(root: str | Path = "data") -> dict[str, Any]:
    """Headline numbers: clips, hours, classes kept (>= min clips) and dropped, skipped entries."""
    import json

    rows = read_manifest(root)
    cmap = read_class_map(root)
    report = json.loads((Path(root) / "corpus" / "report.json").read_text())
    counts = Counter(lab for r in rows for lab in r["labels"] if lab in cmap["classes"])
    top, top_n = counts.most_common(1)[0] if counts else ("none", 0)
    return {
        "largest_class": top,
        "largest_class_share": round(top_n / max(1, len(rows)), 4),
        "clips": len(rows),
        "hours": round(sum(r["duration"] for r in rows) / 3600, 3),
        "classes": len(cmap["classes"]),
        "min_clips_per_class": cmap["min_clips"],
        "dropped_classes": cmap["dropped"],
        "ambience_clips": cmap["ambience_clips"],
        "skipped": len(report["skipped"]),
    }


def format_summary(root: str | Path = "data") -> str:
    """Human-readable summary (what `sam data-summary` prints)."""
    s = corpus_summary(root)
    t = corpus_tables(root)
    lines = [
        f"corpus {Path(root) / 'corpus'}: {s['clips']} clips, {s['hours']} h, {s['classes']} classes with >= "
        f"{s['min_clips_per_class']} clips, {s['ambience_clips']} background clips, {s['skipped']} entries skipped",
        f"largest class: {s['largest_class']} in {s['largest_class_share']:.1%} of clips",
        f"classes dropped (too few clips): {s['dropped_classes'] or 'none'}",
        "",
        t["sources"].to_string(),
        "",
        "classes (clips = source clips; train / valid / test: source clips per scene split):",
        t["classes"].to_string(),
    ]
    note = transcoded(root)
    if note:
        lines.insert(1, f"LOSSY COPY: clips restored from a {note['codec']} archive (level {note['compression_level']}); {note['note']}")
    return "\n".join(lines)
