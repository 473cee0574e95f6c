#!/usr/bin/env bash
# The test command: installs what the tests need (idempotent), builds the corpus if absent, checks
# lint and formatting (ruff), then runs the suite on the `smoke` preset. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh dev
.venv/bin/sam prepare-data
.venv/bin/ruff check . && .venv/bin/ruff format --check .
exec .venv/bin/python -m pytest -q "$@"
