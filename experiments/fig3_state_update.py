"""Figure 3: state-update distance between adjacent audio tokens, per LM layer, for layouts a/b/c and LM sizes.

Compares: models trained through the four-stage curriculum with token layout (a) concat,
(b) time-major or (c) freq-major, for each LM size and seed (the same runs as the token-length
table). Measure (probes.state_update_distance, exact): for each Mamba-2 layer, head and adjacent
audio-token pair, ||h_t - h_{t-1}||_F relative to ||h_{t-1}||_F, averaged over heads, tokens and the
probed test scenes. Short compact sequences are expected to move the state more per token.
"""
from __future__ import annotations

import pandas as pd
import seaborn as sns

import common
import measure

LAYOUTS = {"concat": "(a) concat", "time_major": "(b) time-major", "freq_major": "(c) freq-major"}


def seed_means(data: pd.DataFrame) -> pd.DataFrame:
    per_seed = data.groupby(["lm_size", "layout", "seed", "layer", "measure"], as_index=False).value.mean()
    return per_seed.assign(layout=per_seed.layout.map(LAYOUTS))


def plot(data: pd.DataFrame):
    """The figure from the tidy table (the CSV): one panel per LM size, one line per layout."""
    per_seed, sizes = seed_means(data), common.sizes_in(data)
    fig, axes = common.figure(ncols=len(sizes), width=4.6)
    rel = per_seed[per_seed.measure == "relative"]
    for ax, size in zip(axes, sizes):
        sns.lineplot(rel[rel.lm_size == size], x="layer", y="value", hue="layout", hue_order=list(LAYOUTS.values()),
                     marker="o", errorbar="sd", ax=ax)
        ax.set(title=f"{size} LM: state change per token, by layout", xlabel="LM layer (index)",
               ylabel="||h_t - h_(t-1)|| / ||h_(t-1)|| (ratio)", yscale="log")
        ax.set_xticks(sorted(rel[rel.lm_size == size].layer.unique()))
        ax.legend(title="token layout")
    return fig


def main(argv: list[str] | None = None) -> dict:
    s = common.parse_args("fig3_state_update", __doc__, argv=argv)
    rows = []
    runs = measure.grid(s, {k: [f"model.connector.layout={k}"] for k in LAYOUTS}, "layout")
    for run in runs:
        rows += measure.probe_rows(s, run, "stage4", "state", **run.labels)
    if s.defer_scoring:  # probe rows cached; outputs are written where the scores are (--cached)
        return measure.deferred(s, len(runs))
    data = pd.DataFrame(rows)
    over_layers = seed_means(data).groupby(["lm_size", "layout", "seed", "measure"], as_index=False).value.mean()
    table = (over_layers.groupby(["lm_size", "layout", "measure"]).value.apply(lambda v: common.fmt(list(v), 4))
             .unstack("measure").reset_index().rename(columns={"distance": "mean distance", "relative": "mean relative distance"}))
    notes = ("Mean over layers, heads, audio-token pairs and the first "
             f"{measure.PROBE_CLIPS[s.preset]} test scenes; mean ± sd over seeds. The paper's Fig. 3 shows this measure; "
             "its values are not published. Relative distance = ||h_t - h_(t-1)||_F / ||h_(t-1)||_F; for layouts (b)/(c) the "
             "audio span includes the separator tokens.")
    return common.write_outputs(s, data, plot(data), table, title="Figure 3: state-update distance between adjacent audio tokens",
                                notes=notes, configs=measure.configs(runs))


if __name__ == "__main__":
    main()
