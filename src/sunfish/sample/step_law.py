"""One step of the one-commit-per-step fixed rule: the step itself (greedy) and its law over (position, token).

A step of the exact sampler (unmask.py, fixed rule, one commit per step) on a block with candidate positions C
(the masks): each candidate k draws a token V_k ~ s_k = softmax(l_k / T) from its filtered logits l_k (top-k,
top-p; at T = 0 the argmax), the policy scores the candidates and the best one (ties: the lower position, as
the stable ranking of policies.top_ranked) commits its token. Its law pi(i, v) = P(the step writes v at i):

* confidence (score c_k(V_k), c_k = softmax(l_k), the unscaled probabilities the sampler ranks by):
      pi(i, v) = s_i(v) * prod_{k < i} P(c_k(V_k) < c_i(v)) * prod_{k > i} P(c_k(V_k) <= c_i(v)),
  each factor the mass of s_k on the tokens w whose confidence c_k(w) lies below c_i(v) (independent draws);
* margin, entropy (scores that do not depend on the draw): pi(i*, v) = s_i*(v) at the best position i*;
* random (i.i.d. uniform scores): pi(i, v) = s_i(v) / |C|.
The confidence law costs n sorted look-ups of n V queries per canvas (n = block width): cheap for small blocks and
vocabularies, noticeable for LLaDA-sized ones at T > 0 (the greedy path never computes it).

Speculative decoding (speculate.py) needs this law for the target and for the drafter: a drafted commit d is
accepted with probability min(1, pi_target(d) / pi_draft(d)) (Leviathan et al. 2023, arXiv 2211.17192; Chen et
al. 2023, arXiv 2302.01318). `greedy_choice` and `greedy_order` are the deterministic step itself (T = 0, a
policy other than random), computed with the sampler's own functions so greedy outputs match token for token.
"""

from __future__ import annotations

import torch

from sunfish.config import Policy, SamplerConfig
from sunfish.sample.batch import Generators, uniform
from sunfish.sample.draw import filter_logits
from sunfish.sample.policies import policy_scores, top_ranked
from sunfish.sample.unmask import _draw  # the sampler's own draw: the greedy path must compute what it computes


def deterministic(cfg: SamplerConfig) -> bool:
    """Is a step a function of the logits (greedy tokens, a policy without noise)?"""
    return cfg.temperature <= 0 and cfg.policy is not Policy.RANDOM


def _greedy_scores(logits: torch.Tensor, candidates: torch.Tensor, cfg: SamplerConfig):
    """The sampler's drawn tokens (K, n) and policy scores (K, n) at T = 0 for logits (K, n, V)."""
    rows, _, drawn, probs = _draw(logits, candidates, cfg, None)
    return drawn, policy_scores(probs, drawn, cfg.policy, None, rows)


def greedy_choice(logits: torch.Tensor, candidates: torch.Tensor,
                  cfg: SamplerConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The commit of the exact greedy step on each of K canvases: positions (K,) in the block and tokens (K,).
    logits (K, n, V), candidates (K, n) bool (each row has at least one)."""
    drawn, scores = _greedy_scores(logits, candidates, cfg)
    one = torch.ones(candidates.shape[0], dtype=torch.long, device=candidates.device)
    pos = top_ranked(scores, candidates, one).long().argmax(-1)  # (K,)
    return pos, drawn.gather(-1, pos[:, None]).squeeze(-1)


def greedy_order(logits: torch.Tensor, candidates: torch.Tensor, cfg: SamplerConfig,
                 count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `count` commits the greedy rule would make if these predictions (n, V) never changed: the
    candidates (n,) by descending score, ties to the lower position. Positions (count,), tokens (count,)."""
    drawn, scores = _greedy_scores(logits[None], candidates[None], cfg)
    order = scores[0].masked_fill(~candidates, float("-inf")).argsort(descending=True, stable=True)[:count]
    return order, drawn[0, order]


def token_laws(logits: torch.Tensor, cfg: SamplerConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Per position: the law s of the drawn token (float64) and the confidences c the policy ranks by. (..., V)."""
    filtered = filter_logits(logits, cfg.top_k, cfg.top_p)
    if cfg.temperature > 0:
        s = (filtered.double() / cfg.temperature).softmax(-1)
    else:
        s = torch.nn.functional.one_hot(filtered.argmax(-1), filtered.shape[-1]).double()
    conf = (filtered.double() if cfg.fp64_confidence else filtered).softmax(-1)
    return s, conf


def step_law(logits: torch.Tensor, candidates: torch.Tensor, cfg: SamplerConfig) -> torch.Tensor:
    """pi (K, n, V) float64, summing to 1 per canvas: the law of the step's commit on K canvases.
    logits (K, n, V) raw (banned ids at -inf), candidates (K, n) bool."""
    s, conf = token_laws(logits, cfg)
    laws = []
    for k in range(logits.shape[0]):
        cand = candidates[k]
        if cfg.policy is Policy.CONFIDENCE:
            law = s[k] * _wins(s[k], conf[k], cand)
        elif cfg.policy is Policy.RANDOM:
            law = s[k] / cand.sum()
        else:  # margin, entropy: a deterministic position
            scores = policy_scores(conf[k][None], s[k].argmax(-1)[None], cfg.policy, None)
            best = top_ranked(scores, cand[None], torch.ones(1, dtype=torch.long, device=cand.device))[0]
            law = s[k] * best[:, None]
        law = law * cand[:, None]
        laws.append(law / law.sum())
    return torch.stack(laws)


def _wins(s: torch.Tensor, conf: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
    """(n, V): probability that position i, holding a token of confidence conf[i, v], outranks every other
    candidate's draw (the product in the module docstring). s, conf (n, V); cand (n,)."""
    n = s.shape[0]
    win = torch.ones_like(s)
    index = torch.arange(n, device=s.device)
    for k in cand.nonzero().flatten().tolist():
        sorted_conf, order = conf[k].sort()  # ascending (V,)
        cum = torch.cat([s.new_zeros(1), s[k][order].cumsum(0)])  # cum[j]: mass of the j least confident tokens
        below = cum[torch.searchsorted(sorted_conf, conf.contiguous(), right=False)]  # P(c_k(V_k) < conf[i, v])
        upto = cum[torch.searchsorted(sorted_conf, conf.contiguous(), right=True)]  # P(c_k(V_k) <= conf[i, v])
        factor = torch.where((index < k)[:, None], upto, below)  # a lower position wins ties
        factor[k] = 1.0
        win = win * factor
    return win


def sample_law(law: torch.Tensor, generator: Generators) -> tuple[int, int]:
    """One (position, token) drawn from a law (n, V) by inversion of its flattened CDF (zero entries never)."""
    cum = law.flatten().cumsum(0)
    u = uniform((1,), generator, dtype=torch.float64).to(law.device) * cum[-1]
    index = min(int(torch.searchsorted(cum, u, right=True)), cum.numel() - 1)
    return divmod(index, law.shape[1])
