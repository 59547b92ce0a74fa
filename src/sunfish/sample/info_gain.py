"""Info-Gain sampling (Yang, Teoh, Yang, Zhang and Lamb 2026, "Improving Sampling for Masked Diffusion Models
via Information Gain", arXiv 2602.18176): choose what a step commits by a one-step lookahead, not by local
certainty alone.

Notation: z_t the canvas, M_t its masked positions, H^(l)(z_t) = -sum_v p(v) log p(v) the entropy of the model's
marginal at position l. An action a commits tokens at a set A of masks (|A| = k, the count the commit rule gives).
    state uncertainty   H(z_t) = 1/|M_t| sum_{l in M_t} H^(l)(z_t)
    immediate cost      C(a | z_t) = sum_{l in A} H^(l)(z_t)
    information gain    IG(a; z_t) = H(z_t) - H(Apply(z_t, a))
    objective           J(a | z_t) = w IG(a; z_t) - C(a | z_t)      (the paper's objective is w = 1)
H(z_t) is the same for every action, so the argmax of J is that of -C(a) - w H(Apply(z_t, a)); the second term
needs one forward pass on the new state (the lookahead). J is maximised over a sampled candidate set:
* candidate 0 is what the heuristic policy would commit (its k best masks, with the step's drawn tokens);
* candidates 1..N-1 draw their tokens again (same temperature, top-k, top-p) and their k positions without
  replacement from softmax(heuristic score / tau) (Gumbel top-k); a position set already proposed is dropped.
Each distinct candidate costs one forward pass, counted in the sampler's NFE; the winner's pass holds the next
step's logits, so that step runs no pass of its own. H(Apply(z_t, a)) is averaged over the masks left in the
window the predictor returns for the lookahead: the rest of the canvas for masked models (without a cache or
with the prefix cache), the active block under the dual cache and for block diffusion (later blocks are not
computed there). Entropies are of the distribution the sampler draws from (after top-k and top-p).

Special cases. With w = 0 the objective is -C(a), which over all k-subsets is maximised exactly by the k
lowest-entropy masks: the sampler then commits those, with no candidates and no lookahead, which is the entropy
policy that Info-Gain generalises (`--policy entropy`, token for token). With one candidate it commits what its
heuristic policy commits. Left out: the authors' high-confidence bypass (commit masks above a probability bar
without lookahead), which commits fewer than the rule's count and so does not fit a fixed step budget.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sunfish.config import Policy, SamplerConfig
from sunfish.sample.batch import Generators, uniform
from sunfish.sample.draw import draw_tokens, filter_logits
from sunfish.sample.policies import entropy, policy_scores, top_ranked


@dataclass(frozen=True)
class Candidate:
    chosen: torch.Tensor  # (B, n) bool, the masks it commits
    tokens: torch.Tensor  # (B, n) the tokens it writes there
    fresh: torch.Tensor  # (B,) bool, False where an earlier candidate of the row commits the same positions


class InfoGain:
    """Chooses each step's commits by the Info-Gain objective; `passes` counts the lookahead forward passes."""

    def __init__(self, predict, cfg: SamplerConfig, generator: Generators, mask_id: int):
        if cfg.info_gain_heuristic is Policy.INFO_GAIN:
            raise ValueError("sampler.info_gain_heuristic cannot be info_gain itself; use confidence, margin, "
                             "entropy or random")
        self.predict, self.cfg, self.generator, self.mask_id = predict, cfg, generator, mask_id
        self.passes = 0
        # w = 0 leaves J = -C, whose exact maximiser over all k-subsets is the k lowest-entropy masks
        self.ranking = Policy.ENTROPY if cfg.info_gain_weight == 0 else cfg.info_gain_heuristic
        self.reuse = not getattr(predict, "track_drift", False)  # the drift report needs a fresh pass every step

    def choose(self, x: torch.Tensor, lo: int, hi: int, logits: torch.Tensor, probs: torch.Tensor,
               drawn: torch.Tensor, scores: torch.Tensor, count: torch.Tensor, masks: torch.Tensor, rows: torch.Tensor):
        """Commits for the block [lo, hi) of canvas x (B, L): (chosen (B, n), tokens (B, n), the next step's
        logits (B, n, V) or None). logits: the step's filtered logits (B, n, V); probs their softmax; drawn the
        step's tokens; scores the heuristic's (B, n); count (B,) the rule's commits; masks (B, n) the block's
        masks; rows (B,) rows with masks."""
        if self.cfg.info_gain_weight == 0:  # scores rank by negative entropy: their top k maximises -C(a)
            return top_ranked(scores, masks, count), drawn, None
        found = self._candidates(logits, probs, drawn, scores, count, masks, rows)
        if not any(bool(c.fresh.any()) for c in found[1:]):
            return found[0].chosen, found[0].tokens, None
        h = entropy(probs)  # (B, n)
        best = torch.full(count.shape, float("-inf"), dtype=torch.float64, device=count.device)
        pick, ahead = torch.zeros_like(count), None
        for i, c in enumerate(found):
            if not c.fresh.any():
                continue
            left, out = self._lookahead(x, lo, hi, c)
            objective = -(h * c.chosen).sum(-1).double() - self.cfg.info_gain_weight * left  # J(a) - w H(z_t)
            objective = objective.masked_fill(~c.fresh, float("-inf"))
            better = objective > best  # ties keep the earlier candidate (candidate 0 first, never a duplicate)
            best, pick = torch.where(better, objective, best), torch.where(better, i, pick)
            if self.reuse:
                ahead = out if ahead is None else torch.where(better[:, None, None], out, ahead)
        b = torch.arange(count.shape[0], device=count.device)
        chosen = torch.stack([c.chosen for c in found])[pick, b]  # (B, n)
        tokens = torch.stack([c.tokens for c in found])[pick, b]
        return chosen, tokens, ahead

    def _lookahead(self, x: torch.Tensor, lo: int, hi: int, c: Candidate) -> tuple[torch.Tensor, torch.Tensor]:
        """H(Apply(z_t, a)) per row (B,), and the block's logits (B, n, V) on the new state: one forward pass."""
        state = x.clone()
        state[:, lo:hi] = torch.where(c.chosen, c.tokens, x[:, lo:hi])
        end = self.predict.scope(lo, hi, x.shape[1])
        out = self.predict(state, lo, end)  # (B, end - lo, V)
        self.passes += 1
        left = state[:, lo:end] == self.mask_id  # (B, end - lo) masks still to fill
        h = entropy(self._probs(out))
        mean = (h * left).sum(-1) / left.sum(-1).clamp_min(1)  # 0 where nothing is left
        return mean.double(), out[:, : hi - lo]

    def _probs(self, logits: torch.Tensor) -> torch.Tensor:
        logits = filter_logits(logits, self.cfg.top_k, self.cfg.top_p)
        return (logits.double() if self.cfg.fp64_confidence else logits).softmax(-1)

    def _candidates(self, logits, probs, drawn, scores, count, masks, rows) -> list[Candidate]:
        """Candidate 0 (the heuristic's top k) and up to N - 1 others, in rows where there is a choice to make."""
        first = top_ranked(scores, masks, count)
        found = [Candidate(first, drawn, torch.ones_like(rows))]
        live = rows & (count > 0) & (count < masks.sum(-1))  # (B,) rows whose commit is not forced
        if not live.any():
            return found
        cfg = self.cfg
        for _ in range(cfg.info_gain_candidates - 1):
            tokens = torch.where(masks, draw_tokens(logits, cfg.temperature, self.generator, live), drawn)
            s = policy_scores(probs, tokens, cfg.info_gain_heuristic, self.generator, live)  # (B, n)
            u = uniform(tuple(s.shape), self.generator, dtype=torch.float64, rows=live).to(s.device)
            gumbel = -torch.log(-torch.log(u.clamp_min(1e-300)))
            chosen = top_ranked(s.double() / cfg.info_gain_temperature + gumbel, masks, count)
            seen = torch.stack([(chosen == c.chosen).all(-1) for c in found]).any(0)  # (B,)
            found.append(Candidate(chosen, tokens, live & ~seen))
        return found
