"""The upstream code of LLaDA, Fast-dLLM and Dream (../shared/reference) as test oracles.

It needs transformers 4.46 (it does not import under transformers 5), so it runs in a virtual environment of
its own, `.venv-oracle` beside `.venv` (made once: `pip install torch==2.13.0 transformers==4.46.3 einops
numpy`, about 40 s), in a subprocess: `run_oracle(code, **inputs)` runs a Python snippet there with the
reference folder on sys.path and `inputs` as variables, and returns the dict the snippet assigns to `result`
(tensors, numbers, strings; passed through torch.save). Tests skip, with the reason, where ../shared/reference
is absent (a fresh clone) or the environment cannot be built.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from filelock import FileLock

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT.parent / "shared" / "reference"
ENV = ROOT / ".venv-oracle"
PACKAGES = ["torch==2.13.0", "transformers==4.46.3", "einops", "numpy"]
WORKER = Path(__file__).with_name("oracle_worker.py")


def _python() -> Path:
    return ENV / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")


def _build() -> str | None:
    """Create the environment unless it is there; the reason it cannot be made, or None."""
    ready = ENV / ".ready"
    if ready.is_file():
        return None
    ENV.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(ROOT / ".venv-oracle.lock")):  # one test session builds it; the others wait
        if ready.is_file():
            return None
        steps = [[sys.executable, "-m", "venv", str(ENV)],
                 [str(_python()), "-m", "pip", "install", "-q", *PACKAGES]]
        for step in steps:
            done = subprocess.run(step, capture_output=True, text=True)
            if done.returncode != 0:
                return f"the oracle environment could not be built ({' '.join(step[:4])}...): {done.stderr[-300:]}"
        ready.write_text("ok\n")
    return None


def oracle_or_skip() -> Path:
    """The oracle environment's python, or pytest.skip with the reason."""
    if not REFERENCE.is_dir():
        pytest.skip("../shared/reference is absent (a fresh clone without ../shared); CI provides it")
    reason = _build()
    if reason:
        pytest.skip(reason)
    return _python()


def run_oracle(code: str, **inputs) -> dict:
    """Run `code` in the oracle environment (see the module docstring) and return its `result` dict."""
    python = oracle_or_skip()
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "in.pt", Path(tmp) / "out.pt"
        torch.save({"code": code, "inputs": inputs}, src)
        done = subprocess.run([str(python), str(WORKER), str(REFERENCE), str(src), str(out)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"the oracle failed:\n{done.stderr[-3000:]}")
        return torch.load(out, weights_only=False)
