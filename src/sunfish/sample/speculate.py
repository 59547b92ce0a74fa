"""Lossless speculative decoding for masked and block diffusion: several commits per target forward pass.

The target is the exact one-commit-per-step sampler: the fixed rule committing one token per step, ranked by
the configured policy, block by block (unmask.py, block.py), with the configured cache. A round at canvas x,
whose target logits are known, goes:

1. the first commit d_1 is drawn from the target's own step law at x (exact; after a rejection, from the
   residual below);
2. a drafter proposes d_2..d_K, each d_{j+1} drawn from its law q_j at x_j = x + d_1..d_j (drafter.py): the
   model itself from its stale logits at x (`--sampler.speculate self`: the order its rule would commit in if
   its predictions did not change), or a small draft model run on x_j (`--sampler.speculate draft`);
3. one batched target pass verifies: the canvases x_1..x_K, each with a prefix of the draft committed, are
   stacked in the batch dimension (the cache, if any, is shared by all rows); it gives the target's step law
   p_j at each x_j;
4. d_{j+1} is accepted with probability min(1, p_j(d_{j+1}) / q_j(d_{j+1})), in order, up to the first rejection.
   After a rejection at x_j, the next round starts at x_j (its logits are known) and its first commit is drawn
   from norm(max(p_j - q_j, 0)); after K acceptances it starts at x_K with p_K. Every pass commits at least one.

Theorem relied on: speculative sampling (Leviathan et al. 2023, arXiv 2211.17192, Theorem 3.5; Chen et al. 2023,
arXiv 2302.01318): accepting d ~ q with probability min(1, p(d)/q(d)) and otherwise drawing from
norm(max(p - q, 0)) yields a draw from p. It is applied to the outcome space of one step, the (position, token)
pairs: p_j(i, v) is the probability that the exact sampler's step at x_j writes token v at position i, the policy's
choice of position included (step_law.py gives it in closed form for every policy). "Per-step distribution" is
this joint law; as every committed step is drawn from it given the canvas before it, the sequence of canvases is
the exact sampler's Markov chain, so its output has the exact sampler's law. At temperature 0 with a
deterministic policy the laws are point masses: acceptance is equality with the target's own commit and the
output equals the exact sampler's token for token (the rejection's residual is the target's commit).

Self Speculative Decoding for dLLMs (arXiv 2510.04147) verifies drafts in one pass with a hierarchical tree and
Spiffy (arXiv 2509.18085) with calibrated draft graphs; here the draft is a chain and its K prefixes are K rows of
one batch: on a memory-bound accelerator at batch 1 that pass costs about one forward, on a compute-bound CPU
about K. Rows of a batch are decoded one after another, each as it would be alone.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import torch

from sunfish.config import CommitRule, Policy, RemaskKind, SamplerConfig, Speculate
from sunfish.model.kv_cache import KVCache
from sunfish.process.block import prefix_mask
from sunfish.process.schedules import MaskSchedule
from sunfish.sample.batch import uniform
from sunfish.sample.block import _CachedBlock
from sunfish.sample.drafter import Proposal, drafter_for
from sunfish.sample.step_law import deterministic, greedy_choice, sample_law, step_law
from sunfish.sample.unmask import SampleResult, StepInfo, _blocks, _finish_after_eos, _Predictor, banned_ids


def speculation_problem(cfg: SamplerConfig, given: set[str] | frozenset[str] = frozenset(), *,
                        draft_given: bool = False) -> str | None:
    """Why these settings cannot be decoded speculatively (one sentence), or None; `draft_given`: a draft model
    comes with the call (no sampler.draft path needed)."""
    if cfg.speculate is Speculate.NONE:
        return None
    if cfg.rule is not CommitRule.FIXED:
        return ("speculative decoding reproduces the fixed rule with one commit per step; drop --sampler.rule "
                f"{cfg.rule.value} or --sampler.speculate")
    if cfg.policy is Policy.INFO_GAIN:
        return "speculative decoding does not verify the info_gain policy's lookahead; use another policy"
    if cfg.remask is not RemaskKind.NONE:
        return "speculative decoding keeps committed tokens; drop --sampler.remask or --sampler.speculate"
    if cfg.guidance > 0:
        return "speculative decoding does not combine with classifier-free guidance; drop --sampler.guidance"
    if not cfg.suppress_special:
        return "speculative decoding needs sampler.suppress_special=true (a drawn [MASK] would not commit anything)"
    if cfg.pipeline_start < 1:
        return "speculative decoding verifies one block at a time; drop --sampler.pipeline_start or --sampler.speculate"
    if "steps" in given:
        return ("sampler.steps does nothing under speculative decoding, which reproduces one commit per step; "
                "drop --sampler.steps")
    if cfg.speculate is Speculate.DRAFT and not cfg.draft and not draft_given:
        return "--sampler.speculate draft needs --sampler.draft PATH, the run folder of a draft model"
    return None


@dataclass
class Tally:
    """What a speculative decode cost and achieved."""

    nfe: int = 0  # target forward passes (a batched verification pass counts once)
    canvases: int = 0  # canvases the target evaluated (a pass over K canvases counts K)
    draft_nfe: int = 0  # draft-model forward passes
    proposed: int = 0  # drafted commits put to the target
    accepted: int = 0  # of those, accepted
    steps: int = 0  # rounds (each commits at least one token)


@torch.no_grad()
def speculative_decode(model, canvas: torch.Tensor, fill_start: int, cfg: SamplerConfig, job, *, block_size: int,
                       schedule: MaskSchedule) -> SampleResult:
    """Fill the masks of canvas (B, L) (from `fill_start` on) as the exact sampler would (see the module docstring);
    `block_size` > 0: a block-diffusion model with its exact cache; `job` a registry.DecodeJob."""
    problem = speculation_problem(cfg, draft_given=job.draft is not None)
    if problem:
        raise ValueError(problem)
    if job.drift:
        raise ValueError("the drift report measures the plain cached sampler; drop --drift or --sampler.speculate")
    drafter = drafter_for(cfg, job.draft, job.mask_id, banned_ids(job.mask_id, job.suppress, True))
    out, tally = canvas.clone(), Tally()
    for b in range(canvas.shape[0]):
        pad = 0 if job.padding is None else int(job.padding.pad[b])
        generator = job.generator if isinstance(job.generator, torch.Generator) else job.generator[b]
        x = canvas[b : b + 1, pad:]
        callback = None if job.callback is None or canvas.shape[0] > 1 else job.callback
        decode = _Decode(model, cfg, drafter, job.mask_id, generator, tally, callback, job.eos_id,
                         banned_ids(job.mask_id, job.suppress, cfg.suppress_special))
        out[b, pad:] = (decode.block_model(x, fill_start - pad, block_size) if block_size else
                        decode.masked(x, schedule))[0]
    return SampleResult(tokens=out, steps=tally.steps, nfe=tally.nfe, draft_nfe=tally.draft_nfe,
                        accepted=tally.accepted, proposed=tally.proposed, canvases=tally.canvases)


@contextmanager
def _rows(predict, count: int):
    """Let a predictor whose cache holds one row evaluate `count` canvases at once (the cache broadcast)."""
    cache: KVCache | None = getattr(predict, "cache", None)
    if cache is None or not cache.filled or count == 1:
        yield
        return
    keys, values = cache.keys, cache.values
    cache.keys = [k.expand(count, *k.shape[1:]) for k in keys]
    cache.values = [v.expand(count, *v.shape[1:]) for v in values]
    try:
        yield
    finally:
        cache.keys, cache.values = keys, values


class _Decode:
    """One row's speculative decode (x is always (1, L))."""

    def __init__(self, model, cfg: SamplerConfig, drafter, mask_id: int, generator, tally: Tally,
                 callback: Callable[[StepInfo], None] | None, eos_id: int | None, banned: list[int]):
        self.model, self.cfg, self.drafter, self.mask_id = model, cfg, drafter, mask_id
        self.generator, self.tally, self.callback, self.eos_id, self.banned = generator, tally, callback, eos_id, banned

    def masked(self, x: torch.Tensor, schedule: MaskSchedule) -> torch.Tensor:
        if not (x == self.mask_id).any():
            return x
        predict = _Predictor(self.model, self.mask_id, schedule, self.cfg.cache, False, None, self.banned)
        return self.blocks(x, _blocks(x == self.mask_id, self.cfg.block_length), predict, None)

    def block_model(self, x: torch.Tensor, fill_start: int, block_size: int) -> torch.Tensor:
        """Block diffusion: the prompt's clean keys/values cached once (as block.block_generate does)."""
        if x.shape[1] > self.model.cfg.context:
            raise ValueError(f"the prompt ({fill_start} tokens) plus {x.shape[1] - fill_start} new tokens exceed the "
                             f"model's context of {self.model.cfg.context}")
        cache = KVCache()
        self.model.hidden(x[:, :fill_start], None, cache, attn_mask=prefix_mask(fill_start, block_size, x.device))
        predict = _CachedBlock(self.model, cache, self.mask_id, None, self.banned)
        blocks = [(lo, min(lo + block_size, x.shape[1])) for lo in range(fill_start, x.shape[1], block_size)]
        return self.blocks(x, blocks, predict, predict.commit)

    def blocks(self, x: torch.Tensor, blocks: list[tuple[int, int]], predict, after_block) -> torch.Tensor:
        for lo, hi in blocks:
            predict.refresh()
            if (x[:, lo:hi] == self.mask_id).any():
                x = self.block(x, lo, hi, predict)
            if after_block is not None:
                self.tally.nfe += after_block(x, lo, hi)
            if self.eos_id is not None and self.cfg.stop_at_eos:
                x, done = _finish_after_eos(x, hi, self.eos_id, self.mask_id)
                if done:
                    break
        return x

    def block(self, x: torch.Tensor, lo: int, hi: int, predict) -> torch.Tensor:
        """Decode the block [lo, hi) of x (1, L) in rounds (module docstring)."""
        logits, residual = predict(x, lo, hi)[0], None  # (n, V): the target at x
        self.tally.nfe, self.tally.canvases = self.tally.nfe + 1, self.tally.canvases + 1
        while (x[0, lo:hi] == self.mask_id).any():
            candidates = x[0, lo:hi] == self.mask_id  # (n,)
            left = int(candidates.sum())
            first = self.first_commit(logits, candidates, residual)
            drafts = self.drafter.propose(x, lo, hi, logits, first, min(self.cfg.draft_len, left) - 1, self.generator)
            commits = [first, *drafts]
            self.tally.draft_nfe += self.drafter.passes(len(drafts))
            rows = len(commits) if len(commits) < left else len(commits) - 1  # no row for a finished block
            canvases = self.canvases(x, lo, commits, rows)  # (rows, L)
            if rows:
                with _rows(predict, rows):
                    verified = predict(canvases, lo, hi)  # (rows, n, V)
                self.tally.nfe, self.tally.canvases = self.tally.nfe + 1, self.tally.canvases + rows
            kept, residual = self.verify(canvases, lo, verified if rows else None, commits)
            self.tally.proposed, self.tally.accepted = self.tally.proposed + len(drafts), self.tally.accepted + kept - 1
            before, x = x, (canvases[kept - 1 : kept] if kept <= rows else self.canvases(x, lo, commits, kept)[-1:])
            if rows and kept <= rows:
                logits = verified[kept - 1]
            self.tally.steps += 1
            if self.callback is not None:
                self.callback(StepInfo(step=self.tally.steps, tokens=x, masked=x == self.mask_id,
                                       revealed=(before == self.mask_id) & (x != self.mask_id)))
        return x

    def first_commit(self, logits: torch.Tensor, candidates: torch.Tensor, residual: torch.Tensor | None) -> Proposal:
        """The round's first commit: the target's own step at the current canvas (or the pending residual)."""
        if deterministic(self.cfg):
            pos, tok = greedy_choice(logits[None], candidates[None], self.cfg)
            return Proposal(int(pos[0]), int(tok[0]), None)
        law = residual if residual is not None else step_law(logits[None], candidates[None], self.cfg)[0]
        return Proposal(*sample_law(law, self.generator), None)

    def canvases(self, x: torch.Tensor, lo: int, commits: list[Proposal], rows: int) -> torch.Tensor:
        """(rows, L): row j holds x with commits 0..j written."""
        out = x.repeat(rows, 1)
        for j, c in enumerate(commits[:rows]):
            out[j:, lo + c.pos] = c.tok
        return out

    def verify(self, canvases: torch.Tensor, lo: int, verified: torch.Tensor | None,
               commits: list[Proposal]) -> tuple[int, torch.Tensor | None]:
        """How many commits stand (the first always does) and, after a rejection, the residual law for the next
        round's first commit (None at T = 0, where it is the target's own commit)."""
        for j, draft in enumerate(commits[1:]):
            candidates = canvases[j, lo : lo + verified.shape[1]] == self.mask_id  # (n,) at x_{j + 1}
            if deterministic(self.cfg):
                pos, tok = greedy_choice(verified[j : j + 1], candidates[None], self.cfg)
                if (int(pos[0]), int(tok[0])) != (draft.pos, draft.tok):
                    return j + 1, None
                continue
            p = step_law(verified[j : j + 1], candidates[None], self.cfg)[0]  # (n, V)
            ratio = p[draft.pos, draft.tok] / draft.law[draft.pos, draft.tok]
            if float(uniform((1,), self.generator, dtype=torch.float64)[0]) >= min(1.0, float(ratio)):
                rest = (p - draft.law).clamp_min(0.0)
                return j + 1, rest / rest.sum() if float(rest.sum()) > 0 else p
        return len(commits), None
