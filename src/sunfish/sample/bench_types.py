"""What the benchmark modules share without importing each other: the one-sentence input error and a table row's
method (sample/bench.py runs them; sample/bench_latent.py adds the latent models' methods)."""

from __future__ import annotations

from dataclasses import dataclass

from sunfish.config import SamplerConfig


class BenchError(ValueError):
    """A benchmark or tuning input a person can fix; the message is one sentence."""


@dataclass(frozen=True)
class Method:
    name: str  # row label
    model: str  # which checkpoint: 'diffusion', 'block' or 'ar'
    cfg: SamplerConfig  # the sampler setting (its length is replaced per run)
    reference: str | None  # the method whose output this one's agreement is measured against
    own_steps: bool = False  # keep cfg.steps at every length (latent rows: denoising steps), else steps = length
