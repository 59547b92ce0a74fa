"""ReMDM remasking (Wang et al. 2025, "Remasking Discrete Diffusion Models with Inference-Time Scaling").

Plain masked-diffusion samplers never take a committed token back. ReMDM's backward process from time t
to s re-masks each decoded token with probability sigma_t and unmasks more, so that the fraction of clean
tokens still follows alpha:
    decoded -> [MASK]  with probability sigma_t,
    [MASK]  -> token   with probability (alpha_s - (1 - sigma_t) alpha_t) / (1 - alpha_t),
    0 <= sigma_t <= sigma_max = min(1, (1 - alpha_s) / alpha_t).
Here alpha is measured on the active block, which lets remasking ride on every step rule: with D of the
block's n generated positions decoded and c commits chosen by the rule, alpha_t = D / n and
alpha_s = (D + c) / n, so sigma_max = min(1, (n - D - c) / D), the masks left after the step per decoded
token. The r tokens re-masked in a step are matched by r extra commits (the next best by the rule's
ranking), so each step leaves exactly the masks the rule planned and a block still finishes (the fixed
schedule in exactly its `steps`). Strategies (ReMDM section 4):
    cap:     sigma = min(eta, sigma_max)
    rescale: sigma = eta * sigma_max
    conf:    sigma_l = min(1, D softmax(-psi)_l min(eta, sigma_max)), psi_l the probability token l had when
             it was committed: cap's expected count, spent on the least confident tokens first.
Remasking runs only while the block's decoded fraction alpha_t lies in [remask_start, remask_end) (the
late steps, ReMDM's "switch" schedule). Prompt and context positions are never candidates.
"""

from __future__ import annotations

import torch

from sunfish.config import RemaskKind, SamplerConfig
from sunfish.sample.batch import Generators, uniform
from sunfish.sample.policies import top_ranked


def remask_sigma(decoded: torch.Tensor, psi: torch.Tensor, masks_left: torch.Tensor, cfg: SamplerConfig) -> torch.Tensor:
    """Per-token remasking probability (B, n) of the decoded positions `decoded` (B, n); psi (B, n) are their
    confidences at commit time and masks_left (B,) the masks the step leaves."""
    d = decoded.sum(-1).clamp_min(1)  # (B,)
    sigma_max = (masks_left / d).clamp(max=1.0)  # (B,)
    if cfg.remask is RemaskKind.RESCALE:
        sigma = (cfg.remask_eta * sigma_max)[:, None].expand_as(psi)
    elif cfg.remask is RemaskKind.CAP:
        sigma = sigma_max.clamp(max=cfg.remask_eta)[:, None].expand_as(psi)
    else:  # CONF
        weights = (-psi).masked_fill(~decoded, float("-inf")).softmax(-1).nan_to_num(0.0)  # (B, n)
        sigma = (d[:, None] * weights * sigma_max.clamp(max=cfg.remask_eta)[:, None]).clamp(max=1.0)
    return sigma.masked_fill(~decoded, 0.0)


def remask(decoded: torch.Tensor, generated: torch.Tensor, psi: torch.Tensor, masks_left: torch.Tensor,
           cfg: SamplerConfig, generator: Generators, rows: torch.Tensor) -> torch.Tensor:
    """Positions (B, n) of the active block to re-mask in this step.

    decoded (B, n): generated positions already committed before this step; generated (B, n): positions the
    sampler writes (never prompt or context); psi (B, n): confidences at commit time; masks_left (B,): masks
    the step's commits leave; rows (B,): rows with work in the block (only they draw noise).
    """
    none = torch.zeros_like(decoded)
    if cfg.remask is RemaskKind.NONE:
        return none
    if cfg.remask_start > cfg.remask_end:
        raise ValueError(f"sampler.remask_start ({cfg.remask_start}) is after remask_end ({cfg.remask_end}); "
                         "the remasking window must start before it ends")
    progress = decoded.sum(-1) / generated.sum(-1).clamp_min(1)  # alpha_t of the block (B,)
    on = rows & (progress >= cfg.remask_start) & (progress < cfg.remask_end) & (masks_left > 0) & decoded.any(-1)
    if not bool(on.any()):
        return none
    sigma = remask_sigma(decoded, psi, masks_left, cfg)  # (B, n)
    u = uniform(tuple(decoded.shape), generator, rows=on).to(decoded.device)  # (B, n)
    take = decoded & (u < sigma) & on[:, None]
    # at most masks_left, so that as many extra commits can replace them; the most clearly drawn go first
    return top_ranked(-(u / sigma.clamp_min(1e-12)), take, masks_left)
