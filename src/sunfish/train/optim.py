"""AdamW with decay on matrices only, and the warm-up + cosine learning-rate schedule."""

from __future__ import annotations

import math

import torch

from sunfish.config import OptimConfig


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig, fused: bool = False) -> torch.optim.AdamW:
    """Two groups: matrices (ndim >= 2) with weight decay, vectors (norm gains, biases) without."""
    params = {id(p): p for p in model.parameters() if p.requires_grad}.values()
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(
        groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, fused=fused or None
    )


def lr_at(step: int, total: int, cfg: OptimConfig) -> float:
    """Learning rate for optimiser step `step` (0-based) of `total`.

    Linear warm-up from lr / warmup to lr over `warmup_steps`, then cosine decay to min_lr_ratio * lr at
    the last step.
    """
    warmup = min(cfg.warmup_steps, max(total - 1, 0))
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    span = max(total - 1 - warmup, 1)
    progress = min(max(step - warmup, 0) / span, 1.0)
    floor = cfg.min_lr_ratio * cfg.lr
    return floor + (cfg.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
