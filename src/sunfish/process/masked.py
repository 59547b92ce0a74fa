"""Absorbing-state (masked) diffusion: forward corruption and training losses (MDLM / LLaDA).

Forward process: each token independently becomes [MASK] with probability 1 - alpha(t).
NELBO (Sahoo et al. 2024, eq. 10), normalised per token:
    L = E_t [ w(t) / L * sum over masked i of -log p_theta(x_i | z_t) ],   w(t) = -alpha'(t) / (1 - alpha(t)).
Clean positions carry no loss. The plain masked cross-entropy (micro-dllm) averages -log p over masked
positions without the weight.

Conditional training (`prompt_prob`): a fraction of sequences keep a random-length prefix clean as the
prompt; it is the condition, never corrupted or scored (LLaDA's SFT). Of those, a fraction `cond_dropout`
has the prompt replaced by [MASK] instead (still unscored), which teaches the unconditional model that
classifier-free guidance needs at sampling time (sample/unmask.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sunfish.config import LossKind, ProcessConfig
from sunfish.process.schedules import Schedule


@dataclass(frozen=True)
class LossOutput:
    loss: torch.Tensor  # scalar to minimise
    masked_tokens: int  # positions scored in this batch
    nll_sum: torch.Tensor  # sum of -log p over masked positions (unweighted), for diagnostics


def sample_times(batch: int, cfg: ProcessConfig, generator: torch.Generator) -> torch.Tensor:
    """Diffusion times (B,) in [eps, 1]; antithetic: (u + i / B) mod 1, one uniform u for the batch.

    With `discrete_steps` = T the times lie on the grid {1, ..., T} / T.
    """
    device = generator.device
    if cfg.antithetic:
        u = torch.rand(1, generator=generator, device=device)
        u = (u + torch.arange(batch, device=device) / batch) % 1.0
    else:
        u = torch.rand(batch, generator=generator, device=device)
    if cfg.discrete_steps > 0:
        return torch.ceil(u.clamp_min(1e-6) * cfg.discrete_steps) / cfg.discrete_steps
    return cfg.eps + (1.0 - cfg.eps) * u


def corrupt(
    x0: torch.Tensor, t: torch.Tensor, schedule: Schedule, mask_id: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask each token of x0 (B, L) with probability 1 - alpha(t), t per sequence (B,) or per token (B, L).
    Returns (z_t, masked), both (B, L)."""
    u = torch.rand(x0.shape, generator=generator, device=generator.device).to(x0.device)  # (B, L)
    alpha = schedule.alpha(t.to(x0.device))
    masked = u < 1.0 - (alpha[:, None] if alpha.dim() == 1 else alpha)
    return torch.where(masked, torch.full_like(x0, mask_id), x0), masked


def draw_prompts(batch: int, length: int, cfg: ProcessConfig, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Which positions are prompt (B, L) and which rows drop theirs (B,).

    With probability `prompt_prob` a row gets a prompt of length uniform in 1..L-1 (the rest is the response
    to denoise); with probability `cond_dropout` such a prompt is dropped, i.e. shown as [MASK].
    """
    device = generator.device
    has = torch.rand(batch, generator=generator, device=device) < cfg.prompt_prob  # (B,)
    n = torch.randint(1, max(length, 2), (batch,), generator=generator, device=device)  # (B,)
    prompt = (torch.arange(length, device=device)[None, :] < n[:, None]) & has[:, None]  # (B, L)
    dropped = has & (torch.rand(batch, generator=generator, device=device) < cfg.cond_dropout)
    return prompt, dropped


def condition(x0: torch.Tensor, zt: torch.Tensor, masked: torch.Tensor, cfg: ProcessConfig, mask_id: int,
              generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Apply `draw_prompts` to a corrupted batch: prompt positions hold x0, or [MASK] in dropped rows, and are
    not scored. Returns (z_t, scored (B, L), prompt (B, L))."""
    prompt, dropped = draw_prompts(x0.shape[0], x0.shape[1], cfg, generator)
    prompt, dropped = prompt.to(x0.device), dropped.to(x0.device)
    shown = torch.where(dropped[:, None], torch.full_like(x0, mask_id), x0)
    return torch.where(prompt, shown, zt), masked & ~prompt, prompt


def masked_diffusion_loss(
    model: torch.nn.Module,
    x0: torch.Tensor,
    cfg: ProcessConfig,
    mask_id: int,
    generator: torch.Generator,
) -> LossOutput:
    """Draw t, corrupt x0 (B, L), and score the model on the masked positions only.

    The output head runs only on masked positions, which saves most of the head's cost at low t.
    """
    if cfg.cond_dropout > 0 and cfg.prompt_prob == 0:
        raise ValueError("process.cond_dropout drops prompts, so it needs process.prompt_prob > 0")
    schedule = Schedule(cfg.schedule, cfg.eps)
    B, L = x0.shape
    t = sample_times(B, cfg, generator).to(x0.device)  # (B,)
    zt, masked = corrupt(x0, t, schedule, mask_id, generator)
    n_tokens = B * L  # tokens the NELBO is normalised by: all but the prompts
    if cfg.prompt_prob > 0:
        zt, masked, prompt = condition(x0, zt, masked, cfg, mask_id, generator)
        n_tokens = max(n_tokens - int(prompt.sum()), 1)
    h = model.hidden(zt, t if model.needs_time else None)  # (B, L, D)
    logits = model.head(h[masked]).float()  # (N, V)
    nll = F.cross_entropy(logits, x0[masked], reduction="none")  # (N,)
    n = int(masked.sum())
    if cfg.loss is LossKind.NELBO:
        w = schedule.weight(t)[:, None].expand(B, L)[masked]  # (N,)
        loss = (w * nll).sum() / n_tokens
    else:
        loss = nll.sum() / max(n, 1)
    return LossOutput(loss=loss, masked_tokens=n, nll_sum=nll.sum().detach())
