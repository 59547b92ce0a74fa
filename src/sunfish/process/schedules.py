"""Mask schedules alpha(t) of absorbing-state (masked) diffusion.

alpha(t) is the probability that a token is still clean at time t in [0, 1]; alpha(0) = 1 and alpha(1) = 0
(log-linear stops at eps). The NELBO weight is w(t) = -alpha'(t) / (1 - alpha(t)) (MDLM, Sahoo et al.
2024, eq. 10); for the linear schedule it is 1/t, LLaDA's loss weight.
"""

from __future__ import annotations

import math

import torch

from sunfish.config import MaskScheduleKind


class MaskSchedule:
    """alpha(t), its derivative, its inverse and the NELBO weight for one schedule kind."""

    def __init__(self, kind: MaskScheduleKind, eps: float = 1e-3):
        self.kind = MaskScheduleKind(kind)
        self.eps = eps

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        if self.kind is MaskScheduleKind.LINEAR:
            return 1.0 - t
        if self.kind is MaskScheduleKind.LOGLINEAR:
            return 1.0 - (1.0 - self.eps) * t
        if self.kind is MaskScheduleKind.COSINE:
            return torch.cos(0.5 * math.pi * t)
        return torch.cos(0.5 * math.pi * t) ** 2  # COSINE_SQ

    def alpha_prime(self, t: torch.Tensor) -> torch.Tensor:
        """d alpha / dt."""
        if self.kind is MaskScheduleKind.LINEAR:
            return -torch.ones_like(t)
        if self.kind is MaskScheduleKind.LOGLINEAR:
            return torch.full_like(t, -(1.0 - self.eps))
        if self.kind is MaskScheduleKind.COSINE:
            return -0.5 * math.pi * torch.sin(0.5 * math.pi * t)
        return -0.5 * math.pi * torch.sin(math.pi * t)  # d/dt cos^2(pi t/2) = -(pi/2) sin(pi t)

    def weight(self, t: torch.Tensor) -> torch.Tensor:
        """w(t) = -alpha'(t) / (1 - alpha(t)), the per-masked-token NELBO weight."""
        return -self.alpha_prime(t) / (1.0 - self.alpha(t)).clamp_min(1e-12)

    def reveal_fraction(self, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """(alpha(s) - alpha(t)) / (1 - alpha(t)): the share of the masks at time t revealed by time s < t (MDLM's
        ancestral step). Linear: 1 - s / t, computed so (Dream's expression)."""
        if self.kind is MaskScheduleKind.LINEAR:
            return 1.0 - s / t
        return (self.alpha(s) - self.alpha(t)) / (1.0 - self.alpha(t)).clamp_min(1e-12)

    def time_of_alpha(self, alpha: torch.Tensor) -> torch.Tensor:
        """Inverse of alpha(t): the time at which a fraction `alpha` of tokens is still clean."""
        a = alpha.clamp(0.0, 1.0)
        if self.kind is MaskScheduleKind.LINEAR:
            return 1.0 - a
        if self.kind is MaskScheduleKind.LOGLINEAR:
            return ((1.0 - a) / (1.0 - self.eps)).clamp(max=1.0)
        if self.kind is MaskScheduleKind.COSINE:
            return torch.acos(a) * (2.0 / math.pi)
        return torch.acos(a.sqrt()) * (2.0 / math.pi)
