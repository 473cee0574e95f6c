#!/usr/bin/env bash
# Idempotent install of everything SAM needs on a Debian/Ubuntu machine:
#   1. Debian packages: the real-audio corpus (sound packages) and Java (for caption metrics);
#   2. a virtual environment in .venv with CPU torch 2.13.0 and the project (+ extras).
# Usage: scripts/install.sh [EXTRAS]   (EXTRAS defaults to "dev"; e.g. "dev,notebooks")
# Re-running it installs only what is missing. Never installs mamba-ssm (GPU only: `pip install .[gpu]`).
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${1:-dev}"
# Corpus sources (about 430 MB of .debs; fluidsynth renders the two soundfonts note by note).
APT_PACKAGES=(ufoai-sound openttd-opensfx sonic-pi-samples fillets-ng-data colobot-common-sounds
              asterisk-core-sounds-en-wav asterisk-core-sounds-en
              asterisk-core-sounds-es-wav asterisk-core-sounds-es asterisk-core-sounds-fr-wav asterisk-core-sounds-fr
              asterisk-core-sounds-it-wav asterisk-core-sounds-it asterisk-core-sounds-ru-wav asterisk-core-sounds-ru
              fluid-soundfont-gm avldrums.lv2-soundfont fluidsynth default-jre-headless)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# A JRE that is already there (any openjdk) satisfies the caption metrics.
if command -v java >/dev/null 2>&1; then
  missing=("${missing[@]/default-jre-headless}")
fi
missing=($(printf '%s\n' "${missing[@]}" | grep -v '^$' || true))
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "[install] apt: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "[install] creating .venv"
  "$PY" -m venv .venv
fi
stamp=".venv/.sam-installed-$(cat pyproject.toml | sha1sum | cut -c1-12)-${EXTRAS//,/_}"
if [ ! -f "$stamp" ]; then
  # No pip download cache: it would keep a second copy of every wheel (hundreds of MB) on machines
  # whose disk is often the scarce resource; a re-run of this script installs nothing anyway.
  export PIP_NO_CACHE_DIR=1
  .venv/bin/python -m pip install -q --upgrade pip setuptools wheel
  # CPU torch first, pinned, so no dependency can pull a multi-GB CUDA build.
  .venv/bin/python -m pip install -q "torch==2.13.0"
  .venv/bin/python -m pip install -q -e ".[${EXTRAS}]" "torch==2.13.0"
  touch "$stamp"
fi
echo "[install] ok: $(.venv/bin/python -c 'import torch, sam; print("torch", torch.__version__)')"
