"""Sampling simplex flow-matching models: integrate dx/dt = v(x, t) from noise (t = 0) to data (t = 1).

Euler: x <- x + h v(x, t). Heun: x' = x + h v(x, t); x <- x + h (v(x, t) + v(x', t + h)) / 2, with a plain
Euler step on the last interval (the CE velocity (p - x) / (1 - t) is undefined at t = 1). Tokens are the
argmax of the final point. Known positions (prompt, infill context) are held at their one-hot vectors.
Steps are uniform in t, or uniform in the learned warp's u when the model has one. A callback sees the
argmax tokens after every step.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from sunfish.config import ProcessConfig, SamplerConfig, Solver
from sunfish.process.flow import simplex_noise, velocity
from sunfish.sample.continuous import time_grid
from sunfish.sample.unmask import SampleResult, StepInfo

Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t (B, L, V), t (B,)) -> v (B, L, V)


def integrate(field: Velocity, x: torch.Tensor, known: torch.Tensor, x_known: torch.Tensor, times: torch.Tensor,
              heun: bool = False, on_step: Callable | None = None) -> tuple[torch.Tensor, int]:
    """Integrate from times[0] to times[-1] starting at x (B, L, V); returns (final x, evaluations)."""
    hold = lambda y: torch.where(known[..., None], x_known, y)
    x, nfe = hold(x), 0
    B = x.shape[0]
    for k in range(len(times) - 1):
        t, s = float(times[k]), float(times[k + 1])
        v = field(x, torch.full((B,), t, device=x.device))
        nfe += 1
        step = x + (s - t) * v
        if heun and s < 1.0:
            v2 = field(hold(step), torch.full((B,), s, device=x.device))
            nfe += 1
            step = x + (s - t) * 0.5 * (v + v2)
        x = hold(step)
        if on_step is not None:
            on_step(k + 1, x)
    return x, nfe


@torch.no_grad()
def flow_generate(model: torch.nn.Module, canvas: torch.Tensor, mask_id: int, cfg: SamplerConfig,
                  process: ProcessConfig, *, generator,
                  callback: Callable[[StepInfo], None] | None = None) -> SampleResult:
    """Fill the `mask_id` positions of canvas (B, L) with a simplex flow model; the rest stay."""
    if cfg.solver not in (Solver.AUTO, Solver.EULER, Solver.HEUN):
        raise ValueError(f"--solver {cfg.solver.value} is for continuous models; a flow model takes euler or heun")
    V = model.cfg.vocab_size
    known = canvas != mask_id
    x_known = F.one_hot(canvas, V).float()  # (B, L, V)
    if isinstance(generator, torch.Generator):
        x = simplex_noise(x_known.shape, process.flow_noise, generator).to(x_known.device)
    else:  # one generator per row (sample.batch.Generators)
        x = torch.stack([simplex_noise(x_known.shape[1:], process.flow_noise, g) for g in generator]).to(x_known.device)
    warp = model.process_io.warp
    times = 1.0 - time_grid(cfg.steps, warp, process.time_warp_after)  # 0 -> 1
    state = {"tokens": canvas}

    def on_step(k: int, x_now: torch.Tensor) -> None:
        tokens = torch.where(known, canvas, x_now.argmax(-1))
        if callback is not None:
            callback(StepInfo(step=k, tokens=tokens, masked=torch.zeros_like(known), revealed=tokens != state["tokens"]))
        state["tokens"] = tokens

    field = lambda y, t: velocity(model, y, t, process.flow_loss)
    _, nfe = integrate(field, x, known, x_known, times, heun=cfg.solver is Solver.HEUN, on_step=on_step)
    return SampleResult(tokens=state["tokens"], steps=cfg.steps, nfe=nfe)
