"""Gaussian diffusion over token embeddings (Diffusion-LM, Li et al. 2022; the "Sunfish" seed design).

Data: x0 = Emb(w) (B, L, D), the backbone's own embedding table, RMS-normalised per row, unconstrained,
or frozen (`process.embed`). Forward process (variance preserving, continuous t in [0, 1], or on the grid
{1..T}/T with `process.discrete_steps` = T):

    q(x_t | x0) = N(sqrt(abar(t)) x0, (1 - abar(t)) I)

with abar from `NoiseSchedule`: linear (VP beta 0.1 -> 20), cosine (Nichol & Dhariwal 2021) or sqrt
(Diffusion-LM). The network sees in_proj([x_t, self-cond]) and predicts x0, eps or v via out_proj, or
(softmax, CDCD's score interpolation) token probabilities p through the LM head, x0_hat = sum_w p(w) Emb(w).

Training loss (Diffusion-LM's end-to-end objective, per token):
    || f_theta(x_t, t) - target ||^2 / D  +  -log p(w | x_t0)  +  || sqrt(abar(1)) x0 ||^2 / D
where p(w | x) = softmax(head(x)) is the rounding decoder (the LM head applied in embedding space), x_t0
a draw at the smallest time t0 = process.eps, and the last term keeps free embeddings from growing. With
the softmax parameterisation the first two terms become the cross-entropy -log p_theta(w | x_t), and the
rounding decoder is the network's own p_theta(w | x_t0).

Likelihood (`nelbo_per_token`): the continuous-time variational bound of VDM (Kingma et al. 2021, eq. 17)
with the rounding decoder at t0, a valid upper bound on -log p(w) per token in nats.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from sunfish.config import EmbedMode, NoiseSchedule, Parameterisation, ProcessConfig
from sunfish.process.masked import LossOutput, draw_prompts, sample_times
from sunfish.process.time_warp import fit_term, warp_noise

ALPHA_MIN = 1e-5  # abar is clamped below so that the log-SNR stays finite at t = 1
COSINE_S = 0.008  # cosine schedule offset (Nichol & Dhariwal 2021)
SQRT_S = 1e-4  # sqrt schedule offset (Diffusion-LM)
BETA_MIN, BETA_MAX = 0.1, 20.0  # VP linear schedule (Song et al. 2021)


class GaussianSchedule:
    """abar(t), the signal fraction of q(x_t | x0); decreasing from about 1 at t = 0 to ALPHA_MIN."""

    def __init__(self, kind: NoiseSchedule):
        self.kind = NoiseSchedule(kind)

    def alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        t = t.float()
        if self.kind is NoiseSchedule.LINEAR:
            a = torch.exp(-(BETA_MIN * t + 0.5 * (BETA_MAX - BETA_MIN) * t * t))
        elif self.kind is NoiseSchedule.COSINE:
            f = lambda x: torch.cos((x + COSINE_S) / (1 + COSINE_S) * math.pi / 2) ** 2
            a = f(t) / f(torch.zeros_like(t))
        else:
            a = 1.0 - torch.sqrt(t + SQRT_S)
        return a.clamp(ALPHA_MIN, 1.0)

    def log_snr(self, t: torch.Tensor) -> torch.Tensor:
        """lambda(t) = log(abar / (1 - abar))."""
        a = self.alpha_bar(t).double().clamp(max=1.0 - 1e-12)
        return (a.log() - torch.log1p(-a)).float()

    @torch.no_grad()
    def time_of_log_snr(self, lam: torch.Tensor) -> torch.Tensor:
        """t with lambda(t) = lam, by bisection (lambda decreases in t)."""
        lo, hi = torch.zeros_like(lam), torch.ones_like(lam)
        for _ in range(40):
            mid = 0.5 * (lo + hi)
            later = self.log_snr(mid) > lam  # still too little noise: the answer lies later
            lo, hi = torch.where(later, mid, lo), torch.where(later, hi, mid)
        return 0.5 * (lo + hi)


def expand(v: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, 1) for broadcasting over (B, L, D)."""
    return v.view(-1, 1, 1)


def embedding_table(model: torch.nn.Module, cfg: ProcessConfig) -> torch.Tensor:
    """The data points Emb(v) for every token v: (V, D)."""
    table = model.embed.weight
    if cfg.embed is EmbedMode.LEARNED:
        return table
    return F.rms_norm(table, (table.shape[-1],))


def forward_sample(x0: torch.Tensor, t: torch.Tensor, schedule: GaussianSchedule, generator: torch.Generator):
    """x_t ~ q(x_t | x0) for x0 (B, L, D) and t (B,). Returns (x_t, eps)."""
    eps = torch.randn(x0.shape, generator=generator, device=generator.device).to(x0)
    a = expand(schedule.alpha_bar(t)).to(x0)
    return a.sqrt() * x0 + (1 - a).sqrt() * eps, eps


def predict(model: torch.nn.Module, x_t: torch.Tensor, t: torch.Tensor, self_cond: torch.Tensor | None = None) -> torch.Tensor:
    """The network's raw output (B, L, D) for noised embeddings x_t (B, L, D) at times t (B,)."""
    io = model.process_io
    if io.in_proj.in_features > x_t.shape[-1]:  # self-conditioned model: [x_t, previous x0 estimate]
        x_t = torch.cat([x_t, torch.zeros_like(x_t) if self_cond is None else self_cond], dim=-1)
    h = model.hidden(None, t if model.needs_time else None, embeds=io.in_proj(x_t))  # (B, L, D)
    return model.head(h) if io.out_proj is None else io.out_proj(h)  # (B, L, V) logits for softmax, else (B, L, D)


def to_x0(out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, schedule: GaussianSchedule, param: Parameterisation,
          table: torch.Tensor | None = None) -> torch.Tensor:
    """The x0 estimate implied by a raw output under each parameterisation (softmax needs the table (V, D))."""
    if param is Parameterisation.X0:
        return out
    if param is Parameterisation.SOFTMAX:
        return (out.float().softmax(-1) @ table.float()).to(x_t.dtype)
    a = expand(schedule.alpha_bar(t)).to(out)
    if param is Parameterisation.EPS:
        return (x_t - (1 - a).sqrt() * out) / a.sqrt()
    return a.sqrt() * x_t - (1 - a).sqrt() * out  # v


def target_of(x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor, schedule: GaussianSchedule, param: Parameterisation) -> torch.Tensor:
    if param is Parameterisation.X0:
        return x0
    if param is Parameterisation.EPS:
        return eps
    a = expand(schedule.alpha_bar(t)).to(x0)
    return a.sqrt() * eps - (1 - a).sqrt() * x0  # v (Salimans & Ho 2022)


def denoise(model, x_t, t, cfg: ProcessConfig, schedule: GaussianSchedule, self_cond=None) -> torch.Tensor:
    """x0 estimate (B, L, D) from x_t (B, L, D), t (B,)."""
    return to_x0(predict(model, x_t, t, self_cond), x_t, t, schedule, cfg.param, embedding_table(model, cfg))


def rounding_nll(model, x0: torch.Tensor, tokens: torch.Tensor, cfg: ProcessConfig, schedule: GaussianSchedule,
                 generator: torch.Generator) -> torch.Tensor:
    """-log p(w | x_t0) per token (B, L): the rounding decoder on a draw at the smallest time t0."""
    t0 = torch.full((x0.shape[0],), cfg.eps, device=x0.device)
    z0, _ = forward_sample(x0, t0, schedule, generator)
    if cfg.param is Parameterisation.SOFTMAX:  # the network's own posterior at t0
        logits = predict(model, z0, t0).float()
    else:
        logits = model.head(z0).float()  # (B, L, V)
    return F.cross_entropy(logits.flatten(0, 1), tokens.flatten(), reduction="none").view(tokens.shape)


def continuous_loss(model: torch.nn.Module, tokens: torch.Tensor, cfg: ProcessConfig, generator: torch.Generator) -> LossOutput:
    """Diffusion-LM's training loss on tokens (B, L); see the module docstring."""
    schedule = GaussianSchedule(cfg.noise_schedule)
    B, L = tokens.shape
    x0 = embedding_table(model, cfg)[tokens]  # (B, L, D)
    warp = model.process_io.warp
    t = warp_noise(warp, sample_times(B, cfg, generator).to(x0.device), cfg.time_warp_after)  # (B,)
    x_t, eps = forward_sample(x0, t, schedule, generator)
    clean = draw_prompts(B, L, cfg.prompt_prob, generator).to(x0.device)  # (B, L)
    x_t = torch.where(clean[..., None], x0, x_t)
    self_cond = None
    if cfg.self_cond and bool(torch.rand(1, generator=generator, device=generator.device) < 0.5):
        with torch.no_grad():
            self_cond = denoise(model, x_t, t, cfg, schedule)
    out = predict(model, x_t, t, self_cond)
    noisy = (~clean).float()
    if cfg.param is Parameterisation.SOFTMAX:
        per_token = F.cross_entropy(out.float().flatten(0, 1), tokens.flatten(), reduction="none").view(B, L)
        rounding = per_token  # the network is its own rounding decoder
    else:
        per_token = (out.float() - target_of(x0, eps, t, schedule, cfg.param).float()).square().mean(-1)  # (B, L)
        rounding = rounding_nll(model, x0, tokens, cfg, schedule, generator)  # (B, L)
    mse_loss = (per_token * noisy).sum() / noisy.sum().clamp_min(1.0)
    prior = schedule.alpha_bar(torch.ones(1, device=x0.device)) * x0.float().square().mean(-1)  # (B, L)
    with torch.no_grad():  # per-example x0 error, the signal the learned warp fits
        x0_err = (to_x0(out, x_t, t, schedule, cfg.param, embedding_table(model, cfg)) - x0).float().square().mean(-1)
        x0_err = (x0_err * noisy).sum(1) / noisy.sum(1).clamp_min(1.0)  # (B,)
    if cfg.param is not Parameterisation.SOFTMAX:
        mse_loss = mse_loss + rounding.mean()
    loss = mse_loss + prior.mean() + fit_term(warp, t, x0_err, cfg.time_warp_after, model.training)
    return LossOutput(loss=loss, masked_tokens=int(noisy.sum()), nll_sum=rounding.sum().detach())


@torch.no_grad()
def continuous_nats(model: torch.nn.Module, tokens: torch.Tensor, cfg: ProcessConfig, mask_id: int, u: torch.Tensor,
                    generator: torch.Generator, scored: torch.Tensor | None = None) -> torch.Tensor:
    """One-sample NELBO, in nats, of tokens[scored] (B, L) given the other positions held clean. Returns (B,).

    Continuous-time bound of VDM (Kingma et al. 2021, eq. 17) with the rounding decoder at t0 = process.eps:
        -log p(w) <= E[-log p(w | z_t0)] + KL(q(z_1 | w) || N(0, I))
                     + 1/2 int_{lambda(1)}^{lambda(t0)} e^lambda ||x0 - x0_hat(z_lambda)||^2 d lambda,
    lambda the log-SNR. u (B,) in [0, 1) places each row's lambda uniformly on [lambda(1), lambda(t0)]
    (importance sampling in log-SNR keeps the variance low). `scored` defaults to every position but the
    first (the evaluation harness's convention). It bounds the continuous-time model (infinitely many
    steps), not a finite-step DDPM sampler; mask_id is unused (the signature is the harness's).
    """
    schedule = GaussianSchedule(cfg.noise_schedule)
    if scored is None:
        scored = torch.ones_like(tokens, dtype=torch.bool)
        scored[:, 0] = False
    keep = scored.float()  # (B, L)
    x0 = embedding_table(model, cfg)[tokens].float()  # (B, L, D)
    rounding = (rounding_nll(model, x0, tokens, cfg, schedule, generator) * keep).sum(1)  # (B,)
    a1 = schedule.alpha_bar(torch.ones(1, device=x0.device))
    prior = (0.5 * (a1 * x0.square() + (1 - a1) - 1 - torch.log1p(-a1)).sum(-1) * keep).sum(1)  # (B,)
    lam_hi = schedule.log_snr(torch.tensor([cfg.eps], device=x0.device))
    lam_lo = schedule.log_snr(torch.ones(1, device=x0.device))
    lam = lam_lo + (lam_hi - lam_lo) * u.to(x0.device).float()  # (B,)
    t = schedule.time_of_log_snr(lam)
    x_t, _ = forward_sample(x0, t, schedule, generator)
    x_t = torch.where(scored[..., None], x_t, x0)
    x0_hat = denoise(model, x_t, t, cfg, schedule)
    if cfg.self_cond:
        x0_hat = denoise(model, x_t, t, cfg, schedule, x0_hat)
    err = ((x0_hat.float() - x0).square().sum(-1) * keep).sum(1)  # (B,)
    return rounding + prior + 0.5 * (lam_hi - lam_lo) * lam.exp() * err


@torch.no_grad()
def nelbo_per_token(model: torch.nn.Module, tokens: torch.Tensor, cfg: ProcessConfig, generator: torch.Generator,
                    samples: int = 8) -> torch.Tensor:
    """Upper bound on -log p(w) per token, in nats, for each row of tokens (B, L), every position scored.

    The mean of `samples` stratified one-sample estimates of `continuous_nats`. Returns (B,).
    """
    B, L = tokens.shape
    scored = torch.ones_like(tokens, dtype=torch.bool)
    total = torch.zeros(B, device=tokens.device)
    for k in range(samples):
        u = (k + torch.rand(B, generator=generator, device=generator.device).to(tokens.device)) / samples
        total += continuous_nats(model, tokens, cfg, -1, u, generator, scored) / samples
    return total / L
