#!/usr/bin/env bash
# One command from a fresh clone to results: install everything, build the real-audio corpus, then
#   scripts/setup.sh          the main job: Fig. 2 (tau-rank of audio tokens) and the token-length table,
#                             each at its default preset (gpu where CUDA is, else cpu);
#   scripts/setup.sh --all    every paper table and figure (experiments/run_all.py; PRESET=... picks a preset).
# Further arguments go to the experiment scripts (e.g. --seeds 1 --sizes small).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh dev,notebooks
.venv/bin/sam prepare-data
if [ "${1:-}" = "--all" ]; then
  shift
  exec .venv/bin/python experiments/run_all.py ${PRESET:+--preset "$PRESET"} "$@"
fi
.venv/bin/python experiments/fig2_rank.py ${PRESET:+--preset "$PRESET"} "$@"
.venv/bin/python experiments/table_token_length.py ${PRESET:+--preset "$PRESET"} "$@"
