"""Figure 3: state-update distance between adjacent audio tokens, per LM layer, for layouts a/b/c and LM sizes.

Compares: models trained through the four-stage curriculum with token layout (a) concat,
(b) time-major or (c) freq-major, for each LM size and seed (the same runs as the token-length
table), and as a control the same configs at their seed's random initialization (untrained), which
separates what sequence length alone does to the state from what training does. Measures
(probes.state_update_distance, exact): for each Mamba-2 layer, head and adjacent audio-token pair,
the absolute distance ||h_t - h_{t-1}||_F and the relative one, divided by ||h_{t-1}||_F, averaged
over heads, tokens and the probed test scenes. Both are drawn: the relative distance shrinks as the
state norm grows along a long sequence, so it alone would confound length with the update size.
"""

from __future__ import annotations

import pandas as pd
import seaborn as sns

from lib import common, measure

LAYOUTS = {"concat": "(a) concat", "time_major": "(b) time-major", "freq_major": "(c) freq-major"}


MODELS = ("trained", "untrained (control)")
PANELS = {"distance": "||h_t - h_(t-1)|| (absolute)", "relative": "||h_t - h_(t-1)|| / ||h_(t-1)|| (ratio)"}
MEASURE_TITLES = {"distance": "absolute", "relative": "relative"}


def seed_means(data: pd.DataFrame) -> pd.DataFrame:
    data = data if "model" in data else data.assign(model=MODELS[0])  # CSVs written before the control
    per_seed = data.groupby(["lm_size", "layout", "model", "seed", "layer", "measure"], as_index=False).value.mean()
    return per_seed.assign(layout=per_seed.layout.map(LAYOUTS))


def plot(data: pd.DataFrame):
    """The figure from the tidy table (the CSV): absolute (top) and relative (bottom) distance per
    layer, one panel per LM size, one colour per layout; dashed: the untrained control."""
    per_seed, sizes = seed_means(data), common.sizes_in(data)
    fig, axes = common.figure(ncols=len(sizes), nrows=len(PANELS), width=4.6)
    for row, (measure_name, ylabel) in enumerate(PANELS.items()):
        sub = per_seed[per_seed.measure == measure_name]
        for col, size in enumerate(sizes):
            ax = axes[row * len(sizes) + col]
            here = sub[sub.lm_size == size]
            sns.lineplot(
                here,
                x="layer",
                y="value",
                hue="layout",
                hue_order=list(LAYOUTS.values()),
                style="model",
                style_order=[m for m in MODELS if m in set(here.model)],
                marker="o",
                errorbar="sd",
                ax=ax,
            )
            ax.set(
                title=f"{size} LM: state change per token ({MEASURE_TITLES[measure_name]})",
                xlabel="LM layer (index)",
                ylabel=ylabel,
                yscale="log",
            )
            ax.set_xticks(sorted(here.layer.unique()))
            ax.legend(fontsize=7)
    return fig


def main(argv: list[str] | None = None) -> dict:
    s = common.parse_args("fig3_state_update", __doc__, argv=argv)
    rows = []
    runs = measure.grid(s, {k: [f"model.connector.layout={k}"] for k in LAYOUTS}, "layout")
    for run in runs:
        rows += measure.probe_rows(s, run, "stage4", "state", **run.labels, model=MODELS[0])
        rows += measure.probe_rows(s, run, measure.UNTRAINED, "state", **run.labels, model=MODELS[1])
    if s.defer_scoring:  # probe rows cached; outputs are written where the scores are (--cached)
        return measure.deferred(s, len(runs))
    data = pd.DataFrame(rows)
    over_layers = seed_means(data).groupby(["lm_size", "layout", "model", "seed", "measure"], as_index=False).value.mean()
    table = (
        over_layers.groupby(["lm_size", "layout", "model", "measure"])
        .value.apply(lambda v: common.fmt(list(v), 4))
        .unstack("measure")
        .reset_index()
        .rename(columns={"distance": "mean distance", "relative": "mean relative distance"})
    )
    notes = (
        "Mean over layers, heads, audio-token pairs and the first "
        f"{measure.PROBE_CLIPS[s.preset]} test scenes; mean ± sd over seeds. The paper's Fig. 3 shows this measure; "
        "its values are not published. Relative distance = ||h_t - h_(t-1)||_F / ||h_(t-1)||_F; for layouts (b)/(c) the "
        "audio span includes the separator tokens. Untrained (control): the same config and seed at its random "
        "initialization, before any training, probed on the same scenes."
    )
    return common.write_outputs(
        s,
        data,
        plot(data),
        table,
        title="Figure 3: state-update distance between adjacent audio tokens",
        notes=notes,
        configs=measure.configs(runs),
    )


if __name__ == "__main__":
    main()
