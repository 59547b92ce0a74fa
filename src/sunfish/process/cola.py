"""Cola: latent diffusion over a VAE's latents of a frozen LM's states (Open-dLLM's "Cola DLM": a VAE plus a DiT
head on top of a frozen model).

The network is LDLM's (process/ldlm.py: Perceiver encoder, Perceiver decoder, readout, adaLN DiT, the same joint
loss, warm-up, adaptive timesteps and decoder-input noise) with a variational encoder in place of the unit-RMS
one: the encoder's K queries give a Gaussian posterior q(z | w) = N(mu, diag(exp(log_var))) per latent, training
draws z = mu + exp(log_var / 2) eps, and the loss gains the KL to the N(0, I) prior with free bits (Kingma et
al. 2016, IAF, eq. 15):

    kl_weight * sum_j max(free_bits, mean_{batch, K} KL_j),   KL_j = (mu_j^2 + exp(lv_j) - lv_j - 1) / 2,

so each of the d latent dimensions keeps at least `process.free_bits` nats before the KL pulls on it (no
posterior collapse). The KL, not a normalisation, sets the latents' scale. Reconstruction accuracy and the
prompt's latents use the posterior mean. One level of latents (the "hierarchical" VAE of the Open-dLLM table is
not specified there; one level is what is built here).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from sunfish.config import ModelConfig, ProcessConfig
from sunfish.process.ldlm import LatentLM


class ColaLM(LatentLM):
    """LDLM's network with a VAE encoder: `log_var` (D -> d) beside the encoder's mean projection."""

    def __init__(self, cfg: ModelConfig, process: ProcessConfig, base: nn.Module):
        super().__init__(cfg, process, base)
        self.log_var = nn.Linear(cfg.d_model, process.latent_dim)
        nn.init.zeros_(self.log_var.weight)
        nn.init.constant_(self.log_var.bias, -4.0)  # start near the mean (std e^-2), the KL then widens it
        self.free_bits = process.free_bits

    def latents(self, h: torch.Tensor, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(a draw from q(z | w) with `generator`, its mean without; the free-bits KL term)."""
        feats = self.encoder.features(h)  # (B, K, D)
        mu, log_var = self.encoder.out(feats).float(), self.log_var(feats).float().clamp(-10.0, 10.0)
        kl_dims = 0.5 * (mu.square() + log_var.exp() - log_var - 1).mean((0, 1))  # (d,) nats per dimension
        kl = kl_dims.clamp_min(self.free_bits).sum()
        if generator is None:
            return mu, kl
        eps = torch.randn(mu.shape, generator=generator, device=generator.device).to(mu)
        return mu + (0.5 * log_var).exp() * eps, kl
