"""The autoregressive baseline: the same backbone with causal attention, trained on next-token prediction.

Loss: mean over positions of -log p(x_{i+1} | x_<=i), which is also its exact per-token NLL, the
reference every diffusion result is compared with.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sunfish.config import AttentionKind
from sunfish.process.masked import LossOutput


def next_token_loss(model: torch.nn.Module, x0: torch.Tensor) -> LossOutput:
    """Mean next-token cross-entropy on x0 (B, L): L - 1 predictions per row."""
    if model.cfg.attention is not AttentionKind.CAUSAL:
        raise ValueError("the autoregressive objective needs causal attention; set --model.attention=causal or use --objective ar")
    logits = model(x0[:, :-1]).float()  # (B, L - 1, V)
    nll = F.cross_entropy(logits.flatten(0, 1), x0[:, 1:].flatten(), reduction="none")
    return LossOutput(loss=nll.mean(), masked_tokens=nll.numel(), nll_sum=nll.sum().detach())
