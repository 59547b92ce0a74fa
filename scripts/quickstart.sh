#!/usr/bin/env bash
# The main job on the embedded default: build the built-in English + Russian story corpus, train a small
# masked diffusion LM on it (a few minutes on 2 CPU cores), print samples and an infill, write a GIF trace.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh trace
exec .venv/bin/sunfish quickstart --out "${1:-runs/quickstart}"
