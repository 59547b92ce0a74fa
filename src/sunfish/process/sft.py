"""Supervised fine-tuning objectives: the process's own loss restricted to the assistant's tokens.

A batch is (B, 2, L): tokens x0 and each token's role (data/sft.py): PROMPT tokens (system and user turns) are
the condition, never corrupted and never scored; RESPONSE tokens (the replies, their end tokens, and EOS padding
when `sft.pad = eos`) are what is learned; PAD tokens are neither corrupted nor scored.

* masked diffusion, LLaDA's SFT (Nie et al. 2025, section 2.3): one t per conversation, each response token masked
  with probability 1 - alpha(t), the prompt left clean; the NELBO over the masked response tokens, each
  conversation's sum divided by its response length, averaged over the batch;
* block diffusion: BD3-LM's loss with the prompt positions clean in the noisy copy and unscored;
* autoregressive: next-token cross-entropy on the response tokens only.
Continuous and flow models have none (`ProcessSpec.sft` is None): `sunfish sft` refuses them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sunfish.config import LossKind, ProcessConfig
from sunfish.process.block import block_ids, training_mask
from sunfish.process.masked import LossOutput, corrupt, sample_times
from sunfish.process.schedules import MaskSchedule
from sunfish.sample.chat import RESPONSE


def _response_loss(nll: torch.Tensor, weight: torch.Tensor, masked: torch.Tensor, response: torch.Tensor,
                   kind: LossKind) -> torch.Tensor:
    """nll, weight (N,) at the masked positions of masked (B, L): each conversation's sum(w nll) divided by its
    response length (response (B, L)), averaged over conversations (NELBO); or the mean cross-entropy (masked_ce)."""
    if kind is not LossKind.NELBO:
        return nll.sum() / max(nll.numel(), 1)
    length = response.sum(1, keepdim=True).clamp_min(1).expand_as(masked)[masked]  # (N,)
    return (weight * nll / length).sum() / masked.shape[0]


def masked_sft_loss(model, x0: torch.Tensor, roles: torch.Tensor, cfg: ProcessConfig, mask_id: int,
                    generator: torch.Generator) -> LossOutput:
    """LLaDA's SFT loss on conversations x0 (B, L) with roles (B, L) (see the module docstring)."""
    schedule = MaskSchedule(cfg.mask_schedule, cfg.eps)
    response = roles == RESPONSE  # (B, L)
    t = sample_times(x0.shape[0], cfg, generator).to(x0.device)  # (B,)
    zt, masked = corrupt(x0, t, schedule, mask_id, generator)
    masked &= response
    zt = torch.where(masked, zt, x0)  # prompt and padding stay clean
    h = model.hidden(zt, t if model.needs_time else None)  # (B, L, D)
    nll = F.cross_entropy(model.head(h[masked]).float(), x0[masked], reduction="none")  # (N,)
    w = schedule.weight(t)[:, None].expand_as(masked)[masked]  # (N,)
    return LossOutput(loss=_response_loss(nll, w, masked, response, cfg.loss), masked_tokens=int(masked.sum()),
                      nll_sum=nll.sum().detach())


def block_sft_loss(model, x0: torch.Tensor, roles: torch.Tensor, cfg: ProcessConfig, mask_id: int,
                   generator: torch.Generator) -> LossOutput:
    """BD3-LM's loss on conversations: a time per block, response tokens masked, the prompt clean in the noisy
    copy; scored on the masked response tokens, normalised as `masked_sft_loss`."""
    schedule = MaskSchedule(cfg.mask_schedule, cfg.eps)
    B, L = x0.shape
    response = roles == RESPONSE
    n_blocks = -(-L // cfg.block_size)
    t_block = sample_times(B * n_blocks, cfg, generator).to(x0.device).view(B, n_blocks)  # (B, n_blocks)
    t = t_block[:, block_ids(L, cfg.block_size, x0.device)]  # (B, L)
    zt, masked = corrupt(x0, t, schedule, mask_id, generator)
    masked &= response
    zt = torch.where(masked, zt, x0)
    positions = torch.arange(L, device=x0.device).repeat(2)
    h = model.hidden(torch.cat([zt, x0], dim=1), attn_mask=training_mask(L, cfg.block_size, x0.device),
                     positions=positions)[:, :L]
    nll = F.cross_entropy(model.head(h[masked]).float(), x0[masked], reduction="none")  # (N,)
    return LossOutput(loss=_response_loss(nll, schedule.weight(t)[masked], masked, response, cfg.loss),
                      masked_tokens=int(masked.sum()), nll_sum=nll.sum().detach())


def ar_sft_loss(model, x0: torch.Tensor, roles: torch.Tensor, cfg: ProcessConfig, mask_id: int,
                generator: torch.Generator) -> LossOutput:
    """Next-token cross-entropy on the response tokens of conversations x0 (B, L), averaged over them."""
    logits = model(x0[:, :-1]).float()  # (B, L - 1, V)
    scored = roles[:, 1:] == RESPONSE  # (B, L - 1): the targets that are response tokens
    nll = F.cross_entropy(logits[scored], x0[:, 1:][scored], reduction="none")  # (N,)
    return LossOutput(loss=nll.sum() / max(nll.numel(), 1), masked_tokens=nll.numel(), nll_sum=nll.sum().detach())
