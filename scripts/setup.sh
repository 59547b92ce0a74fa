#!/usr/bin/env bash
# Create .venv and install Sunfish with its test and trace extras. Safe to run again: it does nothing
# when .venv is already up to date with pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
stamp=.venv/.sunfish-installed
if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ] && .venv/bin/python -c "import sunfish, torch" 2>/dev/null; then
  exit 0
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# Pin torch: 2.13.0 resolves to the CPU wheel here; an unpinned torch pulls several GB of CUDA packages.
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[dev]"
touch "$stamp"
