"""The four outputs of an experiment and their provenance.

`<name>.png` + `.pdf`, a tidy `<name>.csv`, `<name>.md` with the paper's numbers beside ours, and
`<name>.json` (git commit, preset, config hashes, seeds, data manifest hash, device, library
versions, wall time). Nothing that varies between identical runs (a timestamp) goes into a CSV or
Markdown file.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

if "ipykernel" not in sys.modules:  # scripts run headless; a notebook keeps its inline backend
    matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from sam.config import ExperimentConfig, config_hash, to_dict  # noqa: E402

from . import paper_numbers, stats  # noqa: E402
from .args import REPO, Settings  # noqa: E402
from .stats import Finding  # noqa: E402

VERSIONED = (
    "torch",
    "transformers",
    "peft",
    "tokenizers",
    "safetensors",
    "numpy",
    "scipy",
    "pandas",
    "scikit-learn",
    "matplotlib",
    "seaborn",
    "pycocoevalcap",
    "mamba-ssm",
    "causal-conv1d",
    "sam-audio",
)


# ------------------------------------------------------------------------------------------------
# Outputs


def bars(
    ax: plt.Axes,
    data: pd.DataFrame,
    task: str,
    metric: str,
    x: str,
    hue: str | None = None,
    *,
    title: str,
    ylabel: str,
    order: Sequence[str] | None = None,
    hue_order: Sequence[str] | None = None,
) -> None:
    """Bars of one (task, metric): mean over seeds with sd error bars, and the chance level as a dashed line."""
    import seaborn as sns

    sub = data[(data.task == task) & (data.metric == metric)]
    sns.barplot(sub, x=x, y="value", hue=hue, order=order, hue_order=hue_order, errorbar="sd", ax=ax)
    if "chance" in sub and sub.chance.notna().any():
        chance = float(sub.chance.mean())
        ax.axhline(chance, ls="--", color="0.2", label=f"chance ({chance:.1f})")
    ax.set(title=title, ylabel=ylabel, xlabel=x.replace("_", " ").replace("lm ", "LM "))
    handles = ax.get_legend_handles_labels()[0]
    if handles:  # headroom above the tallest bar, so the legend (upper corner) never covers a bar or its error bar
        lo, hi = ax.get_ylim()
        rows = len(handles) + (1 if hue else 0)  # legend entries and its title
        ax.set_ylim(lo, hi + (hi - lo) * (0.12 * rows + 0.1))
        ax.legend(fontsize=8, title=hue.replace("_", " ").replace("lora", "LoRA") if hue else None, title_fontsize=8)


def _style() -> None:
    import seaborn as sns

    sns.set_theme(context="paper", style="whitegrid", font_scale=1.1)


def figure(ncols: int = 1, nrows: int = 1, width: float = 5.0, height: float = 3.6) -> tuple[plt.Figure, np.ndarray]:
    """A figure in the project's style; axes always come back as a flat array."""
    _style()
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False, constrained_layout=True)
    return fig, axes.ravel()


def mosaic(layout: str, width: float, height: float, **kw: Any) -> tuple[plt.Figure, dict[str, plt.Axes]]:
    """A figure with named panels (matplotlib's subplot_mosaic, rows separated by ';'; `kw` goes to it)."""
    _style()
    fig = plt.figure(figsize=(width, height), constrained_layout=True)
    return fig, fig.subplot_mosaic(layout, **kw)


def save_figure(fig: plt.Figure, stem: Path) -> None:
    """`stem`.png and `stem`.pdf without timestamps or tool versions in them (same figure, same bytes), then close it."""
    fig.savefig(stem.with_suffix(".png"), dpi=150, metadata={"Software": None})
    fig.savefig(stem.with_suffix(".pdf"), metadata={"CreationDate": None, "Creator": None})
    plt.close(fig)


def write_outputs(
    s: Settings,
    data: pd.DataFrame,
    fig: plt.Figure,
    table: pd.DataFrame | dict[str, pd.DataFrame],
    *,
    title: str,
    notes: str = "",
    configs: dict[str, ExperimentConfig] | None = None,
    findings: Sequence[Finding] = (),
    data_roots: Sequence[str | Path] = (),
) -> dict[str, Path]:
    """Write `<name>.png/.pdf/.csv/.md/.json` under `s.out` and return their paths.

    `data` is tidy (one row per measurement) and is written sorted by all its columns, so the
    same measurements give byte-identical files whatever order they were produced in. `table` is
    the Markdown table, or several under their headings.
    """
    if data.empty:
        raise ValueError(f"{s.name}: no measurements to write")
    s.out.mkdir(parents=True, exist_ok=True)
    paths = {ext: s.out / f"{s.name}.{ext}" for ext in ("png", "pdf", "csv", "md", "json")}
    data.sort_values(list(data.columns), kind="stable").to_csv(paths["csv"], index=False, float_format="%.6g", lineterminator="\n")
    save_figure(fig, s.out / s.name)
    md = [f"# {title}", "", f"Preset `{s.preset}`, seeds {s.seeds}. Written by `experiments/{s.name}.py`."]
    for heading, t in table.items() if isinstance(table, dict) else [("", table)]:
        md += ["", f"## {heading}", ""] if heading else [""]
        md.append(t.to_markdown(index=False, floatfmt=".4g", missingval="–"))
    if findings:
        stats.judge(findings, s.preset, s.out / "audio_use.csv")
        md += [
            "",
            "Findings (verdict corrected over this table's findings only; `findings.md` applies Holm over every finding of the preset):",
            "",
            *stats.findings_table(findings),
        ]
    if s.probe_runs is not None:
        notes = (notes.strip() + " " if notes else "") + (
            f"Probe rows were read from another run cache ({s.probe_runs.name}/): the same configs and seeds trained "
            "a second time, so the probes and the scores of a run come from two trainings of its config."
        )
    if s.other_trainings:
        notes = (notes.strip() + " " if notes else "") + (
            "These measurements were made on another training of the same config and seed, not the one whose run "
            "record is read here (GPU training is not bit-deterministic, so the two trainings differ): "
            + "; ".join(sorted(s.other_trainings))
            + "."
        )
    md += ["", notes.strip(), "", f"Paper numbers: {paper_numbers.CITATION}"] if notes else ["", f"Paper numbers: {paper_numbers.CITATION}"]
    paths["md"].write_text("\n".join(md).rstrip() + "\n")
    prov = provenance(s, configs or {}, data_roots)
    prov["findings"] = [f.to_dict() for f in findings]
    paths["json"].write_text(json.dumps(prov, indent=2, sort_keys=False) + "\n")
    return paths


def provenance(s: Settings, configs: dict[str, ExperimentConfig], data_roots: Sequence[str | Path] = ()) -> dict[str, Any]:
    """Everything needed to tell how an output was made and to make it again."""
    roots = sorted({str(r) for r in data_roots} | {c.data.root for c in configs.values()})
    return {
        "experiment": s.name,
        "command": "python " + shlex.join(["experiments/" + s.argv[0], *s.argv[1:]]),
        "git": git_state(),
        "preset": s.preset,
        "seeds": s.seeds,
        "overrides": s.overrides,
        **({"probe_runs": str(s.probe_runs)} if s.probe_runs is not None else {}),
        "config_hashes": {label: config_hash(c) for label, c in configs.items()},
        "configs": {label: to_dict(c) for label, c in configs.items()},
        "data_manifests": {r: manifest_hash(r) for r in roots},
        "device": device_name(),
        "versions": library_versions(),
        # Where the answers and probe rows this output read were measured (device + library versions
        # recorded beside each in the cache): with `--cached`, not the device above.
        **({"measured_on": [json.loads(m) for m in sorted(s.measured_on)]} if s.measured_on else {}),
        **({"other_trainings": sorted(s.other_trainings)} if s.other_trainings else {}),
        "wall_time_s": round(time.perf_counter() - s.started, 2),
    }


def git_state() -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()

    try:
        # Tracked files only: untracked outputs (figures, runs) must not mark the code dirty.
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.CalledProcessError) as e:
        return {"commit": f"unknown ({type(e).__name__}: not a git checkout or git missing)", "dirty": None}


def manifest_hash(root: str | Path) -> str:
    """The corpus manifest's hash (as the library's caches name it), or a sentence saying why there is none."""
    from sam.data.corpus import manifest_hash as corpus_manifest_hash

    if not (Path(root) / "corpus" / "manifest.jsonl").is_file():
        return f"none: no corpus/manifest.jsonl under {root} (run `sam prepare-data`)"
    return "sha256:" + corpus_manifest_hash(root)


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} x{torch.cuda.device_count()} (CUDA {torch.version.cuda})"
    return (
        f"CPU {platform.machine()} {platform.processor() or ''}".rstrip() + f", {torch.get_num_threads()} threads, {os.cpu_count()} cores"
    )


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out
