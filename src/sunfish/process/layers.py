"""Layers the continuous and flow processes add to the backbone, attached as `model.process_io`.

Continuous (embedding) diffusion: `in_proj` maps the noised embedding x_t (with self-conditioning, the
concatenation [x_t, previous x0 estimate]) to the residual width, and `out_proj` maps the final hidden
state to the prediction (x0, eps or v) in embedding space (the softmax parameterisation uses the LM head).
Both processes may carry the learned noise warp (`time_warp.MonotoneWarp`). Being submodules of the model,
they are trained by the same optimiser and saved in the same checkpoint; building the model from a
checkpoint's config rebuilds them. The registry (sunfish/registry.py) says which process attaches which.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from sunfish.config import EmbedMode, Parameterisation, ProcessConfig
from sunfish.process.time_warp import MonotoneWarp


class ProcessIO(nn.Module):
    """in_proj (in_width -> d_model) when in_width > 0, out_proj (d_model -> d_model) when `regress`, and the
    learned time warp when `warp`."""

    def __init__(self, d_model: int, *, in_width: int, regress: bool, warp: bool, init_std: float):
        super().__init__()
        self.in_proj = nn.Linear(in_width, d_model, bias=False) if in_width else None
        self.out_proj = nn.Linear(d_model, d_model, bias=False) if regress else None
        self.warp = MonotoneWarp() if warp else None  # the learned time warp (process/time_warp.py)
        for layer in (self.in_proj, self.out_proj):
            if layer is not None:
                nn.init.normal_(layer.weight, std=init_std)


def _attach(model: nn.Module, **layers) -> None:
    if hasattr(model, "process_io"):
        return  # already attached
    with torch.device(model.embed.weight.device):
        model.process_io = ProcessIO(model.cfg.d_model, init_std=model.cfg.init_std, **layers)


def continuous_layers(model: nn.Module, cfg: ProcessConfig) -> None:
    """Embedding diffusion: input projection, output projection (unless the LM head reads x0: softmax) and the
    warp; Diffusion-LM's N(0, 1) embeddings unless they are RMS-normalised."""
    if hasattr(model, "process_io"):
        return
    width = (2 if cfg.self_cond else 1) * model.cfg.d_model
    _attach(model, in_width=width, regress=cfg.param is not Parameterisation.SOFTMAX, warp=cfg.time_warp)
    if cfg.embed is not EmbedMode.NORMALIZED:
        # Diffusion-LM draws embeddings N(0, 1) so data and noise have the same scale
        with torch.no_grad():
            model.embed.weight.normal_(0.0, 1.0)
        if cfg.embed is EmbedMode.FROZEN:
            model.embed.weight.requires_grad_(False)


def flow_layers(model: nn.Module, cfg: ProcessConfig) -> None:
    """Simplex flow: only the learned warp (the backbone reads x_t through its own embedding table)."""
    _attach(model, in_width=0, regress=False, warp=cfg.time_warp)
