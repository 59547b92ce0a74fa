#!/usr/bin/env bash
# Create .venv and install Sunfish with the extras named in $1 (default: dev, everything the tests need;
# the quickstart asks only for trace). Safe to run again: it does nothing when .venv already holds those
# extras and is newer than pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
extras=${1:-dev}
stamp=.venv/.sunfish-installed-$extras
for done in "$stamp" .venv/.sunfish-installed-dev; do  # dev includes every other extra
  if [ -f "$done" ] && [ "$done" -nt pyproject.toml ] && .venv/bin/python -c "import sunfish, torch" 2>/dev/null; then
    exit 0
  fi
done
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# Pin torch: 2.13.0 resolves to the CPU wheel here; an unpinned torch pulls several GB of CUDA packages.
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[$extras]"
touch "$stamp"
