#!/usr/bin/env bash
# The test command: installs what the tests need (idempotent), builds the corpus if absent,
# then runs the suite on the `smoke` preset. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh dev
.venv/bin/sam prepare-data
exec .venv/bin/python -m pytest -q "$@"
