"""Table 5: MMAU-style multiple-choice accuracy without and with the reasoning stage.

Compares, for each LM size and seed, the same run before (end of stage 4) and after (end of
stage 5) its instruction/reasoning stage, on the test scenes' 4-choice questions in MMAU's shape
(temporal order, counting, co-occurrence, speech content), scored with MMAU's string-match rule;
chance is 1 / number of choices. Paper finding checked: reasoning supervision raises MMAU-Sound
accuracy (SAM-2.7B 22.83 -> SAM+OR-2.7B 56.77).

Beside MMAU's rule, a second protocol: the choice the model finds most likely as its response
(`measure.choice_likelihood`), which tells a model that knows the answer but does not write one in
the expected form from a model that does not know it. It needs the weights, so runs measured only
from cached answers (``--cached``) report it as not measured.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from lib import common, controls, measure, paper_numbers

STAGES = {"stage4": "without reasoning (stage 4)", "stage5": "with reasoning (stage 5)"}


def plot(data: pd.DataFrame):
    """The figure from the tidy table (the CSV): accuracy before/after stage 5, overall and by category,
    how often an answer picks exactly one choice, and the likelihood protocol with each question's own
    audio and with another scene's (the last two where the CSV has them)."""
    sizes, order = common.sizes_in(data), list(STAGES.values())
    valid = data[(data.category == "all") & (data.metric == "valid_choice_rate")]
    likely = data[(data.category == "all") & data.metric.isin(["likelihood_accuracy", "likelihood_accuracy_other_audio"])]
    fig, axes = common.figure(ncols=2 + bool(len(valid)) + bool(len(likely)), width=5.4)
    common.bars(
        axes[0],
        data[data.category == "all"],
        "reasoning",
        "accuracy",
        "lm_size",
        "stage",
        order=sizes,
        hue_order=order,
        title="Multiple-choice accuracy before / after the reasoning stage",
        ylabel="accuracy (%)",
    )
    common.bars(
        axes[1],
        data[(data.category != "all") & (data.lm_size == sizes[-1])],
        "reasoning",
        "accuracy",
        "category",
        "stage",
        hue_order=order,
        title=f"By question category ({sizes[-1]} LM)",
        ylabel="accuracy (%)",
    )
    axes[1].tick_params(axis="x", rotation=20)
    if len(valid):
        common.bars(
            axes[2],
            valid,
            "reasoning",
            "valid_choice_rate",
            "lm_size",
            "stage",
            order=sizes,
            hue_order=order,
            title="Answers that pick exactly one choice",
            ylabel="share of questions (%)",
        )
    if len(likely):
        audio = likely.assign(
            stage=likely.stage + likely.metric.map({"likelihood_accuracy": "", "likelihood_accuracy_other_audio": ", other audio"}),
            metric="likelihood_accuracy",
        )
        common.bars(
            axes[-1],
            audio,
            "reasoning",
            "likelihood_accuracy",
            "lm_size",
            "stage",
            order=sizes,
            hue_order=[f"{o}{a}" for o in order for a in ("", ", other audio") if f"{o}{a}" in set(audio.stage)],
            title="Most likely choice (likelihood protocol), own vs other audio",
            ylabel="accuracy (%)",
        )
    return fig


def findings(data: pd.DataFrame) -> list[common.Finding]:
    """The paper's findings this table checks, from its tidy table (the CSV)."""
    overall, order = data[data.category == "all"], list(STAGES.values())
    protocols = [("accuracy", "with reasoning stage")]
    if (overall.metric == "likelihood_accuracy").any():  # the second protocol, where the weights were measured
        protocols.append(("likelihood_accuracy", "most likely choice (likelihood protocol, not the paper's) with reasoning stage"))
    out = [
        common.compare(
            "reasoning",
            common.per_seed(overall, "reasoning", metric, stage=order[1]),
            common.per_seed(overall, "reasoning", metric, stage=order[0]),
            label,
            "without",
            "%",
        )
        for metric, label in protocols
    ]
    return out


def category_baselines(run: measure.Run) -> dict[str, dict[str, float]]:
    """{category: {chance, uniform, prior}} in percent: the baselines of each question category's own
    questions (`sam.eval.baselines.answer_prior` by question type), from the run's test split."""
    from sam.eval.baselines import answer_prior

    qs = measure.test_examples(run.cfg, ["reasoning"])
    out = {}
    for cat in {ex.metadata.get("category") for ex in qs}:
        sub = [ex for ex in qs if ex.metadata.get("category") == cat]
        p = answer_prior([ex.answer for ex in sub], [ex.metadata.get("question_type") for ex in sub], [ex.choices for ex in sub])
        out[str(cat)] = {k: 100 * p[k] for k in ("chance", "uniform", "prior")}
    return out


def main(argv: list[str] | None = None) -> dict:
    s = common.parse_args("table_reasoning", __doc__, argv=argv)
    rows, runs = [], measure.grid(s)
    for run in runs:
        for name, label in STAGES.items():
            checkpoint = measure.stage(run, name)
            m = measure.evaluate(s, run, checkpoint, ["reasoning"])
            rows += measure.metric_rows(m, **run.labels, stage=label, category="all")
            rows += controls.control_rows(controls.paired(s, run, checkpoint, ["reasoning"]), **run.labels, stage=label, category="all")
            for suffix, other in (("", False), ("_other_audio", True)):
                lk = measure.choice_likelihood(s, run, checkpoint, other_audio=other)
                if lk is not None:
                    rows += [
                        dict(
                            **run.labels,
                            stage=label,
                            category="all",
                            task="reasoning",
                            metric=f"likelihood_{k}{suffix}",
                            value=100 * lk[k],
                            **{b: 100 * lk.get(b, float("nan")) for b in ("chance", "uniform", "prior")},
                            **dict(zip(("ci_low", "ci_high"), 100 * np.asarray(lk.get("ci", {}).get(k, (np.nan, np.nan)), float))),
                        )
                        for k in ("accuracy", "accuracy_per_token")
                    ]
            by_category = m["reasoning"]["by"].get("category", {}) if m else {}
            base = category_baselines(run) if by_category else {}
            for cat, g in by_category.items():
                rows.append(
                    dict(
                        **run.labels, stage=label, category=cat, task="reasoning", metric="accuracy", value=100 * g["accuracy"], **base[cat]
                    )
                )
    if s.defer_scoring:
        return measure.deferred(s, len(runs))
    data = pd.DataFrame(rows)
    overall = data[data.category == "all"]

    table = common.summary(
        overall,
        ["lm_size", "stage"],
        [
            ("reasoning", m)
            for m in (
                "accuracy",
                "accuracy_other_audio",
                "accuracy_audio_use",
                "valid_choice_rate",
                "accuracy_among_valid",
                "likelihood_accuracy",
                "likelihood_accuracy_other_audio",
                "likelihood_accuracy_per_token",
            )
        ],
    )
    paper = pd.DataFrame(
        [{"model": paper_numbers.paper_label(k), "MMAU-Sound accuracy (%)": v} for k, v in paper_numbers.MMAU_SOUND.items()]
    )
    notes = (
        "Ours: 4-choice questions generated from the test scenes' metadata (MMAU's JSON shape and categories), "
        "MMAU's string-match rule, mean ± sd over seeds, chance = the larger of uniform (1 / choices) and the best single-answer prior on the same questions (prior: per question type always the most frequent answer, or always one choice position). valid_choice_rate: answers that pick "
        "exactly one choice under that rule (the others name none, or several, and count as wrong); "
        "accuracy_among_valid: the accuracy over those answers (chance as overall). likelihood_accuracy: a second protocol, "
        "not the paper's: the choice whose text, as the response, the model finds most likely (summed log-probability; "
        "_per_token: per-token mean), measured from the weights; n/a where only cached answers were available (the "
        "weights were not kept). likelihood_accuracy_other_audio: the same with every question asked about another "
        "test scene's audio, the control: what the question text and answer priors give without listening. "
        "accuracy_other_audio / accuracy_audio_use: the same control under MMAU's rule (own minus other audio; its "
        "95% CI over test clips in the CSV). Paper: MMAU test-mini, Sound subset."
    )
    return common.write_outputs(
        s,
        data,
        plot(data),
        {f"Ours ({common.test_data(s)})": table, "Paper (reported)": paper},
        title="Table 5: reasoning supervision and multiple-choice accuracy",
        notes=notes,
        configs=measure.configs(runs),
        findings=findings(data),
    )


if __name__ == "__main__":
    main()
