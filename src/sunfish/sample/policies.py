"""Which masked positions a denoising step commits: policy scores and the commit rules.

Fixed-count rules take the top k by a policy score (LLaDA). Adaptive rules decide k from the predictions
themselves, so the number of steps follows the text:
* threshold (Fast-dLLM, Wu et al. 2025): every position whose confidence reaches tau, at least one;
* factor (Fast-dLLM): with confidences sorted c_1 >= c_2 >= ..., the largest n with (n + 1)(1 - c_n) < f;
* entropy bound (EB-sampler, Ben-Hamu et al. 2025): positions in order of increasing entropy H while
  sum H - max H <= gamma.
Every adaptive rule commits at least the best position, so decoding always finishes.
"""

from __future__ import annotations

import torch

from sunfish.config import Policy, SamplerConfig, CommitRule
from sunfish.sample.batch import Generators, uniform

# rules whose step count follows the text (a block runs until it is full); the learned rule (learned.py) is one,
# though it chooses through its own filter rather than adaptive_count
ADAPTIVE = (CommitRule.THRESHOLD, CommitRule.FACTOR, CommitRule.ENTROPY_BOUND, CommitRule.LEARNED)


def policy_scores(probs: torch.Tensor, drawn: torch.Tensor, policy: Policy, generator: Generators,
                  rows: torch.Tensor | None = None) -> torch.Tensor:
    """Higher = reveal sooner. probs (B, n, V), drawn (B, n) -> (B, n). `rows` (B,): rows that draw noise."""
    if policy is Policy.CONFIDENCE:
        return probs.gather(-1, drawn[..., None]).squeeze(-1)
    if policy is Policy.MARGIN:
        top2 = probs.topk(2, dim=-1).values
        return top2[..., 0] - top2[..., 1]
    if policy is Policy.ENTROPY:
        return -entropy(probs)
    if policy is Policy.RANDOM:
        return uniform(tuple(drawn.shape), generator, rows=rows).to(probs.device)
    raise ValueError(f"the {policy.value} policy has no per-position score (info_gain chooses through sample/info_gain.py)")


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Shannon entropy in nats over the last axis, -sum p log(p + 1e-10) (Dream's form). (..., V) -> (...)."""
    return -(probs * (probs + 1e-10).log()).sum(-1)


def transfer_counts(n_masked: torch.Tensor, steps: int) -> torch.Tensor:
    """LLaDA's per-step reveal counts: n // N each, the remainder spread over the first steps. (B,) -> (B, N)."""
    base = n_masked // steps
    extra = n_masked % steps
    return base[:, None] + (torch.arange(steps, device=n_masked.device)[None, :] < extra[:, None]).long()


def _ranks(scores: torch.Tensor, candidates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank of each position by descending score among candidates (ties: lower position first),
    and the candidates' scores in rank order (non-candidates last, -inf). (B, n) -> (B, n), (B, n)."""
    scores = scores.masked_fill(~candidates, float("-inf"))
    order = scores.argsort(dim=-1, descending=True, stable=True)
    ranks = torch.empty_like(order).scatter_(-1, order, torch.arange(order.shape[-1], device=order.device).expand_as(order))
    return ranks, scores.gather(-1, order)


def top_ranked(scores: torch.Tensor, candidates: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Boolean (B, n): the k[b] highest-scoring candidates of each row."""
    ranks, _ = _ranks(scores, candidates)
    return (ranks < k[:, None]) & candidates


def adaptive_count(probs: torch.Tensor, drawn: torch.Tensor, candidates: torch.Tensor, cfg: SamplerConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores, k) for an adaptive rule: commit the k[b] best-scoring candidates of row b (k >= 1 where any)."""
    if cfg.rule is CommitRule.ENTROPY_BOUND:
        scores = -entropy(probs)  # (B, n)
        _, ordered = _ranks(scores, candidates)
        h = (-ordered).clamp_max(1e30)  # entropies in increasing order; inf for non-candidates
        cum = torch.cumsum(torch.where(torch.isfinite(h), h, 0.0), -1)
        fits = (cum - h <= cfg.entropy_bound) & torch.isfinite(h)  # sorted: H_max of the prefix is its last
    else:
        scores = probs.gather(-1, drawn[..., None]).squeeze(-1)  # confidence of the drawn token
        _, ordered = _ranks(scores, candidates)
        if cfg.rule is CommitRule.THRESHOLD:
            fits = ordered >= cfg.threshold  # Fast-dLLM keeps a confidence equal to the bar
        else:
            n = torch.arange(1, ordered.shape[-1] + 1, device=ordered.device)
            fits = (n + 1) * (1 - ordered) < cfg.factor
    k = fits.long().cumprod(-1).sum(-1).clamp_min(1)  # longest qualifying prefix, at least one
    return scores, torch.minimum(k, candidates.sum(-1))
