"""The autoregressive baseline: the same backbone with causal attention, trained on next-token prediction.

Loss: mean over positions of -log p(x_{i+1} | x_<=i), which is also its exact per-token NLL, the
reference every diffusion result is compared with. `causal_warmup_loss` is the same loss on a bidirectional
network run under a causal mask (the causal warm-up of masked diffusion, process/curriculum.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sunfish.config import ProcessConfig
from sunfish.process.masked import LossOutput, scored_positions


def next_token_loss(model: torch.nn.Module, x0: torch.Tensor) -> LossOutput:
    """Mean next-token cross-entropy on x0 (B, L): L - 1 predictions per row."""
    logits = model(x0[:, :-1]).float()  # (B, L - 1, V)
    nll = F.cross_entropy(logits.flatten(0, 1), x0[:, 1:].flatten(), reduction="none")
    return LossOutput(loss=nll.mean(), masked_tokens=nll.numel(), nll_sum=nll.sum().detach())


def causal_warmup_loss(model: torch.nn.Module, x0: torch.Tensor) -> LossOutput:
    """Mean next-token cross-entropy on x0 (B, L) of any network run with a causal mask: L - 1 predictions per row,
    token i + 1 read from the raw state at i, which is output i + model.shift (so either layout works); a
    time-conditioned network sees t = 0 (clean text)."""
    B, L = x0.shape
    causal = torch.ones(L, L, dtype=torch.bool, device=x0.device).tril()
    t = torch.zeros(B, device=x0.device) if model.needs_time else None
    h = model.hidden(x0, t, attn_mask=causal)  # (B, L, D)
    logits = model.head(h[:, model.shift:L - 1 + model.shift]).float()  # (B, L - 1, V)
    nll = F.cross_entropy(logits.flatten(0, 1), x0[:, 1:].flatten(), reduction="none")
    return LossOutput(loss=nll.mean(), masked_tokens=nll.numel(), nll_sum=nll.sum().detach())


def causal_nats(model, x, cfg: ProcessConfig, mask_id: int, u: torch.Tensor, generator: torch.Generator,
                scored: torch.Tensor | None = None) -> torch.Tensor:
    """Exact sum of -log p(x_i | x_<i) over scored positions (default x[:, 1:]). x: (B, L) -> (B,)
    (The arguments after x match the Monte Carlo estimators' and are not used.)"""
    logits = model(x[:, :-1]).float()  # (B, L - 1, V)
    nll = F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten(), reduction="none").view(x.shape[0], -1)
    return (nll * scored_positions(x, scored)[:, 1:]).sum(1)
