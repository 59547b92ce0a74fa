"""Sampling a noise-adapter model (VFM, process/vfm.py): one pass from the adapter's noise to tokens.

The prompt's positions hold their embeddings; every other position draws z = mu + s eps from the adapter
q_phi(z | prompt); the frozen flow map decodes all of them at once (argmax, or a draw at `temperature`). A
callback (trace, streaming) sees that single step.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from sunfish.config import SamplerConfig
from sunfish.process.vfm import NoiseAdapterLM
from sunfish.sample.continuous import gaussian
from sunfish.sample.draw import draw_tokens
from sunfish.sample.unmask import SampleResult, StepInfo


@torch.no_grad()
def vfm_generate(model: NoiseAdapterLM, canvas: torch.Tensor, fill_start: int, mask_id: int, cfg: SamplerConfig, *,
                 generator, suppress: Sequence[int] = (), callback: Callable[[StepInfo], None] | None = None) -> SampleResult:
    """Fill canvas (B, L) from column `fill_start` on in one flow-map pass."""
    if not bool((canvas[:, fill_start:] == mask_id).all()):
        raise ValueError("a VFM model generates after a prompt; it cannot fill masks inside a text")
    known = canvas != mask_id
    e = model.embed(torch.where(known, canvas, torch.zeros_like(canvas)))  # (B, L, D_base)
    mu, log_s = model.adapter(e, known)
    z = torch.where(known[..., None], e, mu + log_s.exp() * gaussian(e.shape, generator, e.device).to(e))
    logits = model.logits(z.to(next(model.parameters()).dtype)).float()  # (B, L, V)
    if suppress:
        logits[..., list(suppress)] = float("-inf")
    tokens = torch.where(known, canvas, draw_tokens(logits, cfg.temperature, generator))
    if callback is not None:
        callback(StepInfo(step=1, tokens=tokens, masked=torch.zeros_like(known), revealed=~known))
    return SampleResult(tokens=tokens, steps=1, nfe=1)
