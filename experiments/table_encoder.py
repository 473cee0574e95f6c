"""Table 3: audio encoder frozen vs jointly finetuned, and encoders swapped across LM sizes.

Compares, for each LM size and seed:
1. the four-stage curriculum with the encoder trained jointly in stages 2-4 (the paper's recipe)
   vs kept frozen after its stage-0 pretraining (stand-in for EAT's AudioSet finetuning);
2. [ours, the paper's protocol is not published] every jointly finetuned LM evaluated with the
   finetuned encoder of each LM size in place of its own (no retraining): the diagonal is the
   matched pair.
Paper findings checked: joint finetuning beats a frozen encoder; an encoder finetuned with one SSM
size works best with that size.
"""

from __future__ import annotations

import pandas as pd
import seaborn as sns

from lib import common, measure

METRICS = [("classification", "mAP"), ("classification", "accuracy"), ("caption", "CIDEr-D")]


def frozen_changes(s: common.Settings) -> list[str]:
    """Drop "encoder" from every LM stage's trainable groups (stage 0, the encoder's own, stays)."""
    from sam.train import is_encoder_stage

    stages = common.run_config(s).train.stages
    return [
        f"train.stages.{i}.trainable=[{', '.join(g for g in st.trainable if g != 'encoder')}]"
        for i, st in enumerate(stages)
        if "encoder" in st.trainable and not is_encoder_stage(st)
    ]


def plot(data: pd.DataFrame):
    """The figure from the tidy table (the CSV): frozen vs finetuned bars, and the encoder-swap grid."""
    sizes = common.sizes_in(data)
    fig, axes = common.figure(ncols=2, width=5.2)
    common.bars(
        axes[0],
        data[data.encoder != "swapped"],
        "classification",
        "mAP",
        "lm_size",
        "encoder",
        order=sizes,
        hue_order=["frozen", "finetuned"],
        title="Jointly finetuned vs frozen encoder",
        ylabel="mAP (%)",
    )
    grid = (
        data[(data.encoder != "frozen") & (data.task == "classification") & (data.metric == "mAP")]
        .pivot_table(index="encoder_from", columns="lm_size", values="value")
        .loc[sizes, sizes]
    )
    sns.heatmap(grid, annot=True, fmt=".1f", cmap="viridis", ax=axes[1], cbar_kws={"label": "mAP (%)"})
    axes[1].set(
        title="Encoder finetuned with one LM size, used with another", xlabel="LM size (evaluated)", ylabel="encoder finetuned with LM size"
    )
    return fig


def swapped(run: measure.Run, donor: measure.Run):
    """`run`'s model after stage 4 with `donor`'s stage-4 encoder (`audio_tower`), no retraining."""
    model = measure.load(measure.stage(run, "stage4"))
    model.audio_tower.load_state_dict(measure.load(measure.stage(donor, "stage4")).audio_tower.state_dict())
    return model


def findings(data: pd.DataFrame) -> list[common.Finding]:
    """The paper's findings this table checks, from its tidy table (the CSV)."""

    def per(**where: object) -> pd.Series:
        return common.per_seed(data, "classification", "mAP", **where)

    out = [common.compare("joint_finetuning", per(encoder="finetuned"), per(encoder="frozen"), "finetuned mAP", "frozen mAP", "%")]
    if len(common.sizes_in(data)) > 1:
        swapped = data[(data.encoder == "swapped") & (data.task == "classification") & (data.metric == "mAP")]
        other = swapped.groupby(["lm_size", "seed"]).value.mean()  # mean over the other sizes' encoders
        matched = per(encoder="finetuned")
        out.append(
            common.compare(
                "encoder_matched",
                matched[matched.index.isin(other.index)],
                other,
                "matched encoder mAP",
                "mean of other sizes' encoders",
                "%",
            )
        )
    return out


def main(argv: list[str] | None = None) -> dict:
    s = common.parse_args("table_encoder", __doc__, argv=argv)
    rows, sizes = [], common.lm_sizes(s)
    runs = measure.grid(s, {"finetuned": [], "frozen": frozen_changes(s)}, "encoder")
    for run in runs:
        m = measure.evaluate(s, run, measure.stage(run, "stage4"))
        rows += measure.metric_rows(m, **run.labels, encoder_from=run.labels["lm_size"])
    joint = {(r.labels["lm_size"], r.labels["seed"]): r for r in runs if r.labels["encoder"] == "finetuned"}
    for (size, seed), run in joint.items():
        for source in sizes:
            if source != size:
                m = measure.evaluate(
                    s,
                    run,
                    measure.stage(run, "stage4"),
                    model=lambda r=run, d=joint[(source, seed)]: swapped(r, d),
                    variant=f"audio_tower from {joint[(source, seed)].dir.name}",
                )
                rows += measure.metric_rows(m, **{**run.labels, "encoder": "swapped", "encoder_from": source})
    if s.defer_scoring:
        return measure.deferred(s, len(runs))
    data = pd.DataFrame(rows)

    table = common.summary(data, ["lm_size", "encoder", "encoder_from"], METRICS)

    notes = (
        f"Percent, mean ± sd over seeds, {common.test_data(s)}. Frozen = the encoder keeps its "
        "stage-0 weights through stages 1-4. Swapped = a finetuned model evaluated with another size's "
        "finetuned encoder, no retraining (our protocol). The paper reports only the directions."
    )
    return common.write_outputs(
        s,
        data,
        plot(data),
        table,
        title="Table 3: encoder frozen, finetuned, swapped across LM sizes",
        notes=notes,
        configs=measure.configs(runs),
        findings=findings(data),
    )


if __name__ == "__main__":
    main()
