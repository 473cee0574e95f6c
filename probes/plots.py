"""Plotting helpers for the probe tables (the paper's Fig. 2 and Fig. 3), on matplotlib + seaborn.

Each function takes a tidy DataFrame, aggregates with pandas first (state tables have millions of
rows; seaborn's bootstrap would be slow), draws onto `ax` (or a new figure) and returns the Axes.
Saving and styling of whole figures belong to the experiment scripts. This module must never
compute a measure or run a model.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes


def _axes(ax: Axes | None, size: tuple[float, float] = (5.0, 3.5)) -> Axes:
    if ax is not None:
        return ax
    _, ax = plt.subplots(figsize=size)
    return ax


def _need(df: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise KeyError(f"{what} needs columns {missing}; the table has {list(df.columns)}")


def plot_rank_by_stage(
    df: pd.DataFrame,
    x: str = "stage",
    hue: str | None = "model",
    measure: str = "tau_rank_normalized",
    tau: float | None = 0.99,
    site: str | None = None,
    ax: Axes | None = None,
) -> Axes:
    """Mean `measure` (over clips) against `x` (e.g. training stage), one line per `hue` (e.g. model size).

    `df` is `probes.token_measures` output plus the experiment's `x`/`hue` columns; `site` keeps one
    site, `tau` one threshold (ignored for measures without tau).
    """
    _need(df, ["measure", "value", x] + ([hue] if hue else []), "plot_rank_by_stage")
    rows = df[df["measure"] == measure]
    if tau is not None and "tau" in rows and rows["tau"].notna().any():
        rows = rows[rows["tau"] == tau]
    if site is not None:
        rows = rows[rows["site"] == site]
    if rows.empty:
        raise ValueError(f"no rows with measure={measure!r}, tau={tau}, site={site!r} to plot")
    keys = [x] + ([hue] if hue else [])
    mean = rows.groupby(keys, sort=False)["value"].mean().reset_index()
    ax = _axes(ax)
    sns.lineplot(data=mean, x=x, y="value", hue=hue, marker="o", ax=ax, sort=False)
    label = measure.replace("_", " ") + (f" (tau={tau})" if tau is not None and measure.startswith("tau") else "")
    ax.set_ylabel(label)
    ax.set_xlabel(x)
    return ax


def plot_state_update(
    df: pd.DataFrame,
    by: str = "layer",
    value: str = "relative",
    hue: str | None = None,
    ax: Axes | None = None,
) -> Axes:
    """Mean state-update `value` (over heads, tokens, clips) per `by` ("layer" or "position").

    `df` is `probes.state_update_distance` output (plus e.g. a "model" column for `hue`). NaN
    relative distances (zero previous state) are left out of the means.
    """
    _need(df, [by, value] + ([hue] if hue else []), "plot_state_update")
    keys = [by] + ([hue] if hue else [])
    mean = df.groupby(keys)[value].mean().reset_index()
    ax = _axes(ax)
    sns.lineplot(data=mean, x=by, y=value, hue=hue, marker="o" if by == "layer" else None, ax=ax)
    ax.set_xlabel("LM layer" if by == "layer" else "audio token position")
    ax.set_ylabel({"relative": "||h_t - h_{t-1}|| / ||h_{t-1}||", "distance": "||h_t - h_{t-1}||"}.get(value, value))
    return ax
