"""Sampling embedding-diffusion models: DDIM / DDPM from Gaussian noise, then rounding to tokens.

From time t to s < t with the x0 estimate x0_hat and eps_hat = (x_t - sqrt(abar_t) x0_hat) / sqrt(1 - abar_t)
(DDIM, Song et al. 2021, eq. 12):

    x_s = sqrt(abar_s) x0_hat + sqrt(1 - abar_s - sigma^2) eps_hat + sigma z,
    sigma = eta sqrt((1 - abar_s) / (1 - abar_t)) sqrt(1 - abar_t / abar_s).

eta = 0 is deterministic DDIM; eta = 1 is DDPM's ancestral step (the posterior q(x_s | x_t, x0_hat)).
Steps are spaced uniformly in time, or uniformly in the learned warp's u when the model has one. The
clamping trick (Diffusion-LM) replaces x0_hat by the embedding of its rounded token. Known positions
(prompt, infill context) are held at their clean embeddings throughout; the tokens at the end are the
rounding of the last x0 estimate. A callback sees the rounded tokens after every step.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from sunfish.config import Parameterisation, ProcessConfig, Rounding, SamplerConfig, Solver
from sunfish.process.continuous import GaussianSchedule, embedding_table, predict, to_x0
from sunfish.sample.unmask import SampleResult, StepInfo

def gaussian(shape: tuple[int, ...], generator, device: torch.device | str) -> torch.Tensor:
    """N(0, I) noise of `shape` (B, ...): one generator for the batch, or one per row (sample.batch.Generators)."""
    if isinstance(generator, torch.Generator):
        return torch.randn(shape, generator=generator, device=generator.device).to(device)
    return torch.stack([torch.randn(shape[1:], generator=g, device=g.device) for g in generator]).to(device)


Denoiser = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]  # (x_t, t, self_cond) -> x0_hat


def round_to_tokens(x: torch.Tensor, table: torch.Tensor, how: Rounding, head: Callable | None = None) -> torch.Tensor:
    """Token ids (B, L) for embedding-space points x (B, L, D), given the embedding table (V, D)."""
    if how is Rounding.HEAD:
        return head(x).argmax(-1)
    if how is Rounding.COSINE:
        return (F.normalize(x.float(), dim=-1) @ F.normalize(table.float(), dim=-1).T).argmax(-1)
    # ||x - e||^2 = ||x||^2 - 2 x.e + ||e||^2; the first term is the same for every e
    return (2 * x.float() @ table.float().T - table.float().square().sum(-1)).argmax(-1)


def time_grid(steps: int, warp=None, after: int = 0) -> torch.Tensor:
    """(steps + 1,) times from 1 down to 0, uniform in t or in the learned warp's u."""
    u = torch.linspace(1.0, 0.0, steps + 1)
    if warp is not None and warp.active(after):
        u = warp.inverse(u.to(warp.bias.device)).cpu()
        u[0], u[-1] = 1.0, 0.0
    return u


def ddim_step(x_t, x0_hat, t, s, schedule: GaussianSchedule, eta: float, generator) -> torch.Tensor:
    """One DDIM step from time t to s < t (scalars) for x_t, x0_hat (B, L, D)."""
    a_t = schedule.alpha_bar(torch.tensor(t)).item()
    a_s = schedule.alpha_bar(torch.tensor(s)).item()
    eps_hat = (x_t - a_t**0.5 * x0_hat) / max(1 - a_t, 1e-12) ** 0.5
    sigma = eta * ((1 - a_s) / max(1 - a_t, 1e-12)) ** 0.5 * max(1 - a_t / a_s, 0.0) ** 0.5
    x_s = a_s**0.5 * x0_hat + max(1 - a_s - sigma**2, 0.0) ** 0.5 * eps_hat
    if sigma > 0:
        x_s = x_s + sigma * gaussian(x_t.shape, generator, x_t.device).to(x_t.dtype)
    return x_s


def ddim_sample(denoiser: Denoiser, x0_known: torch.Tensor, known: torch.Tensor, times: torch.Tensor,
                schedule: GaussianSchedule, eta: float, generator, *, self_cond: bool = False,
                clamp: Callable | None = None, on_step: Callable | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the reverse process over `times`; returns (x at the last time, the last x0 estimate), both (B, L, D).

    x0_known (B, L, D) holds the clean embeddings of the `known` (B, L) positions; `clamp` maps an x0
    estimate to the nearest embeddings; `on_step(k, x0_hat)` is called after step k (1-based).
    """
    B = x0_known.shape[0]
    x = gaussian(x0_known.shape, generator, x0_known.device).to(x0_known.dtype)
    x = torch.where(known[..., None], x0_known, x)
    x0_hat, prev = x, None
    for k in range(len(times) - 1):
        t, s = float(times[k]), float(times[k + 1])
        x0_hat = denoiser(x, torch.full((B,), t, device=x.device), prev if self_cond else None)
        if clamp is not None:
            x0_hat = clamp(x0_hat)
        x0_hat = torch.where(known[..., None], x0_known, x0_hat)
        prev = x0_hat
        x = ddim_step(x, x0_hat, t, s, schedule, eta, generator)
        x = torch.where(known[..., None], x0_known, x)
        if on_step is not None:
            on_step(k + 1, x0_hat)
    return x, x0_hat


@torch.no_grad()
def continuous_generate(model: torch.nn.Module, canvas: torch.Tensor, mask_id: int, cfg: SamplerConfig,
                        process: ProcessConfig, *, generator,
                        callback: Callable[[StepInfo], None] | None = None) -> SampleResult:
    """Fill the `mask_id` positions of canvas (B, L) with an embedding-diffusion model; the rest stay."""
    if cfg.solver not in (Solver.AUTO, Solver.DDIM, Solver.DDPM):
        raise ValueError(f"--solver {cfg.solver.value} is for flow models; a continuous model takes ddim or ddpm")
    schedule = GaussianSchedule(process.noise_schedule)
    table = embedding_table(model, process)  # (V, D)
    known = canvas != mask_id
    x0_known = table[canvas]  # (B, L, D)
    eta = 1.0 if cfg.solver is Solver.DDPM else cfg.eta
    state = {"tokens": canvas, "logits": None}
    softmax = process.param is Parameterisation.SOFTMAX

    def denoiser(x: torch.Tensor, t: torch.Tensor, self_cond: torch.Tensor | None) -> torch.Tensor:
        out = predict(model, x, t, self_cond)
        state["logits"] = out if softmax else None
        return to_x0(out, x, t, schedule, process.param, table)

    def rounding(x0_hat: torch.Tensor) -> torch.Tensor:
        if softmax and cfg.rounding is Rounding.HEAD:  # "through the output head": the network's own argmax
            return state["logits"].argmax(-1)
        return round_to_tokens(x0_hat, table, cfg.rounding, model.head)

    clamp = (lambda x: table[rounding(x)]) if cfg.clamp else None
    warp = model.process_io.warp
    times = time_grid(cfg.steps, warp, process.time_warp_after)

    def on_step(k: int, x0_hat: torch.Tensor) -> None:
        tokens = torch.where(known, canvas, rounding(x0_hat))
        if callback is not None:
            callback(StepInfo(step=k, tokens=tokens, masked=torch.zeros_like(known), revealed=tokens != state["tokens"]))
        state["tokens"] = tokens

    ddim_sample(denoiser, x0_known, known, times, schedule, eta, generator, self_cond=process.self_cond,
                clamp=clamp, on_step=on_step)
    return SampleResult(tokens=state["tokens"], steps=cfg.steps, nfe=cfg.steps)
