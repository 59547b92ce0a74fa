"""Drawing tokens from logits: top-k and top-p filtering, then greedy or Gumbel-max sampling.

Gumbel noise is float64: low-precision Gumbel noise degrades samples at low temperature, as LLaDA notes.
"""

from __future__ import annotations

import torch

from sunfish.sample.batch import Generators, uniform


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Set logits outside the top-k and outside the top-p nucleus to -inf. logits: (..., V)."""
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs > top_p  # keeps the token that crosses top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


def draw_tokens(logits: torch.Tensor, temperature: float, generator: Generators,
                rows: torch.Tensor | None = None) -> torch.Tensor:
    """Greedy at temperature 0, else Gumbel-max with float64 noise: argmax(l / T + g). (B, ..., V) -> (B, ...).

    With one generator per row, only the rows where `rows` (B,) is True draw noise (see batch.uniform)."""
    if temperature <= 0:
        return logits.argmax(-1)
    u = uniform(tuple(logits.shape), generator, dtype=torch.float64, rows=rows)
    gumbel = -torch.log(-torch.log(u.clamp_min(1e-300)))
    return (logits.double() / temperature + gumbel.to(logits.device)).argmax(-1)


def draw_step(logits: torch.Tensor, candidates: torch.Tensor, cfg, generator: Generators):
    """An unmasking step's draw: rows with masks (B,), filtered logits (B, n, V), drawn tokens (B, n) and
    probabilities (B, n, V), float64 with `cfg.fp64_confidence` (Fast-dLLM), else float32 (LLaDA, Dream). Only
    rows with masks (candidates (B, n)) draw noise. `cfg`: the SamplerConfig."""
    rows = candidates.any(-1)  # (B,)
    logits = filter_logits(logits, cfg.top_k, cfg.top_p)
    drawn = draw_tokens(logits, cfg.temperature, generator, rows)  # (B, n)
    return rows, logits, drawn, (logits.double() if cfg.fp64_confidence else logits).softmax(-1)
