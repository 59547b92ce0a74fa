#!/usr/bin/env bash
# Create .venv and install Sunfish with the extras named in $1 (default: dev, everything the tests need;
# the quickstart asks only for trace). Safe to run again: it does nothing when .venv already holds those
# extras and is newer than pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
extras=${1:-dev}
stamp=.venv/.sunfish-installed-$extras
venv_python() {  # a Windows venv keeps its executables in Scripts/
  if [ -x .venv/Scripts/python.exe ]; then echo .venv/Scripts/python.exe; else echo .venv/bin/python; fi
}
for done in "$stamp" .venv/.sunfish-installed-dev; do  # dev includes every other extra
  if [ -f "$done" ] && [ "$done" -nt pyproject.toml ] && "$(venv_python)" -c "import sunfish, torch" 2>/dev/null; then
    exit 0
  fi
done
[ -x "$(venv_python)" ] || "$PY" -m venv .venv
VPY=$(venv_python)
"$VPY" -m pip install -q --upgrade pip
# Pin torch: 2.13.0 resolves to the CPU wheel here; an unpinned torch pulls several GB of CUDA packages.
"$VPY" -m pip install -q "torch==2.13.0"
"$VPY" -m pip install -q -e ".[$extras]"
touch "$stamp"
