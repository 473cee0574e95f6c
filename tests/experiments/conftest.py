"""The smoke figures every script test reads: run_all once per test session (a few minutes on 2 cores)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.support.experiments import REPO, run_script, smoke_runs_dir

sys.path.insert(0, str(REPO / "experiments"))  # the scripts import `lib` and each other from there


@pytest.fixture(scope="session")
def smoke_figures(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("figures")
    run_script("run_all", out, smoke_runs_dir(tmp_path_factory))
    return out
