"""Training FLOPs of one optimiser step, counted rather than estimated: what "equal compute" means in
benchmarks/compare_processes.py.

`step_flops(cfg, tokens, mask_id)` builds the network a run of `cfg` trains (for a latent process, the trained
parts around its frozen base, adapt/latent.py), runs one training loss and its backward on a real batch
`tokens` (B, L) under torch's FlopCounterMode and returns the floating-point operations counted. Attention runs
on the math backend while counting, so its matrix products are seen as matmuls (the fused CPU kernels have no
FLOP formula in torch); a causal or block mask is applied to the full score matrix, which is what that backend
computes. A frozen base's forward pass is counted because it runs inside the step (and, for VFM, the backward
through it to the adapter); the base's own pre-training is not: the study reports it apart.
The optimiser's elementwise update is not counted (no model in the study spends a measurable share there).
"""

from __future__ import annotations

import dataclasses

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from sunfish.config import RunConfig
from sunfish.registry import build_network, spec_of, training_loss


def network_for(cfg: RunConfig, vocab_size: int) -> torch.nn.Module:
    """The trained network of a run of `cfg` on the CPU, freshly initialised (with its frozen base, if any)."""
    torch.manual_seed(cfg.train.seed)
    if spec_of(cfg.process).frozen_base:
        from sunfish.adapt.latent import build_latent, latent_config

        return build_latent(latent_config(cfg), "cpu")
    return build_network(dataclasses.replace(cfg.model, vocab_size=vocab_size), cfg.process)


def step_flops(cfg: RunConfig, tokens: torch.Tensor, mask_id: int, vocab_size: int) -> int:
    """FLOPs of one training step (loss forward and backward) of `cfg`'s network on `tokens` (B, L)."""
    model = network_for(cfg, vocab_size).train()
    generator = torch.Generator().manual_seed(cfg.train.seed)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        loss = training_loss(model, tokens, cfg.process, mask_id, generator).loss
        loss.backward()
    return int(counter.get_total_flops())
