"""Time (noise-level) conditioning: learned table, sinusoidal features + MLP, and the adaLN vector.

t is the diffusion time in [0, 1] (0 clean, 1 fully masked), one value per sequence.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from sunfish.config import ModelConfig, TimeCond

SINUSOID_DIM = 256  # width of the sinusoidal features fed to the MLP


def sinusoidal_features(t: torch.Tensor, dim: int = SINUSOID_DIM, max_period: float = 10000.0) -> torch.Tensor:
    """Transformer-style sinusoidal features of 1000 t (DDPM / DiT timestep embedding).

    t: (B,) in [0, 1]. Returns (B, dim).
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = (1000.0 * t.float())[:, None] * freqs[None, :]  # (B, half)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimeEmbedding(nn.Module):
    """Maps t (B,) to a vector (B, D) for the chosen conditioning kind.

    LEARNED: an embedding table of T + 1 entries indexed by round(t T) (micro-dllm).
    SINUSOIDAL and ADALN: sinusoidal features followed by Linear -> SiLU -> Linear (DiT).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.kind = cfg.time_cond
        self.steps = cfg.time_steps
        if self.kind is TimeCond.LEARNED:
            self.table = nn.Embedding(cfg.time_steps + 1, cfg.d_model)
        else:
            self.mlp = nn.Sequential(
                nn.Linear(SINUSOID_DIM, cfg.d_model, bias=False),
                nn.SiLU(),
                nn.Linear(cfg.d_model, cfg.d_model, bias=False),
            )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        if self.kind is TimeCond.LEARNED:
            index = torch.round(t.float().clamp(0.0, 1.0) * self.steps).long()  # (B,)
            return self.table(index)
        return self.mlp(sinusoidal_features(t).to(self.mlp[0].weight.dtype))


class AdaLNModulation(nn.Module):
    """DiT adaLN-Zero: from the time vector c, per-block shift/scale/gate for attention and MLP.

    Zero-initialised so every block starts as the identity map plus the plain pre-norm residual.
    """

    def __init__(self, d_model: int, chunks: int = 6):
        super().__init__()
        self.chunks = chunks
        self.proj = nn.Linear(d_model, chunks * d_model, bias=True)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, c: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.proj(F.silu(c))[:, None, :].chunk(self.chunks, dim=-1)  # each (B, 1, D)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift
