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


def make_model(cfg: ModelConfig, seed: int = 0):
    from sunfish.model.transformer import build_model

    torch.manual_seed(seed)
    return build_model(cfg).eval()


def replace(cfg, **kw):
    return dataclasses.replace(cfg, **kw)
