"""Layers a continuous process adds to the backbone, attached as `model.process_io`.

Continuous (embedding) diffusion: `in_proj` maps the noised embedding x_t (with self-conditioning, the
concatenation [x_t, previous x0 estimate]) to the residual width, and `out_proj` maps the final hidden
state to the prediction (x0, eps or v) in embedding space (the softmax parameterisation uses the LM head). Both processes may carry the learned noise
warp (`schedule_net.MonotoneWarp`). Being submodules of the model, they are trained by the same
optimiser and saved in the same checkpoint; building the model from a checkpoint's config rebuilds them.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from sunfish.config import AttentionKind, EmbedMode, Parameterisation, ProcessConfig, ProcessKind
from sunfish.process.schedule_net import MonotoneWarp


class ProcessIO(nn.Module):
    def __init__(self, d_model: int, cfg: ProcessConfig, init_std: float):
        super().__init__()
        continuous = cfg.kind is ProcessKind.CONTINUOUS
        inputs = 2 if cfg.self_cond else 1
        self.in_proj = nn.Linear(inputs * d_model, d_model, bias=False) if continuous else None
        regress = continuous and cfg.param is not Parameterisation.SOFTMAX  # softmax reads x0 off the LM head
        self.out_proj = nn.Linear(d_model, d_model, bias=False) if regress else None
        self.schedule = MonotoneWarp() if cfg.learned_schedule else None
        for layer in (self.in_proj, self.out_proj):
            if layer is not None:
                nn.init.normal_(layer.weight, std=init_std)


def attach_process_layers(model: nn.Module, cfg: ProcessConfig) -> None:
    """Give `model` the layers and embedding set-up `cfg` needs; nothing for masked or AR processes."""
    if hasattr(model, "process_io"):
        return  # already attached (by build_model)
    if cfg.kind not in (ProcessKind.CONTINUOUS, ProcessKind.FLOW):
        return
    if cfg.block_size > 0:
        raise ValueError(f"the {cfg.kind.value} process has no block variant; set --process.block_size=0")
    if model.cfg.attention is AttentionKind.CAUSAL:
        raise ValueError(f"the {cfg.kind.value} process needs bidirectional attention; set --model.attention=bidirectional")
    if cfg.self_cond and cfg.kind is not ProcessKind.CONTINUOUS:
        raise ValueError("process.self_cond applies to the continuous process only; drop it for flow models")
    with torch.device(model.embed.weight.device):
        model.process_io = ProcessIO(model.cfg.d_model, cfg, model.cfg.init_std)
    if cfg.kind is ProcessKind.CONTINUOUS and cfg.embed is not EmbedMode.NORMALIZED:
        # Diffusion-LM draws embeddings N(0, 1) so data and noise have the same scale
        with torch.no_grad():
            model.embed.weight.normal_(0.0, 1.0)
        if cfg.embed is EmbedMode.FROZEN:
            model.embed.weight.requires_grad_(False)
