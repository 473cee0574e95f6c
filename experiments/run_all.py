"""Run every table and figure script of the paper, then write `<out>/findings.md`.

The scripts run in one process, in an order that trains each shared run once (the run cache under
`--runs` does the sharing). A script that fails is reported and the others still run; the exit
status is then 1. `findings.md` lists each of the paper's findings with our measurement, its
spread over seeds and a verdict, per preset: it reads the provenance JSON of every experiment in
`--out` and in its sub-folders (e.g. figures/ for the cpu preset and figures/gpu/ for the gpu one).
"""
from __future__ import annotations

import importlib
import json
import sys
import time
import traceback
from pathlib import Path

import common
import paper_numbers

SCRIPTS = ("fig1_architecture", "table_main", "fig2_rank", "table_reasoning", "table_lora_rank", "table_encoder",
           "table_token_length", "fig3_state_update")


def _preset_rank(prov: object) -> int:
    """Where a JSON file's preset sorts in findings.md (files of no known preset last)."""
    preset = prov.get("preset") if isinstance(prov, dict) else None
    return common.PRESETS.index(preset) if preset in common.PRESETS else len(common.PRESETS)


def findings_markdown(out: Path) -> str:
    """findings.md from the provenance JSONs under `out` (one level of sub-folders), grouped by preset."""
    found: dict[str, list[tuple[str, dict]]] = {}
    provs = [(p, json.loads(p.read_text())) for p in [*out.glob("*.json"), *out.glob("*/*.json")]]
    # Rows of a finding in preset order (cpu before gpu), the preset's own folder before its sub-folders.
    provs.sort(key=lambda pp: (_preset_rank(pp[1]), len(pp[0].relative_to(out).parts), pp[0]))
    for path, prov in provs:
        if "experiment" in prov and "preset" in prov:
            sizes = list(dict.fromkeys(part.split("=", 1)[1] for label in prov.get("configs", {})
                                       for part in label.split("/") if part.startswith("lm_size=")))
            where = f"{prov['preset']} (seeds {len(prov['seeds'])}" + (f"; LM {', '.join(sizes)})" if sizes else ")")
            for f in prov.get("findings", []):
                found.setdefault(f["key"], []).append((where, {**f, "experiment": prov["experiment"]}))
    lines = ["# The paper's findings, checked", "",
             f"Claims from {paper_numbers.CITATION} (abstract and ablation directions). Verdict rule: values are "
             "paired by run (LM size x seed); a claim *held* when the mean paired difference exceeds two standard "
             "errors in its direction, *did not hold* when it does so in the other direction, and is *inconclusive* "
             "otherwise or with fewer than two runs. Written by `experiments/run_all.py`.", ""]
    for key, claim in paper_numbers.FINDINGS.items():
        lines += [f"## {claim}", "", "| preset | experiment | our measurement | verdict |", "|---|---|---|---|"]
        rows = found.get(key, [])
        lines += [f"| {p} | `{f['experiment']}` | {f['measurement']} | **{f['verdict']}** |" for p, f in rows]
        if not rows:
            lines.append("| – | – | not measured (needs at least two LM sizes or a run of the script that checks it) | – |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    s = common.parse_args("run_all", __doc__, needs=list(common.PAPER_TRAINING_NEEDS), argv=argv)
    failed, started = [], time.perf_counter()
    for name in SCRIPTS:
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
    print(f"[run_all] {len(SCRIPTS) - len(failed)}/{len(SCRIPTS)} experiments in {time.perf_counter() - started:.0f} s; "
          f"findings in {s.out / 'findings.md'}" + (f"; failed: {', '.join(failed)}" if failed else ""), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
