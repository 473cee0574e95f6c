"""Table 4: token layout (a) concat vs (b) time-major vs (c) freq-major: length, accuracy, rank, state updates.

Compares, for each LM size and seed, the four-stage curriculum with each token layout (the same
runs as Figure 3): audio tokens per clip, classification mAP / accuracy and caption CIDEr-D (like
Table 1), the normalized tau-effective rank (tau = 0.99) of the audio tokens entering the LM and
after its last layer, and the mean relative state-update distance over layers. Paper findings
checked: long sequences (b)/(c) do not consistently beat compact tokens (a), and show lower rank.
"""
from __future__ import annotations

import pandas as pd

import common
import measure

LAYOUTS = {"concat": "(a) concat", "time_major": "(b) time-major", "freq_major": "(c) freq-major"}
METRICS = [("layout", "tokens_per_clip"), ("classification", "mAP"), ("classification", "accuracy"),
           ("caption", "CIDEr-D"), ("probe", "rank connector.out"), ("probe", "rank lm.last_layer"),
           ("probe", "relative state update")]


def probe_summary(s: common.Settings, run: measure.Run) -> list[dict]:
    """Rank and state-update rows of the run after stage 4 (the probe rows Fig. 2 and Fig. 3 cache too),
    and the audio tokens per clip (from the probe batch's audio spans)."""
    tok = pd.DataFrame(measure.probe_rows(s, run, "stage4", "tokens", ["connector.out", measure.last_layer(run.cfg)]))
    state = pd.DataFrame(measure.probe_rows(s, run, "stage4", "state"))
    if tok.empty or state.empty:  # a measurement worker for whom these rows are another's share
        return []
    rank = tok[tok.measure == "tau_rank_normalized"].groupby("site").value.mean()
    state = state.query("measure == 'relative'").value.mean()
    values = {"rank connector.out": rank["connector.out"], "rank lm.last_layer": rank[measure.last_layer(run.cfg)],
              "relative state update": state, "tokens_per_clip": tok[tok.site == "connector.out"].tokens.mean()}
    return [{**run.labels, "task": "layout" if k == "tokens_per_clip" else "probe", "metric": k, "value": float(v),
             "chance": float("nan")} for k, v in values.items()]


def plot(data: pd.DataFrame):
    """The figure from the tidy table (the CSV): accuracy, rank and state change by size and layout."""
    sizes, order = common.sizes_in(data), list(LAYOUTS.values())
    fig, axes = common.figure(ncols=3, width=4.6)
    for ax, (task, metric, title, ylabel) in zip(axes, [
            ("classification", "mAP", "Classification mAP by token layout", "mAP (%)"),
            ("probe", "rank connector.out", "Rank of the audio tokens entering the LM", "tau-effective rank / min(N, d) (0.99)"),
            ("probe", "relative state update", "State change per audio token", "mean ||h_t - h_(t-1)|| / ||h_(t-1)|| (ratio)")]):
        common.bars(ax, data, task, metric, "lm_size", "layout", order=sizes, hue_order=order, title=title, ylabel=ylabel)
    return fig


def main(argv: list[str] | None = None) -> dict:
    s = common.parse_args("table_token_length", __doc__, argv=argv)
    rows = []
    runs = measure.grid(s, {k: [f"model.connector.layout={k}"] for k in LAYOUTS}, "layout")
    for run in runs:
        rows += measure.metric_rows(measure.evaluate(s, run, measure.stage(run, "stage4")), **run.labels)
        rows += probe_summary(s, run)
    if s.defer_scoring:
        return measure.deferred(s, len(runs))
    data = pd.DataFrame(rows)
    data["layout"] = data.layout.map(LAYOUTS)
    order = list(LAYOUTS.values())

    table = common.summary(data, ["lm_size", "layout"], METRICS, digits=3)

    def a(task: str, metric: str) -> list[float]:
        return common.per_seed(data, task, metric, layout=order[0])

    def long(task: str, metric: str) -> list[float]:  # mean of (b) and (c) per run, so runs are not counted twice
        b, c = (common.per_seed(data, task, metric, layout=lay) for lay in order[1:])
        return [(x + y) / 2 for x, y in zip(b, c)]

    findings = [
        common.compare_not_better("compact_tokens", long("classification", "mAP"), a("classification", "mAP"),
                                  "(b)/(c) mAP", "(a) mAP", "%"),
        common.compare("compact_rank", a("probe", "rank connector.out"), long("probe", "rank connector.out"),
                       "(a) normalized rank", "(b)/(c) normalized rank"),
    ]
    notes = (f"Mean ± sd over seeds; classification and captions in percent on {common.test_data(s)}; "
             "ranks normalized by min(tokens, dims), so layouts of different length compare; probes on the first "
             f"{measure.PROBE_CLIPS[s.preset]} test scenes. Paper (Table 4): 64 tokens per 10 s for (a), 512 plus "
             "separators for (b)/(c); only directions are known.")
    return common.write_outputs(s, data, plot(data), table, title="Table 4: token layout and sequence length", notes=notes,
                                configs=measure.configs(runs), findings=findings)


if __name__ == "__main__":
    main()
