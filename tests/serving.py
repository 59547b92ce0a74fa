"""Helpers for the serving tests: a small trained model and a real `sunfish serve` process on a free port."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--model.d_model=32", "--model.n_layers=1", "--model.n_heads=2", "--model.context=128",
         "--train.batch_size=4", "--train.val_every=0", "--data.val_fraction=0.2", "--data.tokenizer=bpe",
         "--data.bpe_vocab=300", "--data.synth_docs=400", "--no-progress"]  # byte-level BPE: any text, English or Russian


def needs_serve_extra() -> None:
    for name in ("fastapi", "uvicorn", "prometheus_client"):
        pytest.importorskip(name, reason="the serve extra is not installed (pip install -e .[serve])")


def train_small(out: Path, process: str = "masked", steps: int = 30) -> Path:
    """A small model trained for a few steps on the built-in stories (seconds on the CPU)."""
    from sunfish.cli import main

    assert main(["train", "--preset", "nano", "--process", process, "--out", str(out), "--steps", str(steps), *SMALL]) == 0
    return out


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    lines: list[str] = field(default_factory=list)  # its stdout and stderr

    def stop(self, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.terminate()
        return self.process.wait(timeout)

    def request(self, method: str, path: str, body: bytes | dict | None = None, headers: dict | None = None,
                timeout: float = 60.0) -> tuple[int, dict, dict]:
        """(status, headers, JSON body) of one plain HTTP request."""
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, dict(r.headers), json.loads(r.read() or b"null")
        except urllib.error.HTTPError as err:
            return err.code, dict(err.headers), json.loads(err.read() or b"null")


def start_server(model: Path, *args: str, timeout: float = 90.0) -> Server:
    """`sunfish serve MODEL --port 0 ARGS` in a subprocess; returns once it listens."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, "-m", "sunfish", "serve", str(model), "--port", "0", "--device", "cpu",
                                *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    server = Server(url="", process=process)
    found = threading.Event()

    def read():
        for line in process.stdout:
            server.lines.append(line)
            match = re.search(r" at (http://\S+)/v1,", line)
            if match and not found.is_set():
                server.url = match.group(1)
                found.set()
        found.set()

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + timeout
    while not found.wait(0.2):
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError("the server did not start:\n" + "".join(server.lines))
    if not server.url:
        raise RuntimeError("the server exited:\n" + "".join(server.lines))
    return server
