"""AdamW with decay on matrices only, and the warm-up + cosine learning-rate schedule."""

from __future__ import annotations

import math

import torch

from sunfish.config import OptimConfig


def lr_scale(name: str, cfg: OptimConfig) -> float:
    """Layer-wise learning-rate multiplier of a parameter, by its name in the model."""
    if name.startswith(("embed.", "time.", "lm_head.")):
        return cfg.lr_embed
    if ".attn." in name:
        return cfg.lr_attn
    if ".mlp." in name:
        return cfg.lr_mlp
    return 1.0


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig, fused: bool = False) -> torch.optim.AdamW:
    """Matrices (ndim >= 2) with weight decay, vectors (norm gains, biases) without, split further by the
    layer-wise multipliers (embeddings, attention, MLP) when they differ; each group keeps its `lr_scale`."""
    groups: dict[tuple[float, float], list[torch.nn.Parameter]] = {}
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        decay = cfg.weight_decay if p.ndim >= 2 else 0.0
        groups.setdefault((decay, lr_scale(name.replace("_checkpoint_wrapped_module.", ""), cfg)), []).append(p)
    order = sorted(groups, key=lambda k: (-k[0], -k[1]))  # decayed groups first
    param_groups = [{"params": groups[k], "weight_decay": k[0], "lr_scale": k[1]} for k in order]
    return torch.optim.AdamW(
        param_groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, fused=fused or None
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
        group["lr"] = lr * group.get("lr_scale", 1.0)


class WeightEMA:
    """Exponential moving average of the weights, ema <- decay * ema + (1 - decay) * w after each step.

    The shadow tensors have the parameters' own type and layout (FSDP shards stay shards), keyed by the
    plain model's parameter names. `swap()` exchanges the averages and the live weights (validation runs on the
    averages between two swaps).
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.params = _named_params(model)
        self.shadow = {name: p.detach().clone().float() for name, p in self.params.items()}

    @torch.no_grad()
    def update(self) -> None:
        names = list(self.params)
        torch._foreach_lerp_([self.shadow[n] for n in names], [self.params[n].detach().float() for n in names], 1.0 - self.decay)

    @torch.no_grad()
    def swap(self) -> None:
        """Exchange the model's weights with the averages (call twice to restore)."""
        for name, p in self.params.items():
            held = p.detach().clone()
            p.copy_(self.shadow[name].to(p.dtype))
            self.shadow[name].copy_(held.float())


def _named_params(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    out: dict[str, torch.nn.Parameter] = {}
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if id(p) not in seen:
            seen.add(id(p))
            out[name.replace("_checkpoint_wrapped_module.", "")] = p
    return out
