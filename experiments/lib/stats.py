"""Seeds, spread and verdicts: how a comparison over runs becomes a finding with a test and a verdict.

The unit of a finding is the training seed. A finding compares A with B over LM sizes x seeds; the
runs of one seed share that seed's encoder pretraining and data order, so they are not independent.
The paired differences A - B are therefore averaged over LM sizes within each seed, and the per-seed
means enter a one-sample t-test with df = seeds - 1 (scipy.stats.t): effect = their mean, a 95% CI
from the t quantile, and a p-value. Three kinds of claim:

- ``t`` ("A beats B"): two-sided test of mean 0. held: the corrected p < ALPHA and the effect is
  positive; did not hold: corrected p < ALPHA and negative; inconclusive otherwise.
- ``non-superiority`` ("A does not beat B"): p tests H0 "mean >= margin" one-sided (significant
  exactly when the one-sided 95% upper bound, i.e. the 90% two-sided CI's upper end, is below the
  margin). held: its corrected p < ALPHA AND the one-sided test that A IS better (H0 "mean <= 0")
  gives p >= ALPHA uncorrected (stricter than corrected). did not hold: that test of A being better,
  Bonferroni-corrected over the preset's findings, gives p < ALPHA. Inconclusive otherwise.
- ``TOST`` ("A and B do not differ"): two one-sided tests against -margin and +margin; p is the larger
  of the two. held: corrected p < ALPHA (equivalence shown). did not hold: the mean lies outside
  [-margin, margin] by a one-sided test, p x 2 directions x findings (Bonferroni) < ALPHA.

The correction is Holm's over every finding of one preset that has a p-value (run_all computes it;
a script alone corrects over its own findings only, and says so). No verdict is computed when the
number of seeds differs from the preset's fixed count (FIXED_SEEDS: seeds cannot be added after
looking), with fewer than two seeds (no df), or when a run entering the finding does not pass the
audio-use gate (`gate_status`). Effect, CI, n and p are reported in every case.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as st

from . import paper_numbers

ALPHA = 0.05
# Seeds per preset, fixed before any result is seen: the default of --seeds, and the only count
# from which a verdict is computed (a table from another count is still written).
FIXED_SEEDS = {"smoke": 1, "cpu": 3, "gpu": 3, "paper": 1}
TESTS = ("t", "non-superiority", "TOST")
GATE_NOT_MEASURED = "not testable: the audio-use gate was not measured"
GATE_FAILED = "not testable: the models do not use the audio"


def spread(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean, sample standard deviation (0 for one value) and count of the finite values."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if len(v) == 0:
        return math.nan, math.nan, 0
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0, len(v)


def fmt(values: Sequence[float], digits: int = 1) -> str:
    """'mean ± std (n=k)', or the single value when there is one seed."""
    m, sd, n = spread(values)
    if n == 0:
        return "n/a"
    return f"{m:.{digits}f}" if n == 1 else f"{m:.{digits}f} ± {sd:.{digits}f} (n={n})"


@dataclass
class Finding:
    """One of the paper's findings checked against our runs: the per-seed differences it rests on,
    the test, its statistics and the verdict."""

    key: str
    measurement: str
    verdict: str
    rule: str
    test: str = "t"
    unit: str = ""
    margin: float = math.nan  # non-superiority / TOST only, in the unit of the values
    seed_differences: list[list[float]] = field(default_factory=list)  # [[seed, mean difference over sizes], ...]
    runs: list[list[Any]] = field(default_factory=list)  # [[lm_size, seed], ...] entering the finding
    n: int = 0
    effect: float = math.nan
    ci_low: float = math.nan
    ci_high: float = math.nan
    p: float = math.nan  # raw p of the claim's test
    p_other: float = math.nan  # non-superiority: p that A IS better; TOST: p that |mean| > margin (one direction)
    p_holm: float = math.nan
    family: int = 0  # findings in the Holm family
    gate: str = GATE_NOT_MEASURED  # "" = every run passes the audio-use gate; else why the finding is not testable

    @property
    def claim(self) -> str:
        return paper_numbers.FINDINGS[self.key]

    def to_dict(self) -> dict[str, Any]:
        """The finding for provenance JSON (NaN as null, so strict JSON readers accept it), with its claim."""
        d = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in dataclasses.asdict(self).items()}
        return {**d, "claim": self.claim}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Finding:
        """A finding as provenance JSON holds it (older records lack the statistics: they stay NaN)."""
        known = set(cls.__dataclass_fields__)
        given = {k: (math.nan if v is None else v) for k, v in d.items() if k in known}
        return cls(**{"measurement": "", "verdict": "", "rule": "", **given})


def seed_statistics(diffs: Sequence[float], test: str = "t", margin: float = math.nan) -> dict[str, float]:
    """n, effect, 95% CI, p and p_other of per-seed differences under `test` (see the module doc)."""
    if test not in TESTS:
        raise ValueError(f"unknown test {test!r}; expected one of {TESTS}")
    if test != "t" and not (math.isfinite(margin) and margin > 0):
        raise ValueError(f"a {test} test needs a positive margin, got {margin}")
    d = np.asarray([x for x in diffs if math.isfinite(x)], dtype=float)
    n = len(d)
    out = dict(n=n, effect=float(d.mean()) if n else math.nan, ci_low=math.nan, ci_high=math.nan, p=math.nan, p_other=math.nan)
    if n < 2:
        return out
    m, df = float(d.mean()), n - 1
    se = float(d.std(ddof=1)) / math.sqrt(n)
    half = float(st.t.ppf(1 - ALPHA / 2, df)) * se
    out.update(ci_low=m - half, ci_high=m + half)

    def upper(x: float) -> float:  # P(T >= (m - x) / se): H0 "mean <= x" against "mean > x"
        return float(st.t.sf((m - x) / se, df)) if se > 0 else (0.0 if m > x else 1.0)

    def lower(x: float) -> float:  # H0 "mean >= x" against "mean < x"
        return float(st.t.cdf((m - x) / se, df)) if se > 0 else (0.0 if m < x else 1.0)

    if test == "t":
        out["p"] = min(1.0, 2 * min(upper(0.0), lower(0.0)))
    elif test == "non-superiority":
        out["p"], out["p_other"] = lower(margin), upper(0.0)
    else:
        out["p"] = max(upper(-margin), lower(margin))
        out["p_other"] = min(upper(margin), lower(-margin))
    return out


def holm(ps: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (NaN entries stay NaN and are not counted in the family)."""
    idx = [i for i, p in enumerate(ps) if p is not None and math.isfinite(p)]
    adj = [math.nan] * len(ps)
    running, m = 0.0, len(idx)
    for rank, i in enumerate(sorted(idx, key=lambda i: ps[i])):
        running = max(running, min(1.0, (m - rank) * ps[i]))
        adj[i] = running
    return adj


def decide(f: Finding, preset: str) -> str:
    """The verdict of `f` from its statistics, `f.p_holm`, `f.family` and `f.gate` (module doc)."""
    if f.gate:
        return f.gate
    fixed = FIXED_SEEDS.get(preset)
    if fixed is not None and f.n != fixed:
        return f"not judged: {f.n} seed{'s' if f.n != 1 else ''}, the {preset} preset fixes {fixed}"
    if f.n < 2 or not math.isfinite(f.p_holm):
        return "inconclusive"
    family = max(f.family, 1)
    if f.test == "t":
        if f.p_holm < ALPHA:
            return "held" if f.effect > 0 else "did not hold"
        return "inconclusive"
    bonferroni = (2 if f.test == "TOST" else 1) * family * f.p_other
    if bonferroni < ALPHA:
        return "did not hold"
    if f.p_holm < ALPHA and (f.test == "TOST" or f.p_other >= ALPHA):
        return "held"
    return "inconclusive"


def judge(findings: Sequence[Finding], preset: str, gate_files: Path | Sequence[Path | None] | None) -> list[Finding]:
    """Gate, Holm over `findings` (one family: a preset's) and verdicts, in place; returns them.
    `gate_files`: the audio_use.csv every finding is gated by, or one per finding (None: not measured)."""
    files = list(gate_files) if isinstance(gate_files, (list, tuple)) else [gate_files] * len(findings)
    family = sum(1 for g in findings if math.isfinite(g.p))
    for f, p, gate_file in zip(findings, holm([f.p for f in findings]), files):
        f.p_holm, f.family = p, family
        f.gate = gate_status(gate_file, f.runs) if gate_file is not None else GATE_NOT_MEASURED
        f.verdict = decide(f, preset)
    return list(findings)


# ------------------------------------------------------------------------------------------------
# The audio-use gate


def gate_status(path: Path, runs: Sequence[Sequence[Any]]) -> str:
    """ "" when every run (lm_size, seed) has rows in `path` (audio_use.csv) and all of them pass;
    else why the finding is not testable. Read defensively: a missing or unreadable file, missing
    columns, a run without rows or an empty `passes` all read as "not measured"."""
    if not runs:
        return GATE_NOT_MEASURED
    try:
        gate = pd.read_csv(path, dtype={"lm_size": str, "passes": str})
    except (OSError, ValueError, pd.errors.ParserError):
        return GATE_NOT_MEASURED
    if not {"lm_size", "seed", "passes"} <= set(gate.columns):
        return GATE_NOT_MEASURED
    seeds = pd.to_numeric(gate.seed, errors="coerce")
    verdicts = gate.passes.fillna("").str.strip().str.lower()
    missing = False
    for size, seed in runs:
        rows = verdicts[(gate.lm_size == str(size)) & (seeds == int(seed))]
        if rows.isin(["false", "0", "no"]).any():
            return GATE_FAILED
        if rows.empty or not rows.isin(["true", "1", "yes"]).all():
            missing = True
    return GATE_NOT_MEASURED if missing else ""


# ------------------------------------------------------------------------------------------------
# Building findings from tidy tables


def per_seed(data: pd.DataFrame, task: str, metric: str, **where: Any) -> pd.Series:
    """The values of one (task, metric) for the rows matching `where`, indexed by (lm_size, seed), for
    `compare` (which pairs two such series by run, or by seed when their LM sizes differ)."""
    sel = (data.task == task) & (data.metric == metric)
    for col, val in where.items():
        sel &= data[col] == val
    values = data[sel].set_index(["lm_size", "seed"]).value.sort_index()
    if values.index.has_duplicates:
        raise ValueError(f"per_seed({task}, {metric}, {where}): several rows per (lm_size, seed); select one variant")
    return values


def paired_by_seed(a: pd.Series, b: pd.Series) -> tuple[pd.Series, list[list[Any]]]:
    """Per-seed mean of a - b over LM sizes, and the runs (lm_size, seed) entering it.

    Series indexed by (lm_size, seed) with the same runs are paired run by run (pairs with a missing
    side are dropped); otherwise (e.g. large vs small LM) each seed's mean of `a` minus that of `b`."""
    for s_ in (a, b):
        if not isinstance(s_, pd.Series) or "seed" not in (s_.index.names or []):
            raise TypeError("compare needs values as a pandas Series indexed by (lm_size, seed) (see per_seed)")
    a, b = a[np.isfinite(a.astype(float))], b[np.isfinite(b.astype(float))]
    if set(a.index) & set(b.index):
        common_runs = a.index.intersection(b.index)
        a, b = a.loc[common_runs], b.loc[common_runs]
    da, db = a.groupby(level="seed").mean(), b.groupby(level="seed").mean()
    seeds = da.index.intersection(db.index)
    d = (da.loc[seeds] - db.loc[seeds]).astype(float)
    runs = sorted(
        {
            (str(z), int(k))
            for s_ in (a, b)
            for z, k in zip(s_.index.get_level_values("lm_size"), s_.index.get_level_values("seed"))
            if k in seeds
        }
    )
    return d, [list(r) for r in runs]


RULES = {
    "t": "seed as the unit: paired differences averaged over LM sizes per seed, one-sample t-test (df = seeds - 1), "
    "two-sided; held if the Holm-corrected p < 0.05 and the effect is positive",
    "non-superiority": "seed as the unit; one-sided t-test of H0 'difference >= margin' (held if Holm-corrected p < 0.05 "
    "and the test that the challenger is better is not significant; did not hold if it is, Bonferroni)",
    "TOST": "seed as the unit; two one-sided t-tests against +-margin (held if Holm-corrected p < 0.05: equivalent)",
}


def _finding(key: str, a: pd.Series, b: pd.Series, a_name: str, b_name: str, unit: str, test: str, margin: float = math.nan) -> Finding:
    d, runs = paired_by_seed(a, b)
    stats = seed_statistics(d.tolist(), test, margin)
    measurement = f"{a_name} {fmt(a.tolist(), 2)}{unit} vs {b_name} {fmt(b.tolist(), 2)}{unit} (mean ± sd over runs)"
    rule = RULES[test] + (f"; margin {margin:g}{unit}" if test != "t" else "")
    f = Finding(key, measurement, "inconclusive", rule, test, unit, margin, [[int(k), float(v)] for k, v in d.items()], runs, **stats)
    f.verdict = decide(f, "")
    return f


def compare(key: str, better: pd.Series, worse: pd.Series, better_name: str, worse_name: str, unit: str = "") -> Finding:
    """The claim "`better` > `worse`" (values from `per_seed`), by a t-test over seeds."""
    return _finding(key, better, worse, better_name, worse_name, unit, "t")


def compare_not_better(
    key: str, challenger: pd.Series, incumbent: pd.Series, challenger_name: str, incumbent_name: str, margin: float, unit: str = ""
) -> Finding:
    """The claim "`challenger` does not beat `incumbent` by `margin` or more" (non-superiority)."""
    return _finding(key, challenger, incumbent, challenger_name, incumbent_name, unit, "non-superiority", margin)


def compare_equivalent(key: str, a: pd.Series, b: pd.Series, a_name: str, b_name: str, margin: float, unit: str = "") -> Finding:
    """The claim "`a` and `b` differ by less than `margin`" (TOST)."""
    return _finding(key, a, b, a_name, b_name, unit, "TOST", margin)


def summary(data: pd.DataFrame, by: Sequence[str], metrics: Sequence[tuple[str, str]], digits: int = 1) -> pd.DataFrame:
    """One row per group of `by`: each (task, metric) as 'mean ± sd (n=seeds)', and its chance level
    beside it where the evaluation reports one."""
    rows = []
    for key, g in data.groupby(list(by), sort=False):
        row = dict(zip(by, key if isinstance(key, tuple) else (key,)))
        for task, metric in metrics:
            v = g[(g.task == task) & (g.metric == metric)]
            row[f"{task} {metric}"] = fmt(v.value.tolist(), digits)
            if "chance" in v and v.chance.notna().any():
                row[f"{task} {metric} chance"] = round(float(v.chance.mean()), digits)
        rows.append(row)
    return pd.DataFrame(rows)


def _num(x: float, digits: int = 2) -> str:
    return f"{x:.{digits}f}" if math.isfinite(x) else "n/a"


def _p(x: float) -> str:
    return f"{x:.3g}" if math.isfinite(x) else "n/a"


def findings_table(findings: Sequence[Finding], first: dict[str, Sequence[str]] | None = None) -> list[str]:
    """Markdown rows of judged findings: measurement, test, n, effect, 95% CI, raw and Holm p, verdict.
    `first`: the leading columns (name -> one value per finding); default: the paper's claim."""
    first = first if first is not None else {"paper finding": [f.claim for f in findings]}
    head = [*first, "our measurement", "test", "n (seeds)", "effect", "95% CI", "p", "p (Holm)", "verdict"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, f in enumerate(findings):
        test = f.test + (f" (margin {f.margin:g}{f.unit})" if f.test != "t" else "")
        cells = [
            *(v[i] for v in first.values()),
            f.measurement,
            test,
            str(f.n),
            _num(f.effect) + f.unit,
            f"[{_num(f.ci_low)}, {_num(f.ci_high)}]",
            _p(f.p),
            _p(f.p_holm),
            f"**{f.verdict}**",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines
