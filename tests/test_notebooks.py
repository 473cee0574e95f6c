"""The notebooks execute headless, top to bottom, on the smoke preset (nbclient, the venv's ipykernel).

They share the smoke run cache with the experiment tests (the session's base temp dir), so the
model trained there is reused here when both modules run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.support.experiments import smoke_runs_dir

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = ("quickstart", "probes_tour", "rebuild_figures")


@pytest.fixture(scope="module")
def smoke_env(tmp_path_factory):
    runs = smoke_runs_dir(tmp_path_factory)  # the smoke run cache tests/experiments trains into
    figures = tmp_path_factory.mktemp("nb-figures")
    # rebuild_figures needs CSVs: the one experiment that trains nothing writes them quickly
    subprocess.run(
        [sys.executable, "experiments/fig1_architecture.py", "--preset", "smoke", "--out", str(figures), "--runs", str(runs)],
        cwd=REPO,
        check=True,
        capture_output=True,
        timeout=600,
    )
    # the kernel's inline backend draws the figures into the outputs (an Agg MPLBACKEND would hide them)
    env = {
        "SAM_PRESET": "smoke",
        "SAM_RUNS": str(runs),
        "SAM_FIGURES": str(figures),
        "MPLBACKEND": "module://matplotlib_inline.backend_inline",
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits this process' environment
    yield env
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_executes_headless_on_smoke(smoke_env, name):
    book = nbformat.read(REPO / "notebooks" / f"{name}.ipynb", as_version=4)
    NotebookClient(book, kernel_name="python3", timeout=600, resources={"metadata": {"path": str(REPO / "notebooks")}}).execute()
    outputs = [o for cell in book.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any(o.output_type in ("display_data", "execute_result") and "image/png" in o.get("data", {}) for o in outputs), (
        f"{name} drew no figure"
    )


def test_notebooks_are_committed_without_outputs():
    for name in NOTEBOOKS:
        book = nbformat.read(REPO / "notebooks" / f"{name}.ipynb", as_version=4)
        assert all(not c.get("outputs") for c in book.cells if c.cell_type == "code"), name
