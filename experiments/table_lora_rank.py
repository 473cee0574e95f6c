"""Table 2: LoRA rank 8 vs 256 on every Mamba-2 block's in_proj and out_proj, by LM size.

Compares: for each LM size and seed, the four-stage curriculum with LoRA rank 8 and with rank 256
(alpha = 2 * rank, as in the paper), everything else equal; evaluated like Table 1 at the end of
stage 4. Paper findings checked: rank 256 beats rank 8, with a larger gap for smaller LMs.
"""

from __future__ import annotations

import pandas as pd

from lib import common, measure

RANKS = (8, 256)
METRICS = [("classification", "mAP"), ("classification", "accuracy"), ("caption", "CIDEr-D")]


def gains(data: pd.DataFrame) -> pd.DataFrame:
    """Rank-256 minus rank-8 value per (LM size, seed, task, metric)."""
    ranks = data.assign(lora_rank=data.lora_rank.astype(int)).set_index(["lm_size", "seed", "task", "metric", "lora_rank"]).value
    return (ranks.xs(RANKS[1], level="lora_rank") - ranks.xs(RANKS[0], level="lora_rank")).reset_index()


def plot(data: pd.DataFrame):
    """The figure from the tidy table (the CSV): mAP per size and rank, and the gain of the larger rank."""
    sizes = common.sizes_in(data)
    fig, axes = common.figure(ncols=2, width=5)
    common.bars(
        axes[0],
        data.assign(lora_rank=data.lora_rank.astype(str)),
        "classification",
        "mAP",
        "lm_size",
        "lora_rank",
        order=sizes,
        hue_order=[str(r) for r in RANKS],
        title="mAP by LM size and LoRA rank",
        ylabel="mAP (%)",
    )
    common.bars(
        axes[1],
        gains(data),
        "classification",
        "mAP",
        "lm_size",
        order=sizes,
        title=f"Gain from rank {RANKS[1]} over rank {RANKS[0]}",
        ylabel="mAP difference (percentage points)",
    )
    axes[1].axhline(0, color="0.5", lw=0.8)
    return fig


def findings(data: pd.DataFrame) -> list[common.Finding]:
    """The paper's findings this table checks, from its tidy table (the CSV)."""
    data, sizes = data.assign(lora_rank=data.lora_rank.astype(int)), common.sizes_in(data)
    out = [
        common.compare(
            "lora_rank",
            common.per_seed(data, "classification", "mAP", lora_rank=RANKS[1]),
            common.per_seed(data, "classification", "mAP", lora_rank=RANKS[0]),
            f"rank {RANKS[1]} mAP",
            f"rank {RANKS[0]} mAP (paired by size and seed)",
            "%",
        )
    ]
    if len(sizes) > 1:
        gap = gains(data)
        out.append(
            common.compare(
                "lora_rank",
                common.per_seed(gap, "classification", "mAP", lm_size=sizes[0]),
                common.per_seed(gap, "classification", "mAP", lm_size=sizes[-1]),
                f"{sizes[0]} LM gain",
                f"{sizes[-1]} LM gain",
                " pp",
            )
        )
    return out


def main(argv: list[str] | None = None) -> dict:
    s = common.parse_args("table_lora_rank", __doc__, argv=argv)
    runs = measure.grid(s, {r: [f"model.lora.rank={r}"] for r in RANKS}, "lora_rank")
    rows = [r for run in runs for r in measure.metric_rows(measure.evaluate(s, run, measure.stage(run, "stage4")), **run.labels)]
    if s.defer_scoring:
        return measure.deferred(s, len(runs))
    data = pd.DataFrame(rows)

    table = common.summary(data, ["lm_size", "lora_rank"], METRICS)
    notes = (
        f"Percent, mean ± sd over seeds, {common.test_data(s)}. The paper reports only the "
        "direction (rank 8 < 256, larger gap for small LMs); its Table 1 rows use rank 256."
    )
    return common.write_outputs(
        s,
        data,
        plot(data),
        table,
        title="Table 2: LoRA rank by LM size",
        notes=notes,
        configs=measure.configs(runs),
        findings=findings(data),
    )


if __name__ == "__main__":
    main()
