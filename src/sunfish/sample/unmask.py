"""Iterative unmasking: the sampler for masked diffusion LMs.

`unmask` fills every [MASK] position of a canvas in `cfg.steps` network evaluations. Positions are
processed in semi-autoregressive blocks of `block_length` tokens (LLaDA, Nie et al. 2025), one block
finished before the next starts; the steps are shared evenly among blocks. In each step the model
predicts every masked position of the active block, and

* FIXED schedule (LLaDA): about n / N of the block's n masks are committed per step (the remainder goes
  to the first steps), the ones the policy ranks highest: confidence (probability of the drawn token),
  margin (top-1 minus top-2 probability), negative entropy, or random order. The rest stay masked
  ("low-confidence remasking").
* ANCESTRAL schedule (MDLM, Sahoo et al. 2024): from time t to s < t each mask is revealed with
  probability (alpha(s) - alpha(t)) / (1 - alpha(t)); the last step reveals the rest.

Committed tokens never change ("carry-over unmasking"); prompt and context tokens are never touched.
Tokens are drawn with temperature, top-k and top-p through float64 Gumbel noise (low-precision Gumbel
noise degrades samples, as LLaDA notes). A callback receives a `StepInfo` after each step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from sunfish.config import Policy, SamplerConfig, StepSchedule
from sunfish.process.schedules import Schedule


@dataclass(frozen=True)
class StepInfo:
    step: int  # 1-based step number
    tokens: torch.Tensor  # (B, L) canvas after this step
    masked: torch.Tensor  # (B, L) still masked
    revealed: torch.Tensor  # (B, L) committed in this step


@dataclass(frozen=True)
class SampleResult:
    tokens: torch.Tensor  # (B, L) the filled canvas
    steps: int  # denoising steps taken
    nfe: int  # network function evaluations


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


def draw_tokens(logits: torch.Tensor, temperature: float, generator: torch.Generator) -> torch.Tensor:
    """Greedy at temperature 0, else Gumbel-max with float64 noise: argmax(l / T + g). (..., V) -> (...)."""
    if temperature <= 0:
        return logits.argmax(-1)
    u = torch.rand(logits.shape, generator=generator, device=generator.device, dtype=torch.float64)
    gumbel = -torch.log(-torch.log(u.clamp_min(1e-300)))
    return (logits.double() / temperature + gumbel.to(logits.device)).argmax(-1)


def policy_scores(probs: torch.Tensor, drawn: torch.Tensor, policy: Policy, generator: torch.Generator) -> torch.Tensor:
    """Higher = reveal sooner. probs (B, n, V), drawn (B, n) -> (B, n)."""
    if policy is Policy.CONFIDENCE:
        return probs.gather(-1, drawn[..., None]).squeeze(-1)
    if policy is Policy.MARGIN:
        top2 = probs.topk(2, dim=-1).values
        return top2[..., 0] - top2[..., 1]
    if policy is Policy.ENTROPY:
        return (probs * probs.clamp_min(1e-30).log()).sum(-1)
    return torch.rand(drawn.shape, generator=generator, device=generator.device).to(probs.device)


def transfer_counts(n_masked: torch.Tensor, steps: int) -> torch.Tensor:
    """LLaDA's per-step reveal counts: n // N each, the remainder spread over the first steps. (B,) -> (B, N)."""
    base = n_masked // steps
    extra = n_masked % steps
    return base[:, None] + (torch.arange(steps, device=n_masked.device)[None, :] < extra[:, None]).long()


def top_ranked(scores: torch.Tensor, candidates: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Boolean (B, n): the k[b] highest-scoring candidates of each row (ties: lower position first)."""
    scores = scores.masked_fill(~candidates, float("-inf"))
    order = scores.argsort(dim=-1, descending=True, stable=True)
    ranks = torch.empty_like(order).scatter_(-1, order, torch.arange(order.shape[-1], device=order.device).expand_as(order))
    return (ranks < k[:, None]) & candidates


def _blocks(masked: torch.Tensor, block_length: int) -> list[tuple[int, int]]:
    """[start, end) column ranges covering all masked positions, in order; blocks without masks are skipped."""
    any_masked = masked.any(0)
    cols = any_masked.nonzero().flatten()
    lo, hi = int(cols[0]), int(cols[-1]) + 1
    size = block_length if block_length > 0 else hi - lo
    return [(s, min(s + size, hi)) for s in range(lo, hi, size) if any_masked[s : s + size].any()]


def _steps_per_block(total: int, n_blocks: int) -> list[int]:
    if total < n_blocks:
        raise ValueError(f"{total} steps cannot cover {n_blocks} blocks; use at least one step per block or a larger block_length")
    return [total // n_blocks + (1 if i < total % n_blocks else 0) for i in range(n_blocks)]


@torch.no_grad()
def unmask(
    model: torch.nn.Module,
    canvas: torch.Tensor,
    mask_id: int,
    cfg: SamplerConfig,
    *,
    generator: torch.Generator,
    schedule: Schedule,
    callback: Callable[[StepInfo], None] | None = None,
) -> SampleResult:
    """Fill the [MASK] positions of `canvas` (B, L); every other position is kept as given."""
    x = canvas.clone()
    masked = x == mask_id
    if not masked.any():
        return SampleResult(tokens=x, steps=0, nfe=0)
    if cfg.steps < 1:
        raise ValueError("the sampler needs at least 1 step")
    blocks = _blocks(masked, cfg.block_length)
    budget = _steps_per_block(min(cfg.steps, int(masked.sum(1).max())), len(blocks))
    step = 0
    for (lo, hi), n_steps in zip(blocks, budget):
        n_steps = max(1, min(n_steps, int((x[:, lo:hi] == mask_id).sum(1).max())))
        counts = transfer_counts((x[:, lo:hi] == mask_id).sum(1), n_steps)  # (B, n_steps)
        for k in range(n_steps):
            step += 1
            x, revealed = _denoise_step(model, x, mask_id, lo, hi, k, n_steps, counts[:, k], cfg, generator, schedule)
            if callback is not None:
                callback(StepInfo(step=step, tokens=x, masked=x == mask_id, revealed=revealed))
    return SampleResult(tokens=x, steps=step, nfe=step)


def _denoise_step(model, x, mask_id, lo, hi, k, n_steps, count, cfg, generator, schedule):
    """One network evaluation; commits positions of block [lo, hi). Returns (x, revealed (B, L))."""
    masked = x == mask_id  # (B, L)
    t = schedule.time_of_alpha(1.0 - masked.float().mean(1)) if model.needs_time else None  # (B,)
    logits = model.head(model.hidden(x, t)[:, lo:hi]).float()  # (B, n, V)
    logits[..., mask_id] = float("-inf")
    logits = filter_logits(logits, cfg.top_k, cfg.top_p)
    drawn = draw_tokens(logits, cfg.temperature, generator)  # (B, n)
    candidates = masked[:, lo:hi]
    if cfg.schedule is StepSchedule.ANCESTRAL:
        t_now = torch.tensor(1.0 - k / n_steps, dtype=torch.float64)
        t_next = torch.tensor(1.0 - (k + 1) / n_steps, dtype=torch.float64)
        a_now, a_next = schedule.alpha(t_now), schedule.alpha(t_next)
        p = 1.0 if k == n_steps - 1 else float((a_next - a_now) / (1.0 - a_now).clamp_min(1e-12))
        u = torch.rand(candidates.shape, generator=generator, device=generator.device).to(x.device)
        chosen = candidates & (u < p)
    else:
        scores = policy_scores(logits.softmax(-1), drawn, cfg.policy, generator)
        chosen = top_ranked(scores, candidates, count)
    revealed = torch.zeros_like(masked)
    revealed[:, lo:hi] = chosen
    x = x.clone()
    x[:, lo:hi] = torch.where(chosen, drawn, x[:, lo:hi])
    return x, revealed
