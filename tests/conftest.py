"""Shared fixtures: tiny configs and the path to ../shared/corpora (skipped where absent)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from sunfish.config import ModelConfig

SHARED = Path(__file__).resolve().parents[2] / "shared" / "corpora"


def shared_corpus(relative: str) -> Path:
    """A file under ../shared/corpora, or skip: CI has it beside the checkout, a fresh clone does not."""
    path = SHARED / relative
    if not path.exists():
        pytest.skip(f"../shared/corpora/{relative} is absent (a fresh clone without ../shared); CI provides it")
    return path


@pytest.fixture
def tiny_model_cfg() -> ModelConfig:
    return ModelConfig(vocab_size=32, d_model=32, n_layers=2, n_heads=2, context=64)


# A few short English and Russian documents for tiny training runs.
TINY_DOCS = [
    "the cat sat on the mat. the dog ran to the park and the cat ran too.",
    "a little girl found a red ball in the garden. she was very happy.",
    "Маша нашла красный мяч в саду. Она была очень рада.",
    "the sun was warm and the birds sang in the tall green trees.",
] * 6


@pytest.fixture
def corpus(tmp_path) -> str:
    """TINY_DOCS written as a .txt corpus (documents separated by blank lines)."""
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(TINY_DOCS), encoding="utf-8")
    return str(path)


def run_metrics(run_dir: Path) -> list[dict]:
    """A run's metrics.jsonl without the machine-dependent figures (throughput, memory, MFU, system monitoring)."""
    import json

    from sunfish.training.monitor import SYSTEM_FIELDS

    lines = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for line in lines:
        for key in ("tokens_per_s", "memory_gib", "mfu", *SYSTEM_FIELDS):
            line.pop(key, None)
    return lines


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str):
    """benchmarks/NAME.py imported as module NAME (the benchmarks folder on sys.path: they import each other)."""
    import importlib.util
    import sys

    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


def cli_error(capsys, argv: list[str]) -> str:
    """Run `sunfish ARGV`, check it failed with exit 2 and one `sunfish: error:` line, return that line."""
    from sunfish.cli import main

    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sunfish: error: ") and "Traceback" not in err and len(err.splitlines()) == 1
    return err


def make_model(cfg: ModelConfig, seed: int = 0):
    from sunfish.model.transformer import build_model

    torch.manual_seed(seed)
    return build_model(cfg).eval()


def replace(cfg, **kw):
    return dataclasses.replace(cfg, **kw)


@pytest.fixture(scope="session")
def upstream(tmp_path_factory):
    """Tiny LLaDA and Dream folders made by the upstream code and what it computed on them (tests/public_models.py);
    skipped where ../shared/reference or its environment is missing."""
    from public_models import build

    return build(tmp_path_factory.mktemp("public"))
