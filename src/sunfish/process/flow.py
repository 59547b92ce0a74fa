"""Flow matching on the probability simplex (the "DLLM-RU-300M" seed design).

Each position is a point on the simplex over the V tokens. A noise point x0 (Dirichlet(1), i.e. uniform
on the simplex, or the softmax of a standard Gaussian) is joined to the one-hot data point x1 by the
straight path x_t = (1 - t) x0 + t x1, t in [0, 1] (0 noise, 1 data), with velocity v = x1 - x0.
The backbone reads x_t through its embedding table (soft embedding x_t E, RMS-normalised) and is told
the noise level 1 - t. Two objectives (`process.flow_loss`):

* velocity: ||v_theta(x_t, t) - (x1 - x0)||^2 summed over V, the head's V outputs read as a velocity;
* ce: the head predicts p(x1 | x_t) with cross-entropy; the velocity is v = (p - x_t) / (1 - t), the
  straight-path velocity towards the expected endpoint (usually the more stable choice).

Likelihood: no variational bound is known for this process; `denoising_ce_per_token` reports the
time-averaged denoising cross-entropy E_t E_{x_t}[-log p(x1 | x_t)], which is NOT a bound on -log p(x).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sunfish.config import FlowLoss, FlowNoise, ProcessConfig
from sunfish.process.masked import LossOutput, draw_prompts, sample_times
from sunfish.process.time_warp import fit_term, warp_noise

PROB_FLOOR = 1e-6  # floor of the implied p(x1) of a velocity model before taking its log


def simplex_noise(shape: tuple[int, ...], kind: FlowNoise, generator: torch.Generator) -> torch.Tensor:
    """Noise points (..., V) on the simplex: Dirichlet(1) (normalised exponentials) or softmax(N(0, I))."""
    u = torch.rand(shape, generator=generator, device=generator.device)
    if kind is FlowNoise.DIRICHLET:
        e = -torch.log(u.clamp_min(1e-12))  # Exp(1) = Gamma(1)
        return e / e.sum(-1, keepdim=True)
    g = torch.randn(shape, generator=generator, device=generator.device)
    return g.softmax(-1)


def flow_times(batch: int, cfg: ProcessConfig, warp, generator: torch.Generator) -> torch.Tensor:
    """Flow times t (B,) in [0, 1 - eps]: noise levels 1 - t drawn like the diffusion processes' t."""
    return 1.0 - warp_noise(warp, sample_times(batch, cfg, generator), cfg.time_warp_after)


def head_outputs(model: torch.nn.Module, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The head's (B, L, V) outputs for simplex points x_t (B, L, V) at flow times t (B,)."""
    soft = x_t.to(model.embed.weight.dtype) @ model.embed.weight  # (B, L, D)
    soft = F.rms_norm(soft, (soft.shape[-1],))
    h = model.hidden(None, (1.0 - t) if model.needs_time else None, embeds=soft)
    return model.head(h)


def velocity(model: torch.nn.Module, x_t: torch.Tensor, t: torch.Tensor, loss: FlowLoss) -> torch.Tensor:
    """v_theta(x_t, t) (B, L, V). With the CE parameterisation, (p - x_t) / (1 - t)."""
    out = head_outputs(model, x_t, t).float()
    if loss is FlowLoss.VELOCITY:
        return out
    gap = (1.0 - t).clamp_min(1e-6).view(-1, 1, 1)
    return (out.softmax(-1) - x_t) / gap


def endpoint_probs(out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, loss: FlowLoss) -> torch.Tensor:
    """p(x1 | x_t) (B, L, V): the softmax (ce), or the floored, renormalised endpoint x_t + (1 - t) v (velocity)."""
    if loss is FlowLoss.CE:
        return out.float().softmax(-1)
    end = (x_t + (1.0 - t).view(-1, 1, 1) * out.float()).clamp_min(PROB_FLOOR)
    return end / end.sum(-1, keepdim=True)


def flow_loss(model: torch.nn.Module, tokens: torch.Tensor, cfg: ProcessConfig, generator: torch.Generator) -> LossOutput:
    """Flow-matching loss on tokens (B, L) (see the module docstring), per noisy token."""
    B, L = tokens.shape
    V = model.cfg.vocab_size
    warp = model.process_io.warp
    x1 = F.one_hot(tokens, V).float()  # (B, L, V)
    x0 = simplex_noise((B, L, V), cfg.flow_noise, generator).to(x1.device)
    t = flow_times(B, cfg, warp, generator).to(x1.device)  # (B,)
    x_t = (1 - t.view(-1, 1, 1)) * x0 + t.view(-1, 1, 1) * x1
    clean = draw_prompts(B, L, cfg.prompt_prob, generator).to(x1.device)  # (B, L)
    x_t = torch.where(clean[..., None], x1, x_t)
    out = head_outputs(model, x_t, t).float()  # (B, L, V)
    if cfg.flow_loss is FlowLoss.CE:
        per_token = F.cross_entropy(out.flatten(0, 1), tokens.flatten(), reduction="none").view(B, L)
    else:
        per_token = (out - (x1 - x0)).square().sum(-1)  # (B, L)
    noisy = (~clean).float()
    with torch.no_grad():  # per-example error of the x1 estimate, the signal the learned warp fits
        p = endpoint_probs(out, x_t, t, cfg.flow_loss)
        err = ((p - x1).square().sum(-1) * noisy).sum(1) / noisy.sum(1).clamp_min(1.0)  # (B,)
    loss = (per_token * noisy).sum() / noisy.sum().clamp_min(1.0)
    loss = loss + fit_term(warp, 1.0 - t, err, cfg.time_warp_after, model.training)
    return LossOutput(loss=loss, masked_tokens=int(noisy.sum()), nll_sum=(per_token * noisy).sum().detach())


@torch.no_grad()
def denoising_ce_per_token(model: torch.nn.Module, tokens: torch.Tensor, cfg: ProcessConfig, generator: torch.Generator,
                           samples: int = 8) -> torch.Tensor:
    """E_{t ~ U(0,1)} E_{x_t} [-log p(x1 | x_t)] per token, in nats, for each row (B,).

    A diagnostic, not a likelihood bound (none is known for simplex flow matching): it measures how well
    the model names the data from noisy points, averaged over time with `samples` stratified draws.
    """
    B, L = tokens.shape
    x1 = F.one_hot(tokens, model.cfg.vocab_size).float()
    total = torch.zeros(B, device=tokens.device)
    for k in range(samples):
        t = ((k + torch.rand(B, generator=generator, device=generator.device)) / samples).to(x1.device)
        x0 = simplex_noise(x1.shape, cfg.flow_noise, generator).to(x1.device)
        x_t = (1 - t.view(-1, 1, 1)) * x0 + t.view(-1, 1, 1) * x1
        p = endpoint_probs(head_outputs(model, x_t, t), x_t, t, cfg.flow_loss)
        total += -(p.gather(-1, tokens[..., None]).squeeze(-1).clamp_min(PROB_FLOOR).log()).mean(1) / samples
    return total
