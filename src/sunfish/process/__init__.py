"""Generative processes and their training losses; `training_loss` picks the one a config names."""

from __future__ import annotations

import torch

from sunfish.config import ProcessConfig, ProcessKind
from sunfish.process.masked import LossOutput, masked_diffusion_loss


def training_loss(
    model: torch.nn.Module, x0: torch.Tensor, cfg: ProcessConfig, mask_id: int, generator: torch.Generator
) -> LossOutput:
    """Loss of x0 (B, L) under the configured process: masked diffusion, block diffusion, or AR."""
    own = getattr(model, "training_loss", None)
    if own is not None:  # a model with its own objective (sunfish.adapt's DiffusionLM: NELBO + alignment)
        return own(x0, cfg, mask_id, generator)
    if cfg.prompt_prob > 0 and (cfg.kind is ProcessKind.AR or (cfg.kind is ProcessKind.MASKED and cfg.block_size > 0)):
        raise ValueError("process.prompt_prob (conditional training) is not implemented for the AR or block objectives; set it to 0")
    if cfg.kind is ProcessKind.AR:
        from sunfish.process.autoregressive import next_token_loss

        return next_token_loss(model, x0)
    if cfg.kind is ProcessKind.CONTINUOUS:
        from sunfish.process.continuous import continuous_loss

        return continuous_loss(model, x0, cfg, generator)
    if cfg.kind is ProcessKind.FLOW:
        from sunfish.process.flow import flow_loss

        return flow_loss(model, x0, cfg, generator)
    if cfg.block_size > 0:
        from sunfish.process.block import block_diffusion_loss

        return block_diffusion_loss(model, x0, cfg, mask_id, generator)
    return masked_diffusion_loss(model, x0, cfg, mask_id, generator)
