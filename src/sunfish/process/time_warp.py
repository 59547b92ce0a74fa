"""A learned, monotone warp of the noise level: which noise levels training visits and sampling steps through.

Noise level n in [0, 1] (0 clean, 1 pure noise; for the continuous process n is the time t of its Gaussian
schedule, for simplex flow n = 1 - t). A small monotone network

    f(n) = b + a n + sum_k w_k sigmoid(s_k (n - c_k)),   a, w_k, s_k > 0,

is fitted by squared error to the per-example reconstruction error observed at n (targets detached), so
it tracks how the loss grows with noise. Its normalised form F(n) = (f(n) - f(0)) / (f(1) - f(0)) is a
CDF on [0, 1]; each example's uniform draw u is mapped to n = F^{-1}(u) (per example), so noise levels are
visited in proportion to dF/dn: where the error changes fastest. This is the time warping of CDCD
(Dieleman et al. 2022, sec. 6.1), with a monotone network in place of their piecewise-linear fit. The
sampler spaces its steps uniformly in u, so each step removes about the same amount of error.

Until `time_warp_after` training batches have been seen the warp is the identity (the fixed base
schedule) and is not trained; the counter lives in the module's state, so checkpoints resume it. It moves once
per optimiser step by the batches of every rank (`after_step`, called by the training loop), so a DDP run
switches the warp on at the same step as one process with the same global batch.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

GAIN = 10.0  # parameters are stored divided by GAIN so the shared learning rate moves the warp usefully
BISECTION_STEPS = 40  # inverse by bisection: 2^-40 resolution on [0, 1]


class MonotoneWarp(nn.Module):
    """f(n) (strictly increasing), its normalised CDF F(n) and the inverse F^{-1}(u). Shapes (...,)."""

    sometimes_unused = True  # no gradient before `time_warp_after` batches: DDP must look for unused parameters

    def __init__(self, hidden: int = 16):
        super().__init__()
        self.raw_slope = nn.Parameter(torch.zeros(1))  # a = softplus(GAIN raw) ~ 0.69 at start
        self.raw_weight = nn.Parameter(torch.full((hidden,), -0.4))  # w_k ~ 0.018: F starts near identity
        self.raw_sharp = nn.Parameter(torch.full((hidden,), 0.2))  # s_k ~ 2
        self.centre = nn.Parameter(torch.linspace(0.0, 1.0, hidden) / GAIN)
        self.bias = nn.Parameter(torch.zeros(1))
        self.register_buffer("seen", torch.zeros((), dtype=torch.long))  # training batches counted (all ranks)
        self.pending = 0  # this optimiser step's batches on this rank (a plain attribute: DDP must not overwrite it)

    def after_step(self, reduce=None) -> None:
        """Count this step's batches of every rank (`reduce` sums a list of floats over the ranks)."""
        batches = [float(self.pending)]
        self.pending = 0
        with torch.no_grad():
            self.seen += int((reduce(batches) if reduce is not None else batches)[0])

    def value(self, n: torch.Tensor) -> torch.Tensor:
        """f(n), the fitted reconstruction error at noise level n."""
        a = F.softplus(GAIN * self.raw_slope)
        w = F.softplus(GAIN * self.raw_weight)
        s = F.softplus(GAIN * self.raw_sharp)
        z = torch.sigmoid(s * (n[..., None] - GAIN * self.centre))  # (..., K)
        return GAIN * self.bias + a * n + (w * z).sum(-1)

    def cdf(self, n: torch.Tensor) -> torch.Tensor:
        """F(n) = (f(n) - f(0)) / (f(1) - f(0)), increasing from 0 to 1."""
        ends = self.value(torch.tensor([0.0, 1.0], device=n.device))
        return (self.value(n) - ends[0]) / (ends[1] - ends[0])

    @torch.no_grad()
    def inverse(self, u: torch.Tensor) -> torch.Tensor:
        """n with F(n) = u, by bisection (F is strictly increasing)."""
        lo, hi = torch.zeros_like(u), torch.ones_like(u)
        for _ in range(BISECTION_STEPS):
            mid = 0.5 * (lo + hi)
            below = self.cdf(mid) < u
            lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
        return 0.5 * (lo + hi)

    def active(self, after: int) -> bool:
        return int(self.seen) >= after


def warp_noise(warp: MonotoneWarp | None, u: torch.Tensor, after: int) -> torch.Tensor:
    """Noise levels for uniform draws u: F^{-1}(u) once the warp is active, else u (the fixed schedule)."""
    if warp is None or not warp.active(after):
        return u
    return warp.inverse(u.float()).to(u.dtype)


def fit_term(warp: MonotoneWarp | None, n: torch.Tensor, error: torch.Tensor, after: int, training: bool) -> torch.Tensor:
    """A zero-valued loss term whose gradient fits f(n) to the observed per-example `error` (B,).

    Counts one training batch (towards the step's count, MonotoneWarp.after_step). The value is
    (fit - fit.detach()) = 0, so logged losses are unchanged;
    the gradient reaches only the warp's parameters (the targets are detached).
    """
    if warp is None or not training:
        return error.new_zeros(())
    warp.pending += 1
    if not warp.active(after):
        return error.new_zeros(())
    fit = (warp.value(n.detach().float()) - error.detach().float()).square().mean()
    return fit - fit.detach()
