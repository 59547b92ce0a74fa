#!/usr/bin/env bash
# Run the test suite (sets up .venv first if needed). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ -x .venv/Scripts/python.exe ]; then exec .venv/Scripts/python.exe -m pytest "$@"; fi  # a Windows venv
exec .venv/bin/python -m pytest "$@"
