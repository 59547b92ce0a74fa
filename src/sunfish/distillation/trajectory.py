"""Trajectory distillation with certainty forcing (dParallel, arXiv 2509.26488; d3LLM's pseudo-trajectories).

The teacher decodes each training prompt (the first `prompt_length` tokens of a training window) greedily with
Sunfish's own sampler: `gen_length` tokens, one per step, the most confident masked position first, in
semi-autoregressive blocks of `block_length` (block models: their trained blocks), with the approximate key/value
cache of the settings if asked. The rollout records the tokens y and the step at which each position was committed
(its rank; -1 for the prompt). Rollouts are computed in batches, once per prompt and teacher, and kept (`Rollouts`);
with a pool (`distill.pool` = N) N windows are drawn once, their prompts rolled out at the round's start, and each
training row is one of those N rollouts, drawn uniformly (a corpus too large to meet a prompt twice then still
costs the teacher N rollouts a round, not one per training row).

A training state is a point on that trajectory: for a ratio r ~ U[min_ratio, max_ratio] the round(r n) positions
committed last are masked (`adapt/trajectory.py: latest_committed`), which is exactly a canvas the sampler passes
through (earlier blocks finished, the active block partly decoded, later blocks masked). With M the masked
positions and p the student's prediction there, the loss is

    L = 1/|M| sum over i in M of -log p_i(y_i)  +  w * 1/|C| sum over i in C of H(p_i),
    C = {i in M : argmax p_i = y_i},  H = entropy,

cross-entropy toward the teacher's greedy tokens plus dParallel's certainty forcing: the entropy of the predictions
the student already gets right is pushed down, so that committed positions become confident early and a threshold
sampler commits many of them in one step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from sunfish.adapt.align import sequence_key
from sunfish.adapt.trajectory import latest_committed
from sunfish.config import CommitRule, DistillConfig, Policy, ProcessConfig, SamplerConfig
from sunfish.distillation.sdtt import log_probs
from sunfish.process.masked import LossOutput
from sunfish.process.schedules import MaskSchedule
from sunfish.registry import DecodeJob, decode, spec_of
from sunfish.sample.unmask import StepInfo


def rollout_sampler(cfg: DistillConfig, process: ProcessConfig) -> SamplerConfig:
    """Greedy, one token per step, confidence order, in blocks of cfg.block_length (block models: their own)."""
    fixed = spec_of(process).fixed_blocks
    return SamplerConfig(length=cfg.gen_length, steps=cfg.gen_length, rule=CommitRule.FIXED, policy=Policy.CONFIDENCE,
                         temperature=0.0, block_length=0 if fixed else cfg.block_length,
                         cache=SamplerConfig().cache if fixed else cfg.cache, stop_at_eos=False)


@torch.no_grad()
def rollout(teacher, prompts: torch.Tensor, cfg: DistillConfig, process: ProcessConfig, mask_id: int,
            suppress: tuple[int, ...] = ()) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's greedy continuations of prompts (B, P): tokens (B, P + G) and commit ranks (B, P + G), -1 on
    the prompt, 0 for the first position committed."""
    B, P = prompts.shape
    canvas = torch.cat([prompts, torch.full((B, cfg.gen_length), mask_id, dtype=prompts.dtype,
                                            device=prompts.device)], dim=1)  # (B, P + G)
    order = torch.full(canvas.shape, -1, dtype=torch.long, device=prompts.device)

    def record(info: StepInfo) -> None:
        order[info.revealed] = info.step - 1

    generator = torch.Generator(prompts.device).manual_seed(0)  # greedy: never drawn from
    job = DecodeJob(mask_id=mask_id, process=process, generator=generator, callback=record, suppress=suppress)
    result = decode(teacher, canvas, P, rollout_sampler(cfg, process), job)
    return result.tokens, order


@dataclass
class Rollouts:
    """The teacher's rollouts by prompt (the hash of its ids), computed in batches for the prompts not yet seen."""

    cfg: DistillConfig
    process: ProcessConfig
    mask_id: int
    suppress: tuple[int, ...] = ()
    found: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)  # key -> (tokens, order)
    pool: tuple[torch.Tensor, torch.Tensor] | None = None  # (tokens (N, T), order (N, T)) with distill.pool = N

    def clear(self) -> None:
        self.found.clear()
        self.pool = None

    def fill_pool(self, teacher, prompts: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Roll the prompts (N, P) out, `batch` at a time, as the pool; returns (tokens, order), each (N, P + G)."""
        parts = [rollout(teacher, prompts[i : i + batch], self.cfg, self.process, self.mask_id, self.suppress)
                 for i in range(0, prompts.shape[0], batch)]
        self.pool = (torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))
        return self.pool

    def draw(self, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """`batch` rollouts of the pool drawn uniformly: (tokens, order), each (batch, P + G)."""
        tokens, order = self.pool
        pick = torch.randint(tokens.shape[0], (batch,), generator=generator, device=generator.device).to(tokens.device)
        return tokens[pick], order[pick]

    def __len__(self) -> int:
        return len(self.found)

    def of(self, teacher, prompts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens, order), each (B, P + G), for prompts (B, P)."""
        keys = [sequence_key(row) for row in prompts]
        missing = sorted({k: b for b, k in enumerate(keys) if k not in self.found}.values())
        if missing:
            tokens, order = rollout(teacher, prompts[missing], self.cfg, self.process, self.mask_id, self.suppress)
            for b, row_tokens, row_order in zip(missing, tokens, order):
                self.found[keys[b]] = (row_tokens, row_order)
        rows = [self.found[k] for k in keys]
        return (torch.stack([r[0] for r in rows]).to(prompts.device),
                torch.stack([r[1] for r in rows]).to(prompts.device))


def trajectory_states(order: torch.Tensor, cfg: DistillConfig, generator: torch.Generator) -> torch.Tensor:
    """Masks (B, T) of states along the trajectories of commit ranks `order` (B, T): the latest-committed share r of
    each row's generated positions, r ~ U[min_ratio, max_ratio], at least one position."""
    B = order.shape[0]
    u = torch.rand(B, generator=generator, device=generator.device).to(order.device)
    ratio = cfg.min_ratio + (cfg.max_ratio - cfg.min_ratio) * u  # (B,)
    n = (order >= 0).sum(-1).clamp_min(1)  # (B,)
    return latest_committed(order, torch.maximum(ratio, 1.0 / n))


def certainty_forcing_loss(logp: torch.Tensor, target: torch.Tensor, weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(cross-entropy toward target (N,) plus weight x the mean entropy of the right predictions, the CE terms (N,))
    from the student's log-probabilities (N, V) ([MASK] at -inf)."""
    ce = F.nll_loss(logp, target, reduction="none")  # (N,)
    loss = ce.sum() / max(ce.numel(), 1)
    if weight > 0:
        p = logp.exp()
        entropy = -(p * torch.where(p > 0, logp, torch.zeros_like(logp))).sum(-1)  # (N,)
        right = (logp.detach().argmax(-1) == target).float()  # (N,)
        loss = loss + weight * (entropy * right).sum() / right.sum().clamp_min(1.0)
    return loss, ce


def trajectory_loss(student, teacher, x0: torch.Tensor, rollouts: Rollouts, generator: torch.Generator) -> LossOutput:
    """The trajectory loss of `student` on the windows x0 (B, L): their first prompt_length tokens are decoded by
    `teacher` (or found among the rollouts; with a pool, B rollouts of the pool are drawn instead) and a state along
    each trajectory is scored (see the module docstring)."""
    cfg, process, mask_id = rollouts.cfg, rollouts.process, rollouts.mask_id
    if rollouts.pool is not None:
        tokens, order = rollouts.draw(x0.shape[0], generator)  # (B, T) each
    else:
        tokens, order = rollouts.of(teacher, x0[:, : cfg.prompt_length])
    masked = trajectory_states(order, cfg, generator)  # (B, T)
    z = tokens.masked_fill(masked, mask_id)
    logp = log_probs(student, z, tokens, masked, process, mask_id, MaskSchedule(process.mask_schedule, process.eps))
    loss, ce = certainty_forcing_loss(logp, tokens[masked], cfg.certainty_weight)
    return LossOutput(loss=loss, masked_tokens=int(masked.sum()), nll_sum=ce.sum().detach())
