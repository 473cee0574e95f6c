"""Run every table and figure script of the paper, then write `<out>/findings.md`.

The scripts run in one process, in an order that trains each shared run once (the run cache under
`--runs` does the sharing). A script that fails is reported and the others still run; the exit
status is then 1. `findings.md` lists each of the paper's findings with our measurement, its
effect over seeds with a CI, the test, raw and Holm-corrected p and a verdict, per preset: it reads
the provenance JSON of every experiment in `--out` and in its sub-folders (e.g. figures/ for the cpu
preset and figures/gpu/ for the gpu one); `python experiments/run_all.py --findings-only` rewrites it
from those files without running anything.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
import traceback
from pathlib import Path

import pandas as pd

from lib import common, paper_numbers, stats

SCRIPTS = (
    "fig1_architecture",
    "table_main",
    "fig2_rank",
    "table_reasoning",
    "table_lora_rank",
    "table_encoder",
    "table_token_length",
    "fig3_state_update",
)


def _preset_rank(prov: object) -> int:
    """Where a JSON file's preset sorts in findings.md (files of no known preset last)."""
    preset = prov.get("preset") if isinstance(prov, dict) else None
    return common.PRESETS.index(preset) if preset in common.PRESETS else len(common.PRESETS)


def recorded_findings(path: Path, prov: dict) -> list[stats.Finding]:
    """The findings of one provenance JSON. Provenance written before the per-seed differences were
    recorded has none: then they are recomputed from the experiment's CSV beside it (per-run values
    with lm_size and seed) by the experiment's own `findings` function."""
    recorded = prov.get("findings", [])
    if recorded and all("seed_differences" in f for f in recorded):
        return [stats.Finding.from_dict(f) for f in recorded]
    csv = path.with_suffix(".csv")
    if not recorded or not csv.is_file():
        return [stats.Finding.from_dict(f) for f in recorded]
    module = importlib.import_module(prov["experiment"])
    if not hasattr(module, "findings"):
        raise ValueError(f"{path}: findings without per-seed values, and {prov['experiment']} has no findings() to recompute them")
    return module.findings(pd.read_csv(csv, dtype={"lm_size": str}))


def gate_file(path: Path, out: Path) -> Path:
    """The audio_use.csv that gates the findings of `path`: in its folder or the nearest folder above it
    up to `out` (a preset's sub-folders share its gate); the own folder's path when none exists."""
    for folder in [path.parent, *path.parent.parents]:
        if (folder / "audio_use.csv").is_file():
            return folder / "audio_use.csv"
        if folder == out:
            break
    return path.parent / "audio_use.csv"


RULES = (
    "Rules. The unit is the training seed: the paired differences of a finding are averaged over LM sizes within "
    "each seed (the runs of one seed share its encoder pretraining), and the per-seed means enter a t-test with "
    'df = seeds - 1 (scipy.stats.t); effect = their mean with its 95% CI. Tests: `t` (claim "A beats B"), '
    'two-sided; `non-superiority` (claim "A does not beat B"): one-sided test of H0 "difference >= margin" '
    "(significant exactly when the one-sided 95% upper bound is below the margin), held only if also the "
    "one-sided test that A is better is not significant, and did not hold if that test is significant "
    "(Bonferroni over the preset's findings); `TOST`: two one-sided tests against +-margin (equivalence). "
    "p (Holm) is Holm's correction over every finding of the preset with a p-value. *held*: corrected p < 0.05 "
    "in the claim's direction; *did not hold*: significant in the other direction; *inconclusive* otherwise and "
    "with fewer than two seeds. No verdict is computed from another number of seeds than the preset fixes "
    f"({', '.join(f'{k} {v}' for k, v in stats.FIXED_SEEDS.items())}), so seeds cannot be added after looking, "
    "nor when a run entering a finding does not pass the audio-use gate of `<preset folder>/audio_use.csv` "
    '(read per LM size and seed; a missing file, run or `passes` value reads "not measured"): then the verdict '
    "says why the finding is not testable, and effect, CI, n and p are still shown."
)


def findings_markdown(out: Path) -> str:
    """findings.md from the provenance JSONs under `out` (one level of sub-folders), grouped by finding;
    Holm's correction and the gate are applied per preset."""
    provs = [(p, json.loads(p.read_text())) for p in [*out.glob("*.json"), *out.glob("*/*.json")]]
    # Rows of a finding in preset order (cpu before gpu), the preset's own folder before its sub-folders.
    provs.sort(key=lambda pp: (_preset_rank(pp[1]), len(pp[0].relative_to(out).parts), pp[0]))
    rows: list[tuple[str, str, stats.Finding]] = []
    by_preset: dict[str, list[tuple[stats.Finding, Path]]] = {}
    for path, prov in provs:
        if not (isinstance(prov, dict) and "experiment" in prov and "preset" in prov):
            continue
        sizes = list(
            dict.fromkeys(
                part.split("=", 1)[1] for label in prov.get("configs", {}) for part in label.split("/") if part.startswith("lm_size=")
            )
        )
        where = f"{prov['preset']} (seeds {len(prov['seeds'])}" + (f"; LM {', '.join(sizes)})" if sizes else ")")
        for f in recorded_findings(path, prov):
            rows.append((where, prov["experiment"], f))
            by_preset.setdefault(prov["preset"], []).append((f, gate_file(path, out)))
    for preset, entries in by_preset.items():
        stats.judge([f for f, _ in entries], preset, [g for _, g in entries])
    lines = [
        "# The paper's findings, checked",
        "",
        f"Claims from {paper_numbers.CITATION} (abstract and ablation directions). Written by "
        "`experiments/run_all.py` from the provenance and CSVs of each experiment.",
        "",
        RULES,
        "",
    ]
    for key, claim in paper_numbers.FINDINGS.items():
        mine = [(w, e, f) for w, e, f in rows if f.key == key]
        lines += [f"## {claim}", ""]
        if mine:
            lines += stats.findings_table(
                [f for _, _, f in mine], {"preset": [w for w, _, _ in mine], "experiment": [f"`{e}`" for _, e, _ in mine]}
            )
        else:
            lines.append("Not measured (needs at least two LM sizes or a run of the script that checks it).")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    only = "--findings-only" in argv  # rewrite findings.md from the outputs already in --out
    argv = [a for a in argv if a != "--findings-only"]
    s = common.parse_args("run_all", __doc__, needs=[] if only else list(common.PAPER_TRAINING_NEEDS), argv=argv)
    failed, started = [], time.perf_counter()
    for name in () if only else SCRIPTS:
        t0 = time.perf_counter()
        try:
            importlib.import_module(name).main(argv)
            print(f"[run_all] {name}: done in {time.perf_counter() - t0:.0f} s", flush=True)
        except Exception as e:  # one failing experiment must not stop the others
            failed.append(name)
            traceback.print_exc()
            print(f"[run_all] {name}: FAILED ({type(e).__name__}: {e})", flush=True)
    s.out.mkdir(parents=True, exist_ok=True)
    (s.out / "findings.md").write_text(findings_markdown(s.out) + "\n")
    print(
        f"[run_all] {0 if only else len(SCRIPTS) - len(failed)}/{len(SCRIPTS)} experiments in {time.perf_counter() - started:.0f} s; "
        f"findings in {s.out / 'findings.md'}" + (f"; failed: {', '.join(failed)}" if failed else ""),
        flush=True,
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
