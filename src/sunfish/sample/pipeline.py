"""Pipelined multi-block decoding (D2F: Wang et al. 2025, "Diffusion LLMs Can Do Faster-Than-AR Inference via
Discrete Diffusion Forcing", arXiv 2508.09192): several blocks of a block-diffusion model denoised at once.

Plain block decoding (block.py) starts block k+1 only once block k is finished. Under block-causal attention a
position sees its own block and the blocks before it, never later ones, so block k+1 can be denoised while block k
is still partly masked, and nothing decoded later changes what an earlier block sees. D2F's pipeline, per row:

* a new block joins once at least `pipeline_start` (D2F's tau_add) of the newest block in flight is committed, with
  at most `pipeline_depth` blocks in flight counted from the first unfinished one;
* a block is fully activated once `pipeline_activate` (tau_act) of the block before it is committed (at once when
  that block is finished): from then on it decodes by the sampler's own rule (threshold, fixed count, ancestral,
  ...: unmask.py's `_choose`), planned over the masks it has left and its share of the steps (as block.py plans a
  whole block);
* until then it is semi-activated: it commits exactly the positions whose confidence reaches `pipeline_threshold`
  (tau_conf), and nothing when none does.

Each step is one forward pass over the columns from the first block not in the cache to the last block in flight,
block-causal inside that span and attending to the whole cache. The blocks every row had finished (with all blocks
before them) before the pass are clean in it, so the keys and values it computes for them are exact: they stay in
the cache and are never recomputed. That append rides on the step's pass, as in D2F, instead of a pass of its own,
so `nfe` = `steps` = forward passes (besides the prompt's one pass, which block decoding does not count either).

Rows are scheduled independently, so a row of a batch (one generator per row, left padding: batch.py) decodes as it
would alone; with EOS, a row stops at its first finished block that holds an EOS (its masks after the EOS become
EOS). With `pipeline_start` = 1 a block starts only when the one before it is finished, and the tokens are
block_generate's (in a batch, up to each row's first EOS: block_generate stops only when every row has one).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from sunfish.config import CommitRule, Policy, SamplerConfig
from sunfish.model.kv_cache import KVCache
from sunfish.process.schedules import MaskSchedule
from sunfish.sample.batch import Generators, Padding
from sunfish.sample.block import check_request, encode_prompt
from sunfish.sample.policies import ADAPTIVE
from sunfish.sample.unmask import (SampleResult, StepInfo, _Plan, _choose, _draw, _finish_after_eos, banned_ids,
                                   steps_per_block)


class _CachedSpan:
    """Logits of a span of consecutive blocks given the exact cache of everything before it."""

    def __init__(self, model, cache: KVCache, blocks: list[tuple[int, int]], padding: Padding | None,
                 banned: Sequence[int]):
        self.model, self.cache, self.blocks, self.padding, self.banned = model, cache, blocks, padding, list(banned)

    def _attention(self, first: int, last: int, device) -> dict:
        """`hidden` arguments for queries at blocks first..last over the cache and the span: block-causal."""
        lo, hi = self.blocks[first][0], self.blocks[last][1]
        ids = torch.cat([torch.full((b - a,), i, device=device) for i, (a, b) in enumerate(self.blocks[first : last + 1])])
        allowed = torch.cat([torch.ones(hi - lo, lo, dtype=torch.bool, device=device), ids[:, None] >= ids[None, :]],
                            dim=1)  # (L, lo + L): the whole cache, then the span block-causally
        if self.padding is None:
            return {"attn_mask": allowed}
        return {"attn_mask": allowed[None, None] & self.padding.real(hi)[:, None, None, :],  # (B, 1, L, hi)
                "positions": self.padding.positions(lo, hi)}

    def __call__(self, x: torch.Tensor, first: int, last: int, keep: int) -> torch.Tensor:
        """Logits (B, hi - lo, V) of the columns [lo, hi) of blocks first..last of canvas x (B, L); the cache holds
        the columns before lo. The keys and values of blocks first..keep - 1 (clean, as is all before them) are
        appended to the cache."""
        lo, hi = self.blocks[first][0], self.blocks[last][1]
        self.cache.span, self.cache.commit = (lo, hi), keep > first
        h = self.model.hidden(x[:, lo:hi], None, self.cache, **self._attention(first, last, x.device))  # (B, L, D)
        if keep > first:
            self.cache.keep(self.blocks[keep][0])
        self.cache.commit = False
        logits = self.model.head(h).float()  # (B, hi - lo, V)
        logits[..., self.banned] = float("-inf")
        return logits


@dataclass
class _Row:
    """Where one row's pipeline stands."""

    added: int = 0  # blocks started
    front: int = 0  # leading blocks finished
    plans: dict[int, _Plan] = field(default_factory=dict)  # the fully activated blocks' plans
    done: bool = False


class _Pipeline:
    """The per-row schedule: which blocks are in flight, which are fully activated, which are finished."""

    def __init__(self, blocks: list[tuple[int, int]], budget: list[int], rows: int, mask_id: int, cfg: SamplerConfig,
                 schedule: MaskSchedule, eos_id: int | None):
        self.blocks, self.budget, self.mask_id, self.cfg, self.schedule = blocks, budget, mask_id, cfg, schedule
        self.eos_id = eos_id if cfg.stop_at_eos else None
        self.rows = [_Row() for _ in range(rows)]
        self.left: dict[int, list[int]] = {}  # block -> masks left in each row, counted once a step

    def count(self, x: torch.Tensor, rows: range | list[int] | None = None) -> None:
        """Count the masks left in the blocks any row has in flight or starts next (one sync per block)."""
        live = [r for r in self.rows if not r.done] or self.rows
        first, last = min(r.front for r in live), min(max(r.added for r in live), len(self.blocks) - 1)
        if rows is None:
            self.left = {i: (x[:, lo:hi] == self.mask_id).sum(1).tolist()
                         for i, (lo, hi) in enumerate(self.blocks[first : last + 1], start=first)}
            return
        for b in rows:
            for i in self.left:
                lo, hi = self.blocks[i]
                self.left[i][b] = int((x[b, lo:hi] == self.mask_id).sum())

    def committed(self, b: int, i: int) -> float:
        """Fraction of row b's block i that is committed."""
        lo, hi = self.blocks[i]
        return 1.0 - self.left[i][b] / (hi - lo)

    def finished(self, b: int, i: int) -> bool:
        """No masks left, or (planned rules under remasking) no steps left."""
        lo, hi = self.blocks[i]
        plan = self.rows[b].plans.get(i)
        return self.left[i][b] == 0 or (plan is not None and not plan.more(self.cfg, hi - lo))

    def _skip_idle(self, x: torch.Tensor, b: int) -> None:
        """Steps that would commit nothing are skipped without a pass, as block decoding does (ancestral_topk)."""
        if self.cfg.rule is not CommitRule.ANCESTRAL_TOPK:
            return
        for i, plan in self.rows[b].plans.items():
            lo, hi = self.blocks[i]
            masked = x[b : b + 1, lo:hi] == self.mask_id  # (1, n)
            while masked.any() and plan.more(self.cfg, hi - lo) and plan.idle(masked, self.cfg, self.schedule):
                plan.k += 1

    def advance(self, x: torch.Tensor) -> None:
        """Before a step: move each row's front past its finished blocks, stop rows at EOS, start and activate
        blocks. May write EOS into x (B, L) in place."""
        cfg, n = self.cfg, len(self.blocks)
        self.count(x)
        for b, row in enumerate(self.rows):
            if row.done:
                continue
            self._skip_idle(x, b)
            while row.front < row.added and self.finished(b, row.front):
                row.plans.pop(row.front, None)
                row.front += 1
            if self.eos_id is not None and row.front > 0:
                filled, stop = _finish_after_eos(x[b : b + 1], self.blocks[row.front - 1][1], self.eos_id, self.mask_id)
                if not torch.equal(filled[0], x[b]):
                    x[b] = filled[0]
                    self.count(x, [b])
                row.done = stop
            if row.done or row.front == n:
                row.done, row.front = True, n
                continue
            newest = row.added - 1
            if row.added < n and row.added - row.front < cfg.pipeline_depth and (
                    row.added == row.front or self.committed(b, newest) >= cfg.pipeline_start):
                row.added += 1
            for i in range(row.front, row.added):
                if i not in row.plans and (i == row.front or self.committed(b, i - 1) >= cfg.pipeline_activate):
                    lo, hi = self.blocks[i]
                    row.plans[i] = _Plan.start(x[b : b + 1, lo:hi] == self.mask_id, self.budget[i], cfg)
            self._skip_idle(x, b)

    def groups(self, i: int) -> tuple[list[int], dict[tuple[int, int], list[int]]]:
        """Rows that decode block i this step: the semi-activated ones, and the fully activated ones by plan state
        (step k, steps n), which a batched `_choose` call must share."""
        semi: list[int] = []
        full: dict[tuple[int, int], list[int]] = {}
        for b, row in enumerate(self.rows):
            if row.done or not row.front <= i < row.added or self.finished(b, i):
                continue
            plan = row.plans.get(i)
            if plan is None:
                semi.append(b)
            else:
                full.setdefault((plan.k, plan.n_steps), []).append(b)
        return semi, full

    @property
    def done(self) -> bool:
        return all(row.done for row in self.rows)


def _rows_of(generator: Generators, rows: list[int]) -> Generators:
    """The generators of `rows` (one generator: itself)."""
    return generator if isinstance(generator, torch.Generator) else [generator[b] for b in rows]


@dataclass
class _Canvas:
    """The canvas (B, L), each token's confidence when committed (ReMDM) and this step's changes."""

    x: torch.Tensor
    psi: torch.Tensor
    generated: torch.Tensor  # (B, L) masked on entry
    revealed: torch.Tensor | None = None  # (B, L) committed in this step
    remasked: torch.Tensor | None = None  # (B, L) masked again in this step

    def begin(self) -> None:
        self.x, self.psi = self.x.clone(), self.psi.clone()
        self.revealed = torch.zeros_like(self.generated)
        self.remasked = torch.zeros_like(self.generated)

    def write(self, rows: list[int], lo: int, hi: int, chosen, drawn, conf, again, mask_id: int) -> None:
        """Commit `chosen` (R, n) of block [lo, hi) of `rows` and mask `again` (R, n) there."""
        r = torch.tensor(rows, device=self.x.device)
        block = self.x[r, lo:hi]
        self.x[r, lo:hi] = torch.where(chosen, drawn, block.masked_fill(again, mask_id))
        self.psi[r, lo:hi] = torch.where(chosen, conf.to(self.psi.dtype), self.psi[r, lo:hi])
        self.revealed[r, lo:hi] |= chosen
        self.remasked[r, lo:hi] |= again


def _decode_block(canvas: _Canvas, pipe: _Pipeline, i: int, logits: torch.Tensor, cfg: SamplerConfig,
                  generator: Generators, schedule: MaskSchedule) -> None:
    """One step on block i: semi-activated rows commit what reaches pipeline_threshold, fully activated rows follow
    the sampler's rule. logits (B, n, V) are the block's."""
    lo, hi = pipe.blocks[i]
    mask_id = pipe.mask_id
    candidates = canvas.x[:, lo:hi] == mask_id  # (B, n)
    semi, full = pipe.groups(i)
    if semi:
        r = torch.tensor(semi, device=logits.device)
        _, _, drawn, probs = _draw(logits[r], candidates[r], cfg, _rows_of(generator, semi))
        conf = probs.gather(-1, drawn[..., None]).squeeze(-1)  # (R, n)
        chosen = candidates[r] & (conf >= cfg.pipeline_threshold)
        canvas.write(semi, lo, hi, chosen, drawn, conf, torch.zeros_like(chosen), mask_id)
    for (k, n_steps), rows in full.items():
        plans = [pipe.rows[b].plans[i] for b in rows]
        counts = None if plans[0].counts is None else torch.cat([p.counts for p in plans])  # (R, n_steps)
        r = torch.tensor(rows, device=logits.device)
        chosen, drawn, conf, again = _choose(logits[r], candidates[r], canvas.generated[r, lo:hi], canvas.psi[r, lo:hi],
                                             cfg, _Plan(k=k, n_steps=n_steps, counts=counts), _rows_of(generator, rows),
                                             schedule)
        for plan in plans:
            plan.k += 1
        canvas.write(rows, lo, hi, chosen, drawn, conf, again, mask_id)


def _budget(blocks: list[tuple[int, int]], cfg: SamplerConfig) -> list[int]:
    """Each block's share of `cfg.steps`, as block decoding shares them (unmask.denoise_blocks)."""
    sizes = [hi - lo for lo, hi in blocks]
    total = cfg.steps if cfg.rule is CommitRule.ANCESTRAL_TOPK else min(cfg.steps, sum(sizes))
    return [1] * len(blocks) if cfg.rule in ADAPTIVE else steps_per_block(total, sizes)


def check_pipeline(cfg: SamplerConfig) -> None:
    """Refuse, in one sentence, what pipelined decoding cannot do."""
    if cfg.policy is Policy.INFO_GAIN and cfg.rule in (CommitRule.FIXED, CommitRule.ANCESTRAL_TOPK):
        raise ValueError("pipelined decoding does not run the info_gain policy's lookahead passes; use another "
                         "policy or --sampler.pipeline_start 1")
    if cfg.rule is CommitRule.LEARNED:
        raise ValueError("pipelined decoding does not run the learned commit rule (its filter reads one block at a "
                         "time); use another rule or --sampler.pipeline_start 1")


@torch.no_grad()
def pipeline_generate(
    model: torch.nn.Module,
    prompt: torch.Tensor,
    length: int,
    mask_id: int,
    block_size: int,
    cfg: SamplerConfig,
    *,
    generator: Generators,
    schedule: MaskSchedule,
    callback: Callable[[StepInfo], None] | None = None,
    eos_id: int | None = None,
    padding: Padding | None = None,
    suppress: Sequence[int] = (),
) -> SampleResult:
    """Generate `length` tokens after `prompt` (B, P >= 1) with several blocks in flight; returns the canvas
    (B, P + length). Arguments as block.block_generate's; the pipeline reads cfg.pipeline_*."""
    B, P = prompt.shape
    check_request(model, P, length, cfg)
    check_pipeline(cfg)
    cache = encode_prompt(model, prompt, block_size, padding)
    x = torch.cat([prompt, torch.full((B, length), mask_id, dtype=prompt.dtype, device=prompt.device)], dim=1)
    blocks = [(lo, min(lo + block_size, P + length)) for lo in range(P, P + length, block_size)]
    span = _CachedSpan(model, cache, blocks, padding, banned_ids(mask_id, suppress, cfg.suppress_special))
    pipe = _Pipeline(blocks, _budget(blocks, cfg), B, mask_id, cfg, schedule, eos_id)
    canvas = _Canvas(x=x, psi=torch.zeros(x.shape, device=x.device), generated=x == mask_id)
    step, cached = 0, 0
    while True:
        canvas.begin()
        pipe.advance(canvas.x)
        if pipe.done:
            break
        keep = min(row.front for row in pipe.rows)  # every row has finished the blocks before `keep`
        last = max(row.added for row in pipe.rows if not row.done) - 1
        logits = span(canvas.x, cached, last, keep)  # (B, span, V)
        start = blocks[cached][0]
        for i in range(keep, last + 1):
            lo, hi = blocks[i]
            _decode_block(canvas, pipe, i, logits[:, lo - start : hi - start], cfg, generator, schedule)
        cached, step = keep, step + 1
        if callback is not None:
            callback(StepInfo(step=step, tokens=canvas.x, masked=canvas.x == mask_id, revealed=canvas.revealed,
                              remasked=canvas.remasked))
    return SampleResult(tokens=canvas.x, steps=step, nfe=step)
