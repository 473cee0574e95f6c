"""Verdicts with the seed as the unit: t-test, non-superiority, TOST, Holm, the fixed seed count, the
audio-use gate, and findings.md recomputed from committed CSVs."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "experiments"))

from lib import paper_numbers, stats  # noqa: E402


def finding(diffs, test="t", margin=math.nan, preset="cpu") -> stats.Finding:
    """A finding over the given per-seed differences, every run passing the gate, judged alone."""
    f = stats.Finding(
        "joint_finetuning",
        "m",
        "",
        "",
        test,
        margin=margin,
        seed_differences=[[k, d] for k, d in enumerate(diffs)],
        **stats.seed_statistics(diffs, test, margin),
    )
    f.p_holm, f.family, f.gate = f.p, 1, ""
    f.verdict = stats.decide(f, preset)
    return f


def test_no_effect_gives_a_verdict_at_most_at_the_nominal_rate_and_a_large_effect_is_held():
    rng = np.random.default_rng(0)
    verdicts = [finding(rng.normal(0, 1, 3)).verdict for _ in range(2000)]
    wrong = sum(v in ("held", "did not hold") for v in verdicts) / len(verdicts)
    assert wrong <= 0.05 + 0.015, wrong
    assert wrong >= 0.02  # the test is not vacuous: at n = 3 it does reject about 5% of the time
    assert np.mean([finding(rng.normal(3, 0.5, 3)).verdict == "held" for _ in range(500)]) >= 0.97
    assert np.mean([finding(rng.normal(-3, 0.5, 3)).verdict == "did not hold" for _ in range(500)]) >= 0.97


def test_statistics_match_scipys_one_sample_t_test_and_t_interval():
    from scipy import stats as st

    d = [0.4, 1.3, 0.2, 0.9]
    s = stats.seed_statistics(d)
    ref = st.ttest_1samp(d, 0.0)
    lo, hi = st.t.interval(0.95, len(d) - 1, loc=np.mean(d), scale=st.sem(d))
    assert s["n"] == 4 and s["p"] == pytest.approx(ref.pvalue) and (s["ci_low"], s["ci_high"]) == pytest.approx((lo, hi))
    ns = stats.seed_statistics(d, "non-superiority", 1.0)
    assert ns["p"] == pytest.approx(st.ttest_1samp(d, 1.0, alternative="less").pvalue)
    assert ns["p_other"] == pytest.approx(st.ttest_1samp(d, 0.0, alternative="greater").pvalue)
    # significant at 0.05 exactly when the one-sided 95% upper bound is below the margin
    upper = np.mean(d) + st.t.ppf(0.95, len(d) - 1) * st.sem(d)
    for margin in (upper - 1e-6, upper + 1e-6):
        assert (stats.seed_statistics(d, "non-superiority", margin)["p"] < 0.05) == (upper < margin)


def test_the_old_two_standard_error_rule_would_fail_the_nominal_rate():
    # the rule this replaced (held when mean > 2 standard errors) is wrong ~18% of the time at n = 3
    rng = np.random.default_rng(1)
    d = rng.normal(0, 1, (4000, 3))
    t = d.mean(1) / (d.std(1, ddof=1) / math.sqrt(3))
    assert (np.abs(t) > 2).mean() > 0.15
    assert np.mean([finding(x).verdict != "inconclusive" for x in d[:2000]]) <= 0.065


def test_holm_matches_a_hand_computed_example_and_controls_the_family():
    adj = stats.holm([0.01, 0.04, 0.03, 0.005, math.nan])
    assert adj[:4] == pytest.approx([0.03, 0.06, 0.06, 0.02]) and math.isnan(adj[4])
    assert stats.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # monotone step-down, capped at 1
    assert stats.holm([0.01, 0.9]) == pytest.approx([0.02, 0.9])
    # five null findings judged as one family: some finding wrongly judged in <= ~5% of families
    rng = np.random.default_rng(2)
    wrong = 0
    for _ in range(1000):
        fs = [finding(rng.normal(0, 1, 3)) for _ in range(5)]
        stats.judge(fs, "cpu", None)
        for f in fs:  # gate passes: judge with the gate already measured as passing
            f.gate = ""
            f.verdict = stats.decide(f, "cpu")
        wrong += any(f.verdict in ("held", "did not hold") for f in fs)
    assert wrong / 1000 <= 0.065


def test_tost_holds_only_when_equivalence_is_shown_both_ways():
    f = stats.Finding("joint_finetuning", "m", "", "", "TOST", margin=1.0, **stats.seed_statistics([0.1, -0.1, 0.05], "TOST", 1.0))
    f.p_holm, f.family, f.gate = f.p, 1, ""
    assert stats.decide(f, "cpu") == "held" and f.ci_low > -1 and f.ci_high < 1
    assert finding([2.0, 2.1, 1.9], "TOST", 1.0).verdict == "did not hold"
    assert finding([-2.0, -2.1, -1.9], "TOST", 1.0).verdict == "did not hold"
    assert finding([-3.0, 3.0, 0.5], "TOST", 1.0).verdict == "inconclusive"
    # at the boundary (true difference = margin) equivalence is claimed at most at the nominal rate
    rng = np.random.default_rng(3)
    held = np.mean([finding(rng.normal(1.0, 0.3, 3), "TOST", 1.0).verdict == "held" for _ in range(2000)])
    assert held <= 0.065


def test_not_better_holds_below_the_margin_and_fails_when_the_challenger_is_better():
    assert finding([0.1, -0.1, 0.0], "non-superiority", 1.0).verdict == "held"
    assert finding([2.0, 2.1, 1.9], "non-superiority", 1.0).verdict == "did not hold"
    # consistently (if slightly) better: the claim "does not consistently beat" is not held
    assert finding([0.3, 0.31, 0.29], "non-superiority", 1.0).verdict == "did not hold"
    assert finding([-3.0, 3.0, 0.5], "non-superiority", 1.0).verdict == "inconclusive"
    # a "not better" claim can no longer hold by default: at a true gain equal to the margin it is
    # held at most at the nominal rate
    rng = np.random.default_rng(4)
    held = np.mean([finding(rng.normal(1.0, 1.0, 3), "non-superiority", 1.0).verdict == "held" for _ in range(2000)])
    assert held <= 0.065
    with pytest.raises(ValueError, match="margin"):
        stats.seed_statistics([0.1, 0.2], "non-superiority")


def test_seed_is_the_unit_sizes_are_averaged_within_each_seed():
    idx = pd.MultiIndex.from_product([["large", "medium", "small"], [0, 1, 2]], names=["lm_size", "seed"])
    a = pd.Series(np.arange(9.0) + 1, index=idx)
    b = pd.Series(np.arange(9.0) * 0.5, index=idx)
    d, runs = stats.paired_by_seed(a, b)
    assert list(d.index) == [0, 1, 2] and len(runs) == 9
    assert d.tolist() == pytest.approx([(a - b).xs(k, level="seed").mean() for k in range(3)])
    f = stats.compare("joint_finetuning", a, b, "A", "B")
    assert f.n == 3 and f.effect == pytest.approx(float(d.mean()))
    # different LM sizes on the two sides (large vs small): paired by seed
    large, small = a.xs("large", level="lm_size", drop_level=False), b.xs("small", level="lm_size", drop_level=False)
    d, runs = stats.paired_by_seed(large, small)
    assert d.tolist() == pytest.approx((large.droplevel(0) - small.droplevel(0)).tolist()) and len(runs) == 6
    with pytest.raises(TypeError, match="lm_size, seed"):
        stats.compare("joint_finetuning", [1.0, 2.0], [0.0, 1.0], "A", "B")


def test_no_verdict_from_another_seed_count_than_the_presets():
    assert finding([1.0, 1.1], preset="cpu").verdict == "not judged: 2 seeds, the cpu preset fixes 3"
    assert finding([1.0, 1.1, 1.05, 0.95], preset="gpu").verdict.startswith("not judged: 4 seeds")
    assert finding([1.0], preset="smoke").verdict == "inconclusive"  # one seed: no df
    assert finding([1.0, 1.1, 1.05], preset="cpu").verdict == "held"


def write_gate(path: Path, passes: dict[tuple[str, int], str]) -> Path:
    rows = [
        dict(lm_size=z, seed=k, metric=m, own=10, other_audio=5, random_baseline=6, probe_ceiling=30, gate="G1", passes=p)
        for (z, k), p in passes.items()
        for m in ("mAP", "CIDEr-D")
    ]
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_gate_is_read_defensively(tmp_path):
    runs = [["small", 0], ["small", 1]]
    assert stats.gate_status(tmp_path / "none.csv", runs) == stats.GATE_NOT_MEASURED
    (tmp_path / "bad.csv").write_text('\x00\x01 not a csv\n"unclosed')
    assert stats.gate_status(tmp_path / "bad.csv", runs) == stats.GATE_NOT_MEASURED
    (tmp_path / "cols.csv").write_text("a,b\n1,2\n")
    assert stats.gate_status(tmp_path / "cols.csv", runs) == stats.GATE_NOT_MEASURED
    ok = write_gate(tmp_path / "ok.csv", {("small", 0): "True", ("small", 1): "True"})
    assert stats.gate_status(ok, runs) == ""
    assert stats.gate_status(ok, [*runs, ["large", 0]]) == stats.GATE_NOT_MEASURED  # a run it lacks
    empty = write_gate(tmp_path / "empty.csv", {("small", 0): "True", ("small", 1): ""})
    assert stats.gate_status(empty, runs) == stats.GATE_NOT_MEASURED  # `passes` not filled in yet
    failing = write_gate(tmp_path / "fail.csv", {("small", 0): "True", ("small", 1): "False"})
    assert stats.gate_status(failing, runs) == stats.GATE_FAILED
    # a failing gate: not testable, with its statistics still reported
    f = finding([1.0, 1.1, 1.05])
    f.runs = runs
    stats.judge([f], "cpu", failing)
    assert f.verdict == stats.GATE_FAILED and f.n == 3 and math.isfinite(f.p) and math.isfinite(f.ci_low)


def test_findings_md_recomputes_from_committed_csvs_and_corrects_over_the_preset(tmp_path):
    import run_all

    sizes, seeds = ["small", "medium", "large"], [0, 1, 2]
    rng = np.random.default_rng(5)
    rows = [
        dict(lm_size=z, seed=k, task="classification", metric="mAP", value=10 + 5 * i + rng.normal(0, 0.1), chance=6.0)
        for i, z in enumerate(sizes)
        for k in seeds
    ]
    pd.DataFrame(rows).to_csv(tmp_path / "table_main.csv", index=False)
    old = {"key": "scaling", "measurement": "old text", "verdict": "held", "rule": "2 standard errors"}  # no per-seed values
    prov = {"experiment": "table_main", "preset": "cpu", "seeds": seeds, "configs": {}, "findings": [old]}
    (tmp_path / "table_main.json").write_text(json.dumps(prov))
    # a second experiment of the same preset, recorded with per-seed values, joins the Holm family
    other = stats.compare(
        "joint_finetuning",
        pd.Series([1.0, 1.2, 0.9], index=pd.MultiIndex.from_product([["small"], seeds], names=["lm_size", "seed"])),
        pd.Series([1.0, 1.0, 1.0], index=pd.MultiIndex.from_product([["small"], seeds], names=["lm_size", "seed"])),
        "A",
        "B",
    )
    (tmp_path / "x.json").write_text(
        json.dumps({"experiment": "x", "preset": "cpu", "seeds": seeds, "configs": {}, "findings": [other.to_dict()]})
    )
    assert json.loads((tmp_path / "x.json").read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))
    text = run_all.findings_markdown(tmp_path)
    assert "old text" not in text and "large LM mAP" in text and stats.GATE_NOT_MEASURED in text
    assert "**held**" not in text
    write_gate(tmp_path / "audio_use.csv", {(z, k): "True" for z in sizes for k in seeds})
    text = run_all.findings_markdown(tmp_path)
    scaling = next(line for line in text.splitlines() if "large LM mAP" in line)
    cells = [c.strip() for c in scaling.split("|")]
    p, p_holm = float(cells[8]), float(cells[9])
    assert cells[5] == "3" and p_holm == pytest.approx(min(1.0, 2 * p)) and "**held**" in scaling
    assert paper_numbers.FINDINGS["scaling"] in text and "Holm" in text


def test_row_labels_name_our_models_for_what_they_are():
    assert paper_numbers.ours_label("small", 128, 2, 8) == "ours, small LM (d128 x 2, LoRA r8)"
    assert paper_numbers.paper_label("SAM-130M (r=256)") == "paper: SAM-130M (r=256)"
