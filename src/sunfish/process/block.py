"""Block diffusion (BD3-LM, Arriola et al. 2025): masked diffusion inside blocks, autoregressive across them.

The sequence of L tokens is cut into blocks of B. Each block gets its own diffusion time t_b and is
corrupted independently. Training runs the noised copy x_t and the clean copy x_0 together (2L tokens,
both copies using positions 0..L-1) under one attention mask:
    noised block b  -> noised block b (bidirectional) and clean blocks < b;
    clean block b   -> clean blocks <= b (block-causal).
The loss is the masked-diffusion NELBO of each block given the clean blocks before it, normalised per
token. B = L is MDLM; B = 1 computes the autoregressive chain rule (each masked token sees x_<i).

Discrete diffusion forcing (D2F, Wang et al. 2025, arXiv 2508.09192), for a fraction `block_forcing` of the
sequences: one copy, block-causal, every block corrupted with its own time and the times sorted to rise along the
sequence, so each block learns to denoise given earlier blocks that are themselves partly masked, as they are when
several blocks are decoded at once (sample/pipeline.py). D2F distils a bidirectional teacher into that student;
here the same corruption trains the block model's own masked-diffusion loss.
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
    curriculum's size there) and times up to the stage's t_max; a fraction cfg.block_forcing of the rows (drawn per
    row; all of them at 1) is corrupted as in diffusion forcing instead (`_forcing_terms`)."""
    B = x0.shape[0]
    forced = torch.zeros(B, dtype=torch.bool, device=x0.device)
    if cfg.block_forcing >= 1:
        forced[:] = True
    elif cfg.block_forcing > 0:
        forced = (torch.rand(B, generator=generator, device=generator.device) < cfg.block_forcing).to(x0.device)
    terms = [fn(model, x0[rows], cfg, mask_id, generator, stage.t_max)
             for fn, rows in ((_bd3_terms, ~forced), (_forcing_terms, forced)) if rows.any()]
    nll, weight = torch.cat([n for n, _ in terms]), torch.cat([w for _, w in terms])  # (N,), (N,)
    loss = nelbo(nll, weight, x0.numel(), cfg.loss)
    return LossOutput(loss=loss, masked_tokens=nll.numel(), nll_sum=nll.sum().detach())


def _block_times(x0: torch.Tensor, cfg: ProcessConfig, generator: torch.Generator, t_max: float) -> torch.Tensor:
    """One time per block of each row (B, n_blocks), up to t_max."""
    n_blocks = -(-x0.shape[1] // cfg.block_size)
    return sample_times(x0.shape[0] * n_blocks, cfg, generator, t_max).to(x0.device).view(x0.shape[0], n_blocks)


def _bd3_terms(model, x0: torch.Tensor, cfg: ProcessConfig, mask_id: int, generator: torch.Generator,
               t_max: float) -> tuple[torch.Tensor, torch.Tensor]:
    """BD3-LM: -log p of the masked tokens of x0 (B, L) and their weights w(t), both (N,): each noised block
    given the clean copy's earlier blocks."""
    schedule = MaskSchedule(cfg.mask_schedule, cfg.eps)
    L = x0.shape[1]
    t = _block_times(x0, cfg, generator, t_max)[:, block_ids(L, cfg.block_size, x0.device)]  # (B, L): block times
    zt, masked = corrupt(x0, t, schedule, mask_id, generator)
    tokens = torch.cat([zt, x0], dim=1)  # (B, 2L)
    positions = torch.arange(L, device=x0.device).repeat(2)  # both copies at 0..L-1
    h = model.hidden(tokens, attn_mask=training_mask(L, cfg.block_size, x0.device), positions=positions)[:, :L]
    logits = model.head(h[masked]).float()  # (N, V)
    return F.cross_entropy(logits, x0[masked], reduction="none"), schedule.weight(t)[masked]


def _forcing_terms(model, x0: torch.Tensor, cfg: ProcessConfig, mask_id: int, generator: torch.Generator,
                   t_max: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Diffusion forcing (D2F): as `_bd3_terms`, but one block-causal copy whose block times rise along each row
    (sorted), so earlier blocks are partly masked too and each block is scored given them as they are."""
    schedule = MaskSchedule(cfg.mask_schedule, cfg.eps)
    ids = block_ids(x0.shape[1], cfg.block_size, x0.device)  # (L,)
    t = _block_times(x0, cfg, generator, t_max).sort(dim=1).values[:, ids]  # (B, L): rising along the row
    zt, masked = corrupt(x0, t, schedule, mask_id, generator)
    h = model.hidden(zt, attn_mask=block_causal_mask(ids))  # (B, L, D)
    logits = model.head(h[masked]).float()  # (N, V)
    return F.cross_entropy(logits, x0[masked], reduction="none"), schedule.weight(t)[masked]


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
    h = block_hidden(model, z, x, t, cfg)  # (B, L, D)
    return F.cross_entropy(model.head(h[where]).float(), x[where], reduction="none")  # (N,)


def block_hidden(model, z: torch.Tensor, x: torch.Tensor, t: torch.Tensor | None, cfg: ProcessConfig) -> torch.Tensor:
    """Hidden states (B, L, D) of the corrupted z (B, L), each block seeing the clean blocks of x (B, L) before it
    (the noised and the clean copy under BD3-LM's training mask); block models take no time t."""
    L = x.shape[1]
    positions = torch.arange(L, device=x.device).repeat(2)
    return model.hidden(torch.cat([z, x], dim=1), attn_mask=training_mask(L, cfg.block_size, x.device),
                        positions=positions)[:, :L]
