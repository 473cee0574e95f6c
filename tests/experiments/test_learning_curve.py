"""check_learning_curve.py on the smoke preset: records per phase, other-audio answers, probes, the report."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "experiments"))

import check_learning_curve  # noqa: E402


def test_variant_config_multiplies_the_audio_stages_and_applies_extra_overrides() -> None:
    base = check_learning_curve.variant_config("cpu", "recipe", 0)
    x3 = check_learning_curve.variant_config("cpu", "steps_x3", 1, ["data.n_test=128"])
    steps = {s.name: s.steps for s in base.train.stages}
    for stage in x3.train.stages:
        factor = 3 if stage.name in check_learning_curve.AUDIO_STAGES else 1
        assert stage.steps == steps[stage.name] * factor, stage.name
    assert (x3.train.seed, x3.data.seed, x3.data.n_test) == (1, 1, 128)
    cls = check_learning_curve.variant_config("cpu", "cls_stage1", 0)
    assert next(s for s in cls.train.stages if s.name == "stage1").tasks == ["classification"]
    enc = check_learning_curve.variant_config("cpu", "encoder_x3", 0)
    assert enc.data.n_train == 4 * base.data.n_train and enc.data.n_test == base.data.n_test
    assert {s.name: s.steps for s in enc.train.stages} == {**steps, "stage0": 3 * steps["stage0"]}
    assert "stage5" not in steps  # the curve measures after stage 4


@pytest.mark.slow
def test_smoke_learning_curve_measures_then_scores_own_and_other_audio(tmp_path: Path) -> None:
    from sam.data import build_examples
    from sam.data.types import label_matrix
    from sam.eval.baselines import random_map

    runs, records, out = tmp_path / "runs", tmp_path / "records", tmp_path / "out"
    check_learning_curve.main(
        [
            "--preset",
            "smoke",
            "--variants",
            "recipe,token_norm",
            "--clips",
            "8",
            "--probe-train",
            "32",
            "--runs",
            str(runs),
            "--records",
            str(records),
        ]
    )
    rec = json.loads((records / "smoke-token_norm-s0.json").read_text())
    assert rec["complete"] and set(rec["phases_s"]) == {"train", "generate", "losses", "probes"}
    assert all(
        len(rec["answers"][f"{t}/{c}"]) == len(rec["test"][t]) for t in ("classification", "caption") for c in ("own", "other_audio")
    )
    # The embedding entering the LM at the last prompt token is a text token's: the same for every clip, so a
    # probe on it can only rank all clips alike, whose AP is each class's prevalence.
    exs = build_examples(check_learning_curve.variant_config("smoke", "recipe", 0).data, "test", ["classification"])[:8]
    y = label_matrix(exs, rec["classes"])
    prevalence = 100 * y[:, y.sum(0) > 0].mean(0).mean()
    assert rec["probe_map"]["lm.embed@prompt_last"] == pytest.approx(prevalence, abs=1e-6)
    assert rec["probe_map"]["encoder_mean"] != pytest.approx(prevalence, abs=1e-6)

    check_learning_curve.main(["--preset", "smoke", "--score", "--records", str(records), "--out", str(out)])
    data = pd.read_csv(out / "learning_curve.csv")
    assert set(data.variant) == {"recipe", "token_norm"}
    random = data[data.metric == "mAP random scores"].value
    assert np.allclose(random, 100 * random_map(y))
    use = data[data.metric == "mAP audio use"].iloc[0]
    own = data[(data.metric == "mAP own") & (data.variant == use.variant)].value.iloc[0]
    other = data[(data.metric == "mAP other audio") & (data.variant == use.variant)].value.iloc[0]
    assert use.value == pytest.approx(own - other) and use.ci_low <= use.value <= use.ci_high
    assert (out / "learning_curve.png").stat().st_size > 0 and "random scores" in (out / "learning_curve.md").read_text()

    # Scoring again with one record: the other variant's rows are kept from the earlier CSV, and said so.
    (records / "smoke-recipe-s0.json").unlink()
    check_learning_curve.main(["--preset", "smoke", "--score", "--records", str(records), "--out", str(out)])
    again = pd.read_csv(out / "learning_curve.csv")
    assert set(again.variant) == {"recipe", "token_norm"}
    pd.testing.assert_frame_equal(
        again[again.variant == "recipe"].reset_index(drop=True), data[data.variant == "recipe"].reset_index(drop=True)
    )
    assert json.loads((out / "learning_curve.json").read_text())["kept_from_earlier"] == ["recipe"]
