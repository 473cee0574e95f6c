#!/usr/bin/env bash
# One command from a fresh clone to results: install everything, build the real-audio corpus,
# then run the main job (every paper table and figure on the embedded default, `cpu` preset).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh dev,notebooks
.venv/bin/sam prepare-data
.venv/bin/python experiments/run_all.py --preset "${PRESET:-cpu}" "$@"
