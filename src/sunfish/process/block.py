"""Block diffusion (BD3-LM, Arriola et al. 2025): masked diffusion inside blocks, autoregressive across them.

The sequence of L tokens is cut into blocks of B. Each block gets its own diffusion time t_b and is
corrupted independently. Training runs the noised copy x_t and the clean copy x_0 together (2L tokens,
both copies using positions 0..L-1) under one attention mask:
    noised block b  -> noised block b (bidirectional) and clean blocks < b;
    clean block b   -> clean blocks <= b (block-causal).
The loss is the masked-diffusion NELBO of each block given the clean blocks before it, normalised per
token. B = L is MDLM; B = 1 computes the autoregressive chain rule (each masked token sees x_<i).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sunfish.config import LossKind, ProcessConfig
from sunfish.process.masked import LossOutput, corrupt, sample_times
from sunfish.process.schedules import Schedule


def block_ids(length: int, block_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Block index of each position. (L,)"""
    return torch.arange(length, device=device) // block_size


def training_mask(length: int, block_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Attention mask (2L, 2L) over [x_t ; x_0], True = may attend."""
    b = block_ids(length, block_size, device)
    same = b[:, None] == b[None, :]
    before = b[:, None] > b[None, :]
    upto = b[:, None] >= b[None, :]
    none = torch.zeros(length, length, dtype=torch.bool, device=device)
    top = torch.cat([same, before], dim=1)  # noised queries: own noised block, earlier clean blocks
    bottom = torch.cat([none, upto], dim=1)  # clean queries: clean blocks up to their own
    return torch.cat([top, bottom], dim=0)


def block_causal_mask(ids: torch.Tensor) -> torch.Tensor:
    """(L, L) mask from block ids (L,): a position attends to its own block and all earlier ones."""
    return ids[:, None] >= ids[None, :]


def prefix_mask(length: int, block_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Block-causal mask (L, L) for a clean prefix (the prompt at generation time)."""
    return block_causal_mask(block_ids(length, block_size, device))


def block_diffusion_loss(
    model: torch.nn.Module, x0: torch.Tensor, cfg: ProcessConfig, mask_id: int, generator: torch.Generator
) -> LossOutput:
    """NELBO (or masked CE) of BD3-LM on x0 (B, L) with block size cfg.block_size."""
    if model.needs_time:
        raise ValueError("the block process runs without time conditioning; set --model.time_cond=none")
    schedule = Schedule(cfg.schedule, cfg.eps)
    B, L = x0.shape
    n_blocks = -(-L // cfg.block_size)
    t_block = sample_times(B * n_blocks, cfg, generator).to(x0.device).view(B, n_blocks)  # (B, n_blocks)
    t = t_block[:, block_ids(L, cfg.block_size, x0.device)]  # (B, L): each token's block time
    zt, masked = corrupt(x0, t, schedule, mask_id, generator)
    tokens = torch.cat([zt, x0], dim=1)  # (B, 2L)
    positions = torch.arange(L, device=x0.device).repeat(2)  # both copies at 0..L-1
    h = model.hidden(tokens, attn_mask=training_mask(L, cfg.block_size, x0.device), positions=positions)[:, :L]
    logits = model.head(h[masked]).float()  # (N, V)
    nll = F.cross_entropy(logits, x0[masked], reduction="none")  # (N,)
    n = int(masked.sum())
    if cfg.loss is LossKind.NELBO:
        loss = (schedule.weight(t)[masked] * nll).sum() / (B * L)
    else:
        loss = nll.sum() / max(n, 1)
    return LossOutput(loss=loss, masked_tokens=n, nll_sum=nll.sum().detach())
