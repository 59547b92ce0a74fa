"""Drafters for speculative decoding (speculate.py): who proposes the commits the target verifies.

A drafter proposes d_2..d_K after the round's first commit d_1, each d_{j+1} drawn from its law q_j over the
(position, token) pairs of the canvas x_j = x + d_1..d_j (step_law.py), and returns that law with it so the
target can accept with min(1, p/q). At temperature 0 with a deterministic policy the laws are point masses and
only the commits are returned.

* `SelfDrafter` (self-speculative): the target's own logits at x, left stale. Its commits are the order in which
  the one-commit-per-step rule would commit if the predictions did not change: the candidates by descending
  policy score at T = 0; in general q_j is the step law of the stale logits over the masks left at x_j.
  No extra forward pass.
* `ModelDrafter` (draft model, `--sampler.speculate draft`): a small model with the same tokenizer, one forward
  pass per proposal on x_j. A masked-diffusion draft applies the target's rule and policy to its own logits; an
  autoregressive draft proposes the leftmost mask of the block with its next-token law
  q_j(i, v) = [i = leftmost] s(v).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from sunfish.config import CacheMode, SamplerConfig, Speculate
from sunfish.process.schedules import MaskSchedule
from sunfish.sample.step_law import deterministic, greedy_choice, greedy_order, sample_law, step_law, token_laws
from sunfish.sample.unmask import _Predictor


@dataclass(frozen=True)
class Proposal:
    pos: int  # position in the active block
    tok: int  # token id
    law: torch.Tensor | None  # (n, V) float64: the law it was drawn from (None when deterministic)


def _write(x: torch.Tensor, lo: int, commits: Sequence[Proposal]) -> torch.Tensor:
    x = x.clone()
    for c in commits:
        x[0, lo + c.pos] = c.tok
    return x


class SelfDrafter:
    """Proposals from the target's own stale logits (no forward pass)."""

    def __init__(self, cfg: SamplerConfig, mask_id: int):
        self.cfg, self.mask_id = cfg, mask_id

    def passes(self, proposals: int) -> int:
        return 0

    def propose(self, x: torch.Tensor, lo: int, hi: int, logits: torch.Tensor, first: Proposal, count: int,
                generator) -> list[Proposal]:
        """`count` proposals after `first` on x (1, L), from the target's logits (n, V) at x."""
        candidates = x[0, lo:hi] == self.mask_id  # (n,)
        candidates[first.pos] = False
        if count <= 0:
            return []
        if deterministic(self.cfg):
            order, tokens = greedy_order(logits, candidates, self.cfg, count)
            return [Proposal(int(p), int(t), None) for p, t in zip(order, tokens)]
        out = []
        for _ in range(count):
            law = step_law(logits[None], candidates[None], self.cfg)[0]
            pos, tok = sample_law(law, generator)
            out.append(Proposal(pos, tok, law))
            candidates[pos] = False
        return out


class ModelDrafter:
    """Proposals from a draft model, one forward pass of it per proposal."""

    def __init__(self, draft, cfg: SamplerConfig, mask_id: int, banned: Sequence[int]):
        self.model, self.cfg, self.mask_id, self.banned = draft.model, cfg, mask_id, list(banned)
        self.causal = draft.spec.causal
        schedule = MaskSchedule(draft.cfg.process.mask_schedule, draft.cfg.process.eps)
        self.predict = _Predictor(draft.model, mask_id, schedule, CacheMode.NONE, False, None, banned)

    def passes(self, proposals: int) -> int:
        return proposals

    def _logits(self, x: torch.Tensor, lo: int, hi: int, candidates: torch.Tensor) -> torch.Tensor:
        """The draft's logits (1, n, V) over the block; an AR draft fills only its leftmost mask's row."""
        if x.shape[1] > self.model.cfg.context:
            raise ValueError(f"the canvas ({x.shape[1]} tokens) exceeds the draft model's context of "
                             f"{self.model.cfg.context}; use a draft with a longer context or generate fewer tokens")
        if not self.causal:
            return self.predict(x, lo, hi)
        first = lo + int(candidates.long().argmax())
        row = self.model.head(self.model.hidden(x[:, :first])[:, -1]).float()  # (1, V): the next token after x[:first]
        row[:, self.banned] = float("-inf")
        out = torch.full((1, hi - lo, row.shape[-1]), float("-inf"), device=row.device)
        out[0, first - lo] = row[0]
        return out

    def propose(self, x: torch.Tensor, lo: int, hi: int, logits: torch.Tensor, first: Proposal, count: int,
                generator) -> list[Proposal]:
        out = [first]
        for _ in range(count):
            xj = _write(x, lo, out)
            candidates = xj[0, lo:hi] == self.mask_id  # (n,)
            draft = self._logits(xj, lo, hi, candidates)  # (1, n, V)
            if self.causal:
                out.append(self._causal(draft[0], candidates, generator))
            elif deterministic(self.cfg):
                pos, tok = greedy_choice(draft, candidates[None], self.cfg)
                out.append(Proposal(int(pos[0]), int(tok[0]), None))
            else:
                law = step_law(draft, candidates[None], self.cfg)[0]
                out.append(Proposal(*sample_law(law, generator), law))
        return out[1:]

    def _causal(self, draft: torch.Tensor, candidates: torch.Tensor, generator) -> Proposal:
        """The leftmost mask with the AR draft's next token (greedy at T = 0, else drawn from its law)."""
        pos = int(candidates.long().argmax())
        s, _ = token_laws(draft[pos], self.cfg)  # (V,)
        law = torch.zeros(draft.shape, dtype=torch.float64, device=draft.device)
        law[pos] = s
        if deterministic(self.cfg):
            return Proposal(pos, int(s.argmax()), None)
        return Proposal(*sample_law(law, generator), law)


def drafter_for(cfg: SamplerConfig, draft, mask_id: int, banned: Sequence[int]):
    """The drafter `cfg.speculate` names; `draft` is the loaded draft model (speculate=draft)."""
    if cfg.speculate is Speculate.SELF:
        return SelfDrafter(cfg, mask_id)
    if draft is None:
        raise ValueError("--sampler.speculate draft needs --sampler.draft PATH, the run folder of a draft model")
    return ModelDrafter(draft, cfg, mask_id, banned)

