"""Figure 2: tau-effective rank and token similarity of audio tokens across training stages, by LM size.

Compares: for each LM size and seed, the checkpoint after every curriculum stage 0..4 (stage 0 =
encoder pretraining, the connector still untrained), probed on the same test scenes. Sites: the
connector output (audio tokens as the LM sees them) and the residual stream of the last LM layer
on the audio span. Measures (probes): tau-effective rank at tau = 0.99, raw (the number of
directions) and normalized by min(N, d), and mean pairwise cosine similarity. Paper finding checked: smaller SSMs end with lower-rank, more
similar audio tokens.
"""

from __future__ import annotations

import pandas as pd
import seaborn as sns

from lib import common, measure

STAGES = ("stage0", "stage1", "stage2", "stage3", "stage4")
PANELS = [
    ("connector.out", "tau_rank_normalized", "Rank of audio tokens entering the LM", "tau-effective rank / min(N, d) (0.99 energy)"),
    ("connector.out", "tau_rank", "Raw rank of audio tokens entering the LM", "tau-effective rank (directions, 0.99 energy)"),
    ("lm.last_layer", "tau_rank_normalized", "Rank after the last LM layer", "tau-effective rank / min(N, d) (0.99 energy)"),
    ("lm.last_layer", "tau_rank", "Raw rank after the last LM layer", "tau-effective rank (directions, 0.99 energy)"),
    ("connector.out", "similarity", "Similarity of audio tokens entering the LM", "mean pairwise cosine similarity (unitless)"),
]


def seed_means(data: pd.DataFrame) -> pd.DataFrame:
    return data.groupby(["lm_size", "seed", "stage", "site", "measure"], as_index=False).value.mean()


def plot(data: pd.DataFrame):
    """The figure from the tidy table (the CSV): one line per LM size, sd over seeds."""
    per_seed, sizes = seed_means(data), common.sizes_in(data)
    fig, axes = common.figure(ncols=3, nrows=2, width=4.6)
    for ax in axes[len(PANELS) :]:
        ax.remove()
    for ax, (site, m, title, ylabel) in zip(axes, PANELS):
        sub = per_seed[(per_seed.site == site) & (per_seed.measure == m)]
        sns.lineplot(sub, x="stage", y="value", hue="lm_size", hue_order=sizes, marker="o", errorbar="sd", ax=ax)
        ax.set(title=title, xlabel="training stage (0 = encoder pretraining)", ylabel=ylabel, xticks=range(len(STAGES)))
        ax.legend(title="LM size")
    return fig


def findings(data: pd.DataFrame) -> list[common.Finding]:
    """The paper's finding this figure checks, from its tidy table (the CSV): rank and similarity of
    the tokens entering the LM after the last stage, largest vs smallest LM, paired by seed."""
    sizes = common.sizes_in(data)
    if len(sizes) < 2:
        return []
    per_seed = seed_means(data)
    final = per_seed[(per_seed.stage == per_seed.stage.max()) & (per_seed.site == "connector.out")]

    def at(size: str, m: str) -> pd.Series:
        return final[(final.lm_size == size) & (final.measure == m)].set_index(["lm_size", "seed"]).value

    return [
        common.compare(
            "rank_by_size",
            at(sizes[-1], "tau_rank_normalized"),
            at(sizes[0], "tau_rank_normalized"),
            f"{sizes[-1]} LM rank",
            f"{sizes[0]} LM rank",
        ),
        common.compare(
            "rank_by_size",
            at(sizes[0], "similarity"),
            at(sizes[-1], "similarity"),
            f"{sizes[0]} LM similarity",
            f"{sizes[-1]} LM similarity",
        ),
    ]


def main(argv: list[str] | None = None) -> dict:
    s = common.parse_args("fig2_rank", __doc__, argv=argv)
    rows, runs = [], measure.grid(s)
    for run in runs:
        for name in (st.name for st in run.cfg.train.stages):
            if name in STAGES:  # by name: other stages (text-only LM pretraining, reasoning) are not plotted
                rows += measure.probe_rows(
                    s, run, name, "tokens", ["connector.out", measure.last_layer(run.cfg)], **run.labels, stage=STAGES.index(name)
                )
    if s.defer_scoring:  # probe rows cached; outputs are written where the scores are (--cached)
        return measure.deferred(s, len(runs))
    data = pd.DataFrame(rows)
    data["site"] = data.site.where(data.site == "connector.out", "lm.last_layer")
    per_seed = seed_means(data)
    final = per_seed[per_seed.stage == per_seed.stage.max()]
    table = final.groupby(["lm_size", "site", "measure"]).value.apply(lambda v: common.fmt(list(v), 3)).unstack("measure").reset_index()
    notes = (
        "Paper (Fig. 2): smaller SSMs end with lower-rank, more similar audio tokens; its values are not published. "
        f"Probed on the first {measure.PROBE_CLIPS[s.preset]} test scenes; the table is the final stage (stage 4), "
        "mean ± sd over seeds of the per-clip mean. tau_rank is the raw rank (directions); tau_rank_normalized divides "
        "it by min(tokens, dims), so sites of different sizes compare (the LM sizes share the token count here)."
    )
    return common.write_outputs(
        s,
        data,
        plot(data),
        table,
        title="Figure 2: tau-effective rank across training stages by LM size",
        notes=notes,
        configs=measure.configs(runs),
        findings=findings(data),
    )


if __name__ == "__main__":
    main()
