"""The training loss of an adapted model: masked NELBO, trajectory-guided masks, representation alignment.

    L = NELBO(z_t) + align_weight * L_align

z_t is the usual random corruption (process/masked.py), except that a sequence with a recorded
trajectory is, with probability `traj_mix`, masked along it: a ratio r ~ U[traj_min_ratio,
traj_max_ratio] masks its latest-committed round(r n) tokens and the NELBO weight is that of the time t
with 1 - alpha(t) = r. L_align is in align.py; teacher states come from the cache when present, else from
the frozen causal model (and are then added to the cache, so later epochs hit it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from sunfish.adapt.align import TeacherCache, alignment_loss, choose_layers, parse_layers, token_subset
from sunfish.adapt.trajectory import TrajectoryStore, latest_committed
from sunfish.config import AdaptConfig, ProcessConfig, RunConfig
from sunfish.process.masked import LossOutput, corrupt, nelbo, sample_times
from sunfish.process.schedules import MaskSchedule


@dataclass
class AdaptObjective:
    """What the adaptation loss needs beyond the model; a plain object, so nothing here is saved."""

    cfg: AdaptConfig
    layers: list[int]  # aligned layers (1-based)
    load_teacher: Callable[[], torch.nn.Module]
    cache: TeacherCache | None = None
    trajectories: TrajectoryStore | None = None
    teacher: torch.nn.Module | None = field(default=None, repr=False)
    trajectory_rows: int = 0  # sequences masked along their trajectory so far

    def teacher_states(self, x0: torch.Tensor, layers: list[int]) -> dict[int, torch.Tensor]:
        """Teacher outputs of `layers` on clean x0 (B, L), each (B, L, D): cached rows, the rest computed."""
        cached = self.cache.get(x0) if self.cache is not None else [None] * x0.shape[0]
        missing = [b for b, c in enumerate(cached) if c is None]
        if missing:
            fresh = self.compute(x0[missing], self.cache.layers if self.cache is not None else layers)
            if self.cache is not None:
                self.cache.put(x0[missing], fresh)
            for b, states in zip(missing, fresh):
                cached[b] = states
        stacked = torch.stack([c.to(x0.device) for c in cached])  # (B, K, L, D)
        order = self.cache.layers if self.cache is not None else layers
        return {k: stacked[:, order.index(k)] for k in layers}

    def loss(self, model, x0: torch.Tensor, cfg: ProcessConfig, mask_id: int, generator: torch.Generator) -> LossOutput:
        """The training loss of `model` (a DiffusionLM) on x0 (B, L): see `adapted_loss`."""
        return adapted_loss(model, x0, cfg, mask_id, generator)

    @torch.no_grad()
    def compute(self, x0: torch.Tensor, layers: list[int]) -> torch.Tensor:
        if self.teacher is None:
            self.teacher = self.load_teacher().to(x0.device)
        _, states = self.teacher.states(x0, bidirectional=False, layers=layers)
        return torch.stack([states[k] for k in layers], dim=1)  # (B, K, L, D)


def teacher_name(cfg: AdaptConfig) -> str:
    return str(Path(cfg.base).resolve())


def attach(model, cfg: RunConfig, load_teacher: Callable[[], torch.nn.Module],
           log: Callable[[str], None] = print) -> AdaptObjective:
    """Give `model` (a DiffusionLM) its training objective from `cfg.adapt`; `load_teacher()` returns the frozen
    causal model (called only when the alignment loss first needs it)."""
    a = cfg.adapt
    if a.traj_min_ratio > a.traj_max_ratio:
        raise ValueError(f"--adapt.traj_min_ratio ({a.traj_min_ratio}) exceeds --adapt.traj_max_ratio ({a.traj_max_ratio})")
    layers = parse_layers(a.align_layers, model.backbone.n_layers)
    objective = AdaptObjective(cfg=a, layers=layers, load_teacher=load_teacher)
    if a.align_weight > 0 and a.teacher_cache:
        width = model.backbone.embedding().weight.shape[1]
        objective.cache = TeacherCache(a.teacher_cache, teacher_name(a), layers, width)
        log(f"teacher cache '{a.teacher_cache}': {len(objective.cache):,} sequences")
    if a.trajectories:
        objective.trajectories = TrajectoryStore(a.trajectories)
        log(f"trajectories '{a.trajectories}': {len(objective.trajectories):,} sequences")
    model.objective = objective
    return objective


def trajectory_masks(x0: torch.Tensor, t: torch.Tensor, masked: torch.Tensor, obj: AdaptObjective,
                     schedule: MaskSchedule, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace (t, masked) of the rows drawn for trajectory masking; returns the new (t (B,), masked (B, L))."""
    a = obj.cfg
    order, found = obj.trajectories.lookup(x0)
    draw = torch.rand(x0.shape[0], generator=generator, device=generator.device).to(x0.device) < a.traj_mix
    use = found & draw  # (B,)
    if not use.any():
        return t, masked
    u = torch.rand(x0.shape[0], generator=generator, device=generator.device).to(x0.device)
    ratio = a.traj_min_ratio + (a.traj_max_ratio - a.traj_min_ratio) * u  # (B,)
    along = latest_committed(order, ratio)  # (B, L)
    real_ratio = along.float().sum(-1) / x0.shape[1]
    t_traj = schedule.time_of_alpha((1.0 - real_ratio).clamp(1e-6, 1.0)).clamp_min(1e-4)
    obj.trajectory_rows += int(use.sum())
    return torch.where(use, t_traj, t), torch.where(use[:, None], along, masked)


def adapted_loss(model, x0: torch.Tensor, cfg: ProcessConfig, mask_id: int, generator: torch.Generator) -> LossOutput:
    """Masked NELBO (random or trajectory masks) plus the weighted alignment loss, for x0 (B, L)."""
    obj: AdaptObjective = model.objective
    a = obj.cfg
    schedule = MaskSchedule(cfg.mask_schedule, cfg.eps)
    B, L = x0.shape
    t = sample_times(B, cfg, generator).to(x0.device)  # (B,)
    _, masked = corrupt(x0, t, schedule, mask_id, generator)
    if obj.trajectories is not None:
        t, masked = trajectory_masks(x0, t, masked, obj, schedule, generator)
    zt = torch.where(masked, torch.full_like(x0, mask_id), x0)
    align = a.align_weight > 0
    layers, scale = choose_layers(obj.layers, a.align_layer_sample, generator) if align else ([], 1.0)
    h, student = model.hidden_and_layers(zt, layers)  # (B, L, D), {k: (B, L, D)}
    logits = model.head(h[masked]).float()  # (N, V)
    nll = F.cross_entropy(logits, x0[masked], reduction="none")  # (N,)
    loss = nelbo(nll, schedule.weight(t)[:, None].expand(B, L)[masked], B * L, cfg.loss)
    if align:
        teacher = obj.teacher_states(x0, layers)
        positions = token_subset((B, L), a.align_token_fraction, generator)
        loss = loss + a.align_weight * alignment_loss(student, teacher, positions, scale)
    return LossOutput(loss=loss, masked_tokens=int(masked.sum()), nll_sum=nll.sum().detach())
