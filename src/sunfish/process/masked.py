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
from sunfish.process.curriculum import FINAL, Stage
from sunfish.process.schedules import MaskSchedule


@dataclass(frozen=True)
class LossOutput:
    loss: torch.Tensor  # scalar to minimise
    masked_tokens: int  # positions scored in this batch
    nll_sum: torch.Tensor  # sum of -log p over masked positions (unweighted), for diagnostics


def sample_times(batch: int, cfg: ProcessConfig, generator: torch.Generator, t_max: float = 1.0) -> torch.Tensor:
    """Diffusion times (B,) in [eps, t_max]; antithetic: (u + i / B) mod 1, one uniform u for the batch.

    With `discrete_steps` = T the times lie on the grid {1, ..., ceil(T t_max)} / T. (t_max < 1: the mask-rate
    curriculum, process/curriculum.py.)
    """
    device = generator.device
    if cfg.antithetic:
        u = torch.rand(1, generator=generator, device=device)
        u = (u + torch.arange(batch, device=device) / batch) % 1.0
    else:
        u = torch.rand(batch, generator=generator, device=device)
    if cfg.discrete_steps > 0:
        return torch.ceil(u.clamp_min(1e-6) * cfg.discrete_steps * t_max) / cfg.discrete_steps
    return cfg.eps + (t_max - cfg.eps) * u


def corrupt(
    x0: torch.Tensor, t: torch.Tensor, schedule: MaskSchedule, mask_id: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask each token of x0 (B, L) with probability 1 - alpha(t), t per sequence (B,) or per token (B, L).
    Returns (z_t, masked), both (B, L)."""
    u = torch.rand(x0.shape, generator=generator, device=generator.device).to(x0.device)  # (B, L)
    alpha = schedule.alpha(t.to(x0.device))
    masked = u < 1.0 - (alpha[:, None] if alpha.dim() == 1 else alpha)
    return torch.where(masked, torch.full_like(x0, mask_id), x0), masked


def draw_prompts(batch: int, length: int, prob: float, generator: torch.Generator) -> torch.Tensor:
    """Which positions are prompt (B, L): with probability `prob` a row gets a clean prefix of length uniform
    in 1..L-1 (the rest is the response to denoise). Shared by every process that trains conditionally."""
    device = generator.device
    has = torch.rand(batch, generator=generator, device=device) < prob  # (B,)
    n = torch.randint(1, max(length, 2), (batch,), generator=generator, device=device)  # (B,)
    return (torch.arange(length, device=device)[None, :] < n[:, None]) & has[:, None]  # (B, L)


def drop_prompts(prompt: torch.Tensor, prob: float, generator: torch.Generator) -> torch.Tensor:
    """Which rows (B,) of those with a prompt (B, L) show it as [MASK] (probability `prob`): the unconditional
    examples classifier-free guidance needs."""
    return prompt.any(1) & (torch.rand(prompt.shape[0], generator=generator, device=generator.device) < prob)


def condition(x0: torch.Tensor, zt: torch.Tensor, masked: torch.Tensor, cfg: ProcessConfig, mask_id: int,
              generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw prompts for a corrupted batch: prompt positions hold x0, or [MASK] in the rows whose prompt is dropped
    (probability `cond_dropout`), and are not scored. Returns (z_t, scored (B, L), prompt (B, L))."""
    prompt = draw_prompts(x0.shape[0], x0.shape[1], cfg.prompt_prob, generator)
    dropped = drop_prompts(prompt, cfg.cond_dropout, generator)
    prompt, dropped = prompt.to(x0.device), dropped.to(x0.device)
    shown = torch.where(dropped[:, None], torch.full_like(x0, mask_id), x0)
    return torch.where(prompt, shown, zt), masked & ~prompt, prompt


def nelbo(nll: torch.Tensor, weight: torch.Tensor, n_tokens: int, kind: LossKind) -> torch.Tensor:
    """The masked-diffusion objective from the -log p of the N masked positions (N,) and their weights w(t) (N,):
    NELBO normalised per token, sum(w nll) / n_tokens, or the plain mean cross-entropy over masked positions."""
    if kind is LossKind.NELBO:
        return (weight * nll).sum() / n_tokens
    return nll.sum() / max(nll.numel(), 1)


def masked_diffusion_loss(
    model: torch.nn.Module,
    x0: torch.Tensor,
    cfg: ProcessConfig,
    mask_id: int,
    generator: torch.Generator,
    stage: Stage = FINAL,
) -> LossOutput:
    """Draw t (up to the stage's t_max), corrupt x0 (B, L), and score the model on the masked positions only.

    The output head runs only on masked positions, which saves most of the head's cost at low t.
    """
    schedule = MaskSchedule(cfg.mask_schedule, cfg.eps)
    B, L = x0.shape
    t = sample_times(B, cfg, generator, stage.t_max).to(x0.device)  # (B,)
    zt, masked = corrupt(x0, t, schedule, mask_id, generator)
    n_tokens = B * L  # tokens the NELBO is normalised by: all but the prompts
    if cfg.prompt_prob > 0:
        zt, masked, prompt = condition(x0, zt, masked, cfg, mask_id, generator)
        n_tokens = max(n_tokens - int(prompt.sum()), 1)
    h = model.hidden(zt, t if model.needs_time else None)  # (B, L, D)
    logits = model.head(h[masked]).float()  # (N, V)
    nll = F.cross_entropy(logits, x0[masked], reduction="none")  # (N,)
    w = schedule.weight(t)[:, None].expand(B, L)[masked]  # (N,)
    return LossOutput(loss=nelbo(nll, w, n_tokens, cfg.loss), masked_tokens=int(masked.sum()), nll_sum=nll.sum().detach())


# ---- likelihood: one-sample estimates of -log p(x) per sequence --------------------------------------


def times_and_weights(u: torch.Tensor, cfg: ProcessConfig, schedule: MaskSchedule) -> tuple[torch.Tensor, torch.Tensor]:
    """Diffusion times and NELBO weights (both shaped like u) from uniforms u in [0, 1). With T discrete steps
    the weight is T (alpha(s) - alpha(t)) / (1 - alpha(t)), s = t - 1/T (MDLM eq. 8)."""
    if cfg.discrete_steps > 0:
        T = cfg.discrete_steps
        t = torch.ceil(u.clamp_min(1e-6) * T) / T
        a_t, a_s = schedule.alpha(t), schedule.alpha(t - 1.0 / T)
        return t, T * (a_s - a_t) / (1.0 - a_t).clamp_min(1e-12)
    t = cfg.eps + (1.0 - cfg.eps) * u
    return t, schedule.weight(t)


def per_row(values: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """Sum of `values` (N,) into the rows of the True entries of `where` (B, L). -> (B,)"""
    rows = where.nonzero()[:, 0]
    return torch.zeros(where.shape[0], device=values.device, dtype=values.dtype).index_add_(0, rows, values)


def scored_positions(x: torch.Tensor, scored: torch.Tensor | None) -> torch.Tensor:
    """Positions whose tokens are scored (B, L): `scored`, or all but the first of each row."""
    if scored is not None:
        return scored
    everything = torch.ones_like(x, dtype=torch.bool)
    everything[:, 0] = False
    return everything


def masked_hidden(model, z: torch.Tensor, x: torch.Tensor, t: torch.Tensor, cfg: ProcessConfig) -> torch.Tensor:
    """Hidden states (B, L, D) of the corrupted z (B, L) at times t (B,); the clean x is not seen."""
    return model.hidden(z, t if model.needs_time else None)


def masked_scores(model, z: torch.Tensor, x: torch.Tensor, t: torch.Tensor, where: torch.Tensor,
                  cfg: ProcessConfig) -> torch.Tensor:
    """-log p of the tokens of x (B, L) at `where` (B, L) (N,), given the corrupted z (B, L) at times t (B,)."""
    h = masked_hidden(model, z, x, t, cfg)  # (B, L, D)
    return F.cross_entropy(model.head(h[where]).float(), x[where], reduction="none")  # (N,)


def masked_nats(model, x, cfg: ProcessConfig, mask_id: int, u: torch.Tensor, generator: torch.Generator,
                scored: torch.Tensor | None = None) -> torch.Tensor:
    """One-sample NELBO (nats) of x[scored] given the rest (default: x[:, 1:] given x[:, 0]) under
    absorbing-state diffusion, t from u (B,); only scored positions are corrupted. x: (B, L) -> (B,)

    -log p(x) <= E_t[ w(t) sum over masked i of -log p(x_i | z_t) ], w(t) = -alpha'(t) / (1 - alpha(t))
    (MDLM, Sahoo et al. 2024, eq. 10)."""
    schedule = MaskSchedule(cfg.mask_schedule, cfg.eps)
    t, w = times_and_weights(u, cfg, schedule)  # (B,), (B,)
    zt, masked = corrupt(x, t, schedule, mask_id, generator)  # (B, L)
    masked &= scored_positions(x, scored)
    zt = torch.where(masked, zt, x)
    return w.float() * per_row(masked_scores(model, zt, x, t, masked, cfg), masked)
