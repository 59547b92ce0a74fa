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

from sunfish.config import ProcessConfig
from sunfish.process.curriculum import FINAL, Stage
from sunfish.process.masked import (LossOutput, corrupt, nelbo, per_row, sample_times, scored_positions,
                                    times_and_weights)
from sunfish.process.schedules import MaskSchedule


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
    model: torch.nn.Module, x0: torch.Tensor, cfg: ProcessConfig, mask_id: int, generator: torch.Generator,
    stage: Stage = FINAL,
) -> LossOutput:
    """NELBO (or masked CE) of BD3-LM on x0 (B, L) with block size cfg.block_size (the caller puts a block-size
    curriculum's size there) and times up to the stage's t_max."""
    schedule = MaskSchedule(cfg.mask_schedule, cfg.eps)
    B, L = x0.shape
    n_blocks = -(-L // cfg.block_size)
    t_block = sample_times(B * n_blocks, cfg, generator, stage.t_max).to(x0.device).view(B, n_blocks)  # (B, n_blocks)
    t = t_block[:, block_ids(L, cfg.block_size, x0.device)]  # (B, L): each token's block time
    zt, masked = corrupt(x0, t, schedule, mask_id, generator)
    tokens = torch.cat([zt, x0], dim=1)  # (B, 2L)
    positions = torch.arange(L, device=x0.device).repeat(2)  # both copies at 0..L-1
    h = model.hidden(tokens, attn_mask=training_mask(L, cfg.block_size, x0.device), positions=positions)[:, :L]
    logits = model.head(h[masked]).float()  # (N, V)
    nll = F.cross_entropy(logits, x0[masked], reduction="none")  # (N,)
    loss = nelbo(nll, schedule.weight(t)[masked], B * L, cfg.loss)
    return LossOutput(loss=loss, masked_tokens=int(masked.sum()), nll_sum=nll.sum().detach())


def block_nats(model, x, cfg: ProcessConfig, mask_id: int, u: torch.Tensor, generator: torch.Generator,
               scored: torch.Tensor | None = None) -> torch.Tensor:
    """One-sample BD3-LM NELBO (nats) of x[scored] (default x[:, 1:]): the masked-diffusion bound of each block
    given the clean blocks before it; block b of row j gets u_j + b / n_blocks (mod 1). x: (B, L) -> (B,)"""
    schedule = MaskSchedule(cfg.mask_schedule, cfg.eps)
    B, L = x.shape
    ids = block_ids(L, cfg.block_size, x.device)  # (L,)
    n_blocks = int(ids[-1]) + 1
    ub = (u[:, None] + torch.arange(n_blocks, device=x.device) / n_blocks) % 1.0  # (B, n_blocks)
    t_block, w_block = times_and_weights(ub, cfg, schedule)
    zt, masked = corrupt(x, t_block[:, ids], schedule, mask_id, generator)  # (B, L)
    masked &= scored_positions(x, scored)
    zt = torch.where(masked, zt, x)
    return per_row(w_block[:, ids][masked].float() * block_scores(model, zt, x, t_block, masked, cfg), masked)


def block_scores(model, z: torch.Tensor, x: torch.Tensor, t: torch.Tensor, where: torch.Tensor,
                 cfg: ProcessConfig) -> torch.Tensor:
    """-log p of the tokens of x (B, L) at `where` (B, L) (N,), given the corrupted z (B, L) and the clean earlier
    blocks (the noised and the clean copy under BD3-LM's mask; block models take no time t)."""
    L = x.shape[1]
    positions = torch.arange(L, device=x.device).repeat(2)
    h = model.hidden(torch.cat([z, x], dim=1), attn_mask=training_mask(L, cfg.block_size, x.device),
                     positions=positions)[:, :L]  # (B, L, D)
    return F.cross_entropy(model.head(h[where]).float(), x[where], reduction="none")  # (N,)
