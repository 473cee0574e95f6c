"""Experiment scripts run the way the tests of tests/experiments and tests/test_notebooks.py need them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def smoke_runs_dir(tmp_path_factory) -> Path:
    """The smoke run cache of this test session (shared with the notebook tests)."""
    path = tmp_path_factory.getbasetemp() / "smoke-runs"
    path.mkdir(exist_ok=True)
    return path


def run_script(script: str, out: Path, runs: Path) -> subprocess.CompletedProcess:
    """`python experiments/<script>.py --preset smoke` from the repository root; fails the test on an error."""
    r = subprocess.run(
        [sys.executable, f"experiments/{script}.py", "--preset", "smoke", "--out", str(out), "--runs", str(runs)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert r.returncode == 0, f"{script} failed:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    return r
