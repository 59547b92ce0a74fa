"""A noise adapter in front of a frozen LM used as a one-step flow map (VFM, the "noise adapter" path of Open-dLLM).

Implemented from Open-dLLM's description of its Variational Flow Map (objective "Eq. 19"):

    L = L_data / (2 tau^2) + L_obs / (2 sigma^2) + KL(q_phi(z | prompt) || N(0, I)).

A text w (B, L) is split into a prompt (a random-length prefix, `process.prompt_prob` of the rows; the others
have none) and the positions to generate. The noise adapter q_phi (a small bidirectional transformer over the
prompt's token embeddings, zeros and a learned position at the other positions) gives per-position (mu,
log s) (B, L, D_base); generation positions draw z = mu + s eps, prompt positions hold their embeddings. With
probability 1 - alpha (`process.vfm_alpha`) a row's generation noise is plain N(0, tau^2) instead, so the flow
map also learns from the prior. The flow map f is the frozen LM run once with bidirectional attention on
input_proj(z) (a LayerNorm and a Linear whose weight starts at zero and bias at the mean embedding, so f starts
at the "all average token" input); its head's logits, read at the position that predicts each token (the
causal LM's shifted layout: the state at i - 1 names token i), decode every position at once.

* L_data: the categorical reconstruction of the generated tokens from f(z), -log p_f(w_i | z) on the
  generation positions. (Open-dLLM regresses f's last hidden state onto the token embedding; with a frozen
  head that does not make the decoded token right, so the head's cross-entropy is used, the discrete
  counterpart of ||x - f(z)||^2.)
* L_obs: the observation term, the same cross-entropy on the prompt positions (the prompt must read back).
* KL: of the adapter's Gaussians at the generation positions against N(0, I), summed over D_base, averaged.

Only the adapter and input_proj train (~ the adapter's size); the base is frozen, as in LDLM (adapt/latent.py
loads it). Sampling is one pass (draw z from the adapter, decode); no likelihood bound is known.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn
import torch.nn.functional as F

from sunfish.config import AttentionKind, ModelConfig, ProcessConfig, TimeCond
from sunfish.model.perceiver import Stack, init_weights
from sunfish.process.ldlm import OverBase
from sunfish.process.masked import LossOutput, draw_prompts

LOG_S_MIN, LOG_S_MAX = -10.0, 2.3  # log std range of the adapter's Gaussians (s at most 10)


class NoiseAdapter(nn.Module):
    """q_phi(z | prompt): (mu, log s) (B, L, D_base) from prompt embeddings (B, L, D_base) and the prompt mask (B, L)."""

    def __init__(self, cfg: ModelConfig, base_dim: int, depth: int):
        super().__init__()
        cfg = dataclasses.replace(cfg, attention=AttentionKind.BIDIRECTIONAL, time_cond=TimeCond.NONE)
        self.inp = nn.Linear(base_dim, cfg.d_model, bias=False)
        self.positions = nn.Embedding(cfg.context, cfg.d_model)
        self.stack = Stack(cfg, depth, cfg.context)
        self.mu = nn.Linear(cfg.d_model, base_dim)
        self.log_s = nn.Linear(cfg.d_model, base_dim)

    def forward(self, embeds: torch.Tensor, prompt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        L = embeds.shape[1]
        embeds = embeds.to(self.inp.weight.dtype)  # float states into a bf16 network at inference
        x = self.inp(torch.where(prompt[..., None], embeds, torch.zeros_like(embeds))) + self.positions.weight[:L]
        h = self.stack(x)  # (B, L, D)
        return self.mu(h), self.log_s(h).clamp(LOG_S_MIN, LOG_S_MAX)


class NoiseAdapterLM(OverBase):
    """The adapter and the flow map's input projection over a frozen base (`.embedding()`, `.width`,
    `.flow(embeds)` (B, L, D_base) -> aligned states, `.head(h)`)."""

    BASE_FLOPS_PER_PARAM = 4.0  # the base's forward and the backward through its activations to the adapter

    def __init__(self, cfg: ModelConfig, process: ProcessConfig, base: nn.Module):
        super().__init__(cfg, base)
        self.adapter = NoiseAdapter(cfg, base.width, process.adapter_layers)
        self.input_proj = nn.Sequential(nn.LayerNorm(base.width), nn.Linear(base.width, base.width))
        init_weights(self, cfg.init_std)
        with torch.no_grad():  # f starts at the mean embedding whatever z is (Open-dLLM's start)
            self.input_proj[1].weight.zero_()
            self.input_proj[1].bias.copy_(base.embedding().weight.detach().float().mean(0))

    @property
    def needs_time(self) -> bool:
        return False

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.base.embedding()(tokens).detach().float()  # (B, L, D_base)

    def noise(self, tokens: torch.Tensor, prompt: torch.Tensor, generator) -> tuple[torch.Tensor, ...]:
        """(z (B, L, D_base), mu, log s): adapter noise at the generation positions, embeddings at the prompt's."""
        e = self.embed(tokens)
        mu, log_s = self.adapter(e, prompt)
        eps = torch.randn(e.shape, generator=generator, device=generator.device).to(e)
        return torch.where(prompt[..., None], e, mu + log_s.exp() * eps), mu, log_s

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        """Token logits (B, L, V) of the flow map f(z): the frozen LM on input_proj(z), one bidirectional pass."""
        return self.base.head(self.base.flow(self.input_proj(z)))


def vfm_loss(model: NoiseAdapterLM, tokens: torch.Tensor, cfg: ProcessConfig, generator: torch.Generator) -> LossOutput:
    """Eq. 19 on tokens (B, L); see the module docstring. The three terms go to metrics.jsonl apart."""
    B, L = tokens.shape
    prompt = draw_prompts(B, L, cfg.prompt_prob, generator).to(tokens.device)  # (B, L)
    z, mu, log_s = model.noise(tokens, prompt, generator)
    if model.training and cfg.vfm_alpha < 1.0:  # the rest of the rows start from the prior N(0, tau^2)
        prior = (torch.rand(B, generator=generator, device=generator.device) >= cfg.vfm_alpha).to(tokens.device)
        pure = cfg.vfm_tau * torch.randn(z.shape, generator=generator, device=generator.device).to(z)
        z = torch.where(prior[:, None, None] & ~prompt[..., None], pure, z)
    ce = F.cross_entropy(model.logits(z).float().flatten(0, 1), tokens.flatten(), reduction="none").view(B, L)
    gen = (~prompt).float()
    data = (ce * gen).sum() / gen.sum().clamp_min(1.0)
    obs = (ce * prompt.float()).sum() / prompt.float().sum().clamp_min(1.0)
    kl = 0.5 * (mu.float().square() + (2 * log_s.float()).exp() - 2 * log_s.float() - 1).sum(-1)  # (B, L)
    kl = (kl * gen).sum() / gen.sum().clamp_min(1.0)
    loss = data / (2 * cfg.vfm_tau**2) + obs / (2 * cfg.vfm_sigma**2) + kl
    model.record_terms(data_ce=data.detach(), obs_ce=obs.detach(), kl=kl.detach())
    return LossOutput(loss=loss, masked_tokens=int(gen.sum()), nll_sum=(ce * gen).sum().detach())
