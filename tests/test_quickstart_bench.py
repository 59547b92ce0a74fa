"""benchmarks/quickstart_fidelity.py runs end to end on a tiny budget and prints its table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_fidelity_benchmark_prints_its_table(tmp_path):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "quickstart_fidelity.py"), "--seeds", "0", "--steps", "2",
           "--samples", "1", "--docs", "200", "--threads", "1", "--variants", "bpe 1024", "--out", str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| bpe 1024 | t=0.8 | 1 |" in done.stdout and "| bpe 1024 | greedy | 1 |" in done.stdout
    scores = json.loads((tmp_path / "results.json").read_text())["bpe 1024"][0]["scores"]
    assert all(0.0 <= v <= 1.0 for by_lang in scores.values() for v in by_lang.values())
    bad = subprocess.run([*cmd[:2], "--variants", "bpe 9"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert bad.returncode == 2 and "choose from" in bad.stderr
