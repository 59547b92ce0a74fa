"""Iterative unmasking: the sampler for masked diffusion LMs.

`unmask` fills every [MASK] position of a canvas. Positions are processed in semi-autoregressive blocks
of `block_length` tokens (LLaDA, Nie et al. 2025), one block finished before the next starts. In each
step the model predicts the masked positions of the active block and a rule commits some of them:

* FIXED (LLaDA): `steps` are shared evenly among blocks; about n / N of a block's n masks are committed
  per step (the remainder goes to the first steps), those the policy ranks highest: confidence
  (probability of the drawn token), margin (top-1 minus top-2), negative entropy, or random order; or,
  under info_gain, the candidate commit a lookahead pass scores best (info_gain.py, arXiv 2602.18176). The
  rest stay masked ("low-confidence remasking").
* ANCESTRAL (MDLM, Sahoo et al. 2024): from time t to s < t each mask is revealed with probability
  (alpha(s) - alpha(t)) / (1 - alpha(t)); the last step of a block reveals the rest.
* ANCESTRAL_TOPK (Dream, Ye et al. 2025): that step's expected count, truncated (`dream_count`), of the
  positions the policy ranks highest; steps that would commit nothing are skipped.
* THRESHOLD, FACTOR, ENTROPY_BOUND: adaptive rules (see `policies.py`); the step count follows the text.
* LEARNED (Learn2PD, ICLR 2026): the masks a tiny trained filter passes, at least the most confident; its end
  head may end a row's text early (learned.py, trained by commit_tune.py).

Context tokens are never touched, and committed tokens never change unless `cfg.remask` takes some back
(ReMDM, see remask.py). Tokens are drawn with temperature, top-k and top-p through float64 Gumbel noise
(low-precision Gumbel noise degrades samples, as LLaDA notes). With `cfg.cache` the approximate key/value
cache of Fast-dLLM is used (model/kv_cache.py), refreshed when a block starts and, with `cfg.refresh_bound` B >= 0,
also within a block once the drift proxy reaches B: the largest total variation between the block's predictions
at still-masked positions now and at the last full pass (`_moved`; one softmax over the block per cached step, no
extra network pass). B = 0 refreshes before every step (the uncached sampler), a negative or infinite B never
within a block (Fast-dLLM); a positive B refreshes at most every other step. With `cfg.guidance` the
logits are classifier-free guided. Rows may carry their own generators and left padding (batch.py), so a
batch decodes each row as a batch of one would. A callback receives a `StepInfo` after each step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from sunfish.config import CacheMode, CommitRule, Policy, RemaskKind, SamplerConfig
from sunfish.model.kv_cache import KVCache
from sunfish.process.schedules import MaskSchedule
from sunfish.sample.batch import Generators, Padding, uniform
from sunfish.sample.draw import draw_step as _draw, filter_logits
from sunfish.sample.info_gain import InfoGain
from sunfish.sample.learned import LearnedRule
from sunfish.sample.policies import ADAPTIVE, adaptive_count, policy_scores, top_ranked, transfer_counts
from sunfish.sample.remask import remask


@dataclass(frozen=True)
class StepInfo:
    step: int  # 1-based step number
    tokens: torch.Tensor  # (B, L) canvas after this step
    masked: torch.Tensor  # (B, L) still masked
    revealed: torch.Tensor  # (B, L) committed in this step
    remasked: torch.Tensor | None = None  # (B, L) committed earlier and masked again in this step (ReMDM)
    logits: torch.Tensor | None = None  # (B, hi - lo, V) the active block's logits this step chose from
    block: tuple[int, int] | None = None  # the active block [lo, hi) of the canvas


@dataclass(frozen=True)
class Drift:
    """How far cached predictions were from exact ones at one cached step."""

    step: int
    max_abs: float  # max |cached - exact| over the block's log-probabilities
    mean_abs: float  # mean of the same
    committed_differ: float  # fraction of committed positions whose argmax differs


@dataclass(frozen=True)
class SampleResult:
    tokens: torch.Tensor  # (B, L) the filled canvas
    steps: int  # denoising steps taken
    nfe: int  # network function evaluations (full or cached forward passes)
    drift: list[Drift] = field(default_factory=list)  # per cached step, when asked for
    refreshes: list[int] = field(default_factory=list)  # per decoded block: full passes of the approximate cache
    #                                                     (1 = at the block's start only); empty without one
    draft_nfe: int = 0  # speculative decoding (speculate.py): draft-model forward passes
    accepted: int = 0  # ... drafted commits the target accepted
    proposed: int = 0  # ... drafted commits put to the target (acceptance rate = accepted / proposed)
    canvases: int = 0  # ... canvases the target evaluated (a verification pass over K canvases counts K)


def _blocks(masked: torch.Tensor, block_length: int) -> list[tuple[int, int]]:
    """[start, end) column ranges covering all masked positions, in order; blocks without masks are skipped."""
    any_masked = masked.any(0)
    cols = any_masked.nonzero().flatten()
    lo, hi = int(cols[0]), int(cols[-1]) + 1
    size = block_length if block_length > 0 else hi - lo
    return [(s, min(s + size, hi)) for s in range(lo, hi, size) if any_masked[s : s + size].any()]


def steps_per_block(total: int, sizes: list[int]) -> list[int]:
    """`total` steps shared among blocks of `sizes` masks: one each, the rest in proportion to each block's masks
    beyond its first (largest remainder first, earlier blocks on ties). Blocks of one size get LLaDA's even split
    (the remainder to the first blocks); total = all masks gives every block one step per mask."""
    n = len(sizes)
    if total < n:
        raise ValueError(f"{total} steps cannot cover {n} blocks; use at least one step per block or a larger block_length")
    spare, rest = [max(s - 1, 0) for s in sizes], total - n
    whole = sum(spare) or 1
    quotas = [rest * s / whole for s in spare]
    steps = [int(q) for q in quotas]
    for i in sorted(range(n), key=lambda i: (steps[i] - quotas[i], i))[: rest - sum(steps) if sum(spare) else 0]:
        steps[i] += 1
    return [1 + s for s in steps]


def banned_ids(mask_id: int, suppress: Sequence[int], enabled: bool = True) -> list[int]:
    """[MASK] (a canvas symbol) and the `suppress` ids: tokens a sampler never outputs; none when not `enabled`
    (sampler.suppress_special = false, as upstream samplers draw from every token)."""
    return sorted({mask_id, *suppress}) if enabled else []


class _Predictor:
    """Block logits from the model, through the key/value cache when one is configured."""

    passes = 1  # network evaluations per call

    def __init__(self, model, mask_id: int, schedule: MaskSchedule, mode: CacheMode, track_drift: bool,
                 padding: Padding | None = None, banned: Sequence[int] = (), refresh_bound: float = -1.0):
        self.model, self.mask_id, self.schedule, self.mode = model, mask_id, schedule, mode
        self.banned = list(banned)
        self.track_drift, self.padding = track_drift, padding
        self.cache: KVCache | None = None
        self.last_exact: torch.Tensor | None = None  # exact log-probs of the last cached step, for drift
        cached = mode is not CacheMode.NONE
        self.bound = refresh_bound if cached and refresh_bound >= 0 else None  # adaptive refresh (None: off)
        self.refreshes: int | None = 0 if cached else None  # full passes that filled the cache
        self.full = False  # the last call was a full pass
        self.anchor: torch.Tensor | None = None  # (B, n, V) the block's probabilities at the last full pass
        self.shift = 0.0  # the drift proxy at the last cached step: see _moved

    def refresh(self) -> None:
        self.cache, self.anchor, self.shift = None, None, 0.0

    def stale(self) -> bool:
        """Fill the cache anew on this call: at a block start, and under refresh_bound B once the proxy reached B
        (so B = 0 refreshes before every step)."""
        return self.cache is None or (self.bound is not None and self.shift >= self.bound)

    def scope(self, lo: int, hi: int, width: int) -> int:
        """End column of what a call for [lo, hi) can also return at no extra network cost (Info-Gain's lookahead
        scores every mask there): the canvas's end, but the block's under the dual cache, which recomputes it alone."""
        return hi if self.mode is CacheMode.DUAL else width

    def time(self, x: torch.Tensor) -> torch.Tensor | None:
        """Diffusion time (B,) from the masked fraction of each row's real tokens (None: no time input)."""
        if not self.model.needs_time:
            return None
        masked = x == self.mask_id
        if self.padding is None:
            return self.schedule.time_of_alpha(1.0 - masked.float().mean(1))
        return self.schedule.time_of_alpha(1.0 - masked.sum(1) / self.padding.real(x.shape[1]).sum(1))

    def _hidden(self, tokens: torch.Tensor, t, cache: KVCache | None, lo: int, width: int) -> torch.Tensor:
        rows = {} if self.padding is None else self.padding.attention(lo, lo + tokens.shape[1], width)
        return self.model.hidden(tokens, t, cache, **rows)

    def logits(self, x: torch.Tensor, lo: int, hi: int, t: torch.Tensor | None) -> torch.Tensor:
        """Raw logits (B, hi - lo, V) for the block [lo, hi) of canvas x (B, L)."""
        self.last_exact = None
        L = x.shape[1]
        self.full = self.mode is CacheMode.NONE or self.stale()
        if self.full:
            cache = None if self.mode is CacheMode.NONE else KVCache()
            out = self.model.head(self._hidden(x, t, cache, 0, L)[:, lo:hi]).float()
            self.cache = cache
            if cache is not None:
                self.refreshes += 1
                if self.bound is not None:
                    self.anchor, self.shift = out.softmax(-1), 0.0
            return out
        first = max(lo - getattr(self.model, "shift", 0), 0)  # a shifted model predicts lo from lo - 1
        span = (first, L) if self.mode is CacheMode.PREFIX else (first, hi)
        self.cache.span = span
        h = self._hidden(x[:, span[0] : span[1]], t, self.cache, first, L)[:, lo - first : hi - first]
        if self.track_drift:
            self.last_exact = self.model.head(self._hidden(x, t, None, 0, L)[:, lo:hi]).float().log_softmax(-1)
        out = self.model.head(h).float()
        if self.bound is not None:
            self.shift = _moved(out, self.anchor, x[:, lo:hi] == self.mask_id)
        return out

    def __call__(self, x: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        """Logits (B, hi - lo, V) for the block [lo, hi) of canvas x (B, L); [MASK] is never predicted."""
        logits = self.logits(x, lo, hi, self.time(x))
        logits[..., self.banned] = float("-inf")
        return logits


class _Guided:
    """Classifier-free guidance (as in LLaDA): logits = u + (1 + w)(c - u), with c the model's logits on the
    canvas and u on the canvas whose prompt is replaced by [MASK]. Each pass keeps its own cache."""

    passes = 2
    last_exact = None

    def __init__(self, cond: _Predictor, uncond: _Predictor, prompt: torch.Tensor, weight: float):
        self.cond, self.uncond, self.prompt, self.weight = cond, uncond, prompt, weight  # prompt (B, L) bool

    def refresh(self) -> None:
        self.cond.refresh()
        self.uncond.refresh()

    @property
    def refreshes(self) -> int | None:
        return self.cond.refreshes

    def scope(self, lo: int, hi: int, width: int) -> int:
        return self.cond.scope(lo, hi, width)

    def __call__(self, x: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        t = self.cond.time(x)
        c = self.cond.logits(x, lo, hi, t)  # (B, n, V)
        if self.cond.full:  # the unconditional pass refreshes its cache with the conditional one's
            self.uncond.cache = None
        u = self.uncond.logits(x.masked_fill(self.prompt, self.cond.mask_id), lo, hi, t)
        logits = u + (1.0 + self.weight) * (c - u)
        logits[..., self.cond.banned] = float("-inf")
        return logits


@torch.no_grad()
def unmask(
    model: torch.nn.Module,
    canvas: torch.Tensor,
    mask_id: int,
    cfg: SamplerConfig,
    *,
    generator: Generators,
    schedule: MaskSchedule,
    callback: Callable[[StepInfo], None] | None = None,
    eos_id: int | None = None,
    track_drift: bool = False,
    padding: Padding | None = None,
    suppress: Sequence[int] = (),
) -> SampleResult:
    """Fill the [MASK] positions of `canvas` (B, L); every other position is kept as given.

    With `eos_id` and `cfg.stop_at_eos`, once a finished block holds an EOS in every row, the masks after
    each row's first EOS become EOS and decoding stops (variable-length generation). `generator` may be one
    generator per row and `padding` the rows' left padding (batch.py): row b then decodes exactly as it
    would alone with generator[b]. `suppress`: token ids never drawn besides [MASK] (PAD, BOS, UNK). With `cfg.guidance` > 0 the prompt (every position that is neither a
    mask nor padding) is replaced by [MASK] in the unconditional pass.
    """
    x = canvas.clone()
    masked = x == mask_id
    if not masked.any():
        return SampleResult(tokens=x, steps=0, nfe=0)
    if track_drift and cfg.guidance > 0:
        raise ValueError("the drift report measures the unguided cache; drop --guidance or --drift")
    blocks = _blocks(masked, cfg.block_length)
    banned = banned_ids(mask_id, suppress, cfg.suppress_special)
    if cfg.refresh_bound >= 0 and cfg.cache is not CacheMode.NONE and _uses_info_gain(cfg):
        raise ValueError("adaptive cache refresh (refresh_bound) measures the block's own passes, which the info_gain "
                         "lookahead replaces; drop --refresh-bound or use another policy")
    predict = _Predictor(model, mask_id, schedule, cfg.cache, track_drift and cfg.cache is not CacheMode.NONE, padding,
                         banned, cfg.refresh_bound)
    if cfg.guidance > 0:
        prompt = ~masked if padding is None else ~masked & padding.real(x.shape[1])
        uncond = _Predictor(model, mask_id, schedule, cfg.cache, False, padding, banned)
        predict = _Guided(predict, uncond, prompt, cfg.guidance)
    return denoise_blocks(x, blocks, predict, mask_id, cfg, generator=generator, schedule=schedule,
                          callback=callback, eos_id=eos_id)


def denoise_blocks(
    x: torch.Tensor,
    blocks: list[tuple[int, int]],
    predict,
    mask_id: int,
    cfg: SamplerConfig,
    *,
    generator: Generators,
    schedule: MaskSchedule,
    callback: Callable[[StepInfo], None] | None = None,
    eos_id: int | None = None,
    after_block: Callable[[torch.Tensor, int, int], int] | None = None,
) -> SampleResult:
    """Decode `blocks` of canvas x (B, L) in order. `predict(x, lo, hi)` gives the block's logits and
    `predict.refresh()` is called at each block start; `after_block(x, lo, hi)` may run extra passes
    (returned as their count, for the NFE). Only the positions masked on entry are ever written. Under the
    info_gain policy a step's lookahead passes count in the NFE and the chosen one's logits serve the next step."""
    ig = _info_gain(predict, cfg, generator, mask_id)
    learned = LearnedRule.of(cfg, mask_id, eos_id, x.device)
    generated = x == mask_id  # (B, L)
    psi = torch.zeros(x.shape, device=x.device)  # confidence of each token when it was committed (ReMDM conf)
    budget = _budget(x, blocks, mask_id, cfg)
    step, calls, extra, drift, refreshes = 0, 0, 0, [], []
    for (lo, hi), n_steps in zip(blocks, budget):
        if not (x[:, lo:] == mask_id).any():  # every row ended early (the learned rule's end of text)
            break
        predict.refresh()
        filled = getattr(predict, "refreshes", None)  # full passes of an approximate cache so far
        plan, ahead = _Plan.start(x[:, lo:hi] == mask_id, n_steps, cfg), None
        while (x[:, lo:hi] == mask_id).any() and plan.more(cfg, hi - lo):
            if plan.idle(x[:, lo:hi] == mask_id, cfg, schedule):
                plan.k += 1
                continue
            if ahead is None:
                logits, exact, calls = predict(x, lo, hi), getattr(predict, "last_exact", None), calls + 1
            else:  # the lookahead pass of the commits just made
                logits, exact = ahead, None
            block = x[:, lo:hi]
            chosen, drawn, conf, remasked, ahead, tail = _step(ig, learned, x, lo, hi, logits, generated, psi, mask_id,
                                                               cfg, plan, generator, schedule)
            step, plan.k = step + 1, plan.k + 1
            if exact is not None:
                drift.append(_drift(step, logits, exact, chosen))
            x, psi = x.clone(), psi.clone()
            x[:, lo:hi] = torch.where(chosen, drawn, block.masked_fill(remasked, mask_id))
            psi[:, lo:hi] = torch.where(chosen, conf.to(psi.dtype), psi[:, lo:hi])
            x, revealed = _end_rows(x, _widen(chosen, x, lo), tail, eos_id)
            if callback is not None:
                callback(StepInfo(step=step, tokens=x, masked=x == mask_id, revealed=revealed,
                                  remasked=_widen(remasked, x, lo), logits=logits, block=(lo, hi)))
        refreshes += [] if filled is None else [predict.refreshes - filled]
        if after_block is not None:
            extra += after_block(x, lo, hi)
        if eos_id is not None and cfg.stop_at_eos:
            x, done = _finish_after_eos(x, hi, eos_id, mask_id)
            if done:
                break
    looked = 0 if ig is None else ig.passes
    return SampleResult(tokens=x, steps=step, nfe=(calls + looked) * getattr(predict, "passes", 1) + extra, drift=drift,
                        refreshes=refreshes)


def _budget(x: torch.Tensor, blocks: list[tuple[int, int]], mask_id: int, cfg: SamplerConfig) -> list[int]:
    """Steps per block: one each for the adaptive rules (they run until the block is full), else `cfg.steps`
    shared among the blocks (see steps_per_block and _Plan.start)."""
    sizes = [int((x[:, lo:hi] == mask_id).sum(1).max()) for lo, hi in blocks]
    total = cfg.steps if cfg.rule is CommitRule.ANCESTRAL_TOPK else min(cfg.steps, sum(sizes))  # see _Plan.start
    return [1] * len(blocks) if cfg.rule in ADAPTIVE else steps_per_block(total, sizes)


def _step(ig, learned, x, lo: int, hi: int, logits, generated, psi, mask_id: int, cfg: SamplerConfig, plan: "_Plan",
          generator, schedule):
    """One step's choice on the block [lo, hi) by the configured chooser: (chosen, drawn, conf, remasked (B, n),
    the next step's logits from the info_gain lookahead or None, canvas positions (B, L) that the learned rule
    ends with EOS or None)."""
    if learned is not None:
        chosen, drawn, conf, remasked, tail = learned.choose(x, lo, hi, logits, cfg, generator)
        return chosen, drawn, conf, remasked, None, tail
    if ig is not None:
        return *_choose_info_gain(ig, x, lo, hi, logits, cfg, plan, generator, schedule), None
    masked = x[:, lo:hi] == mask_id
    return *_choose(logits, masked, generated[:, lo:hi], psi[:, lo:hi], cfg, plan, generator, schedule), None, None


def _uses_info_gain(cfg: SamplerConfig) -> bool:
    return cfg.policy is Policy.INFO_GAIN and cfg.rule in (CommitRule.FIXED, CommitRule.ANCESTRAL_TOPK)


def _info_gain(predict, cfg: SamplerConfig, generator, mask_id: int):
    """The Info-Gain chooser when the policy is info_gain and the rule ranks by policy; else None."""
    if not _uses_info_gain(cfg):
        return None
    if cfg.remask is not RemaskKind.NONE:
        raise ValueError("the info_gain policy does not take committed tokens back; drop --remask or use another policy")
    return InfoGain(predict, cfg, generator, mask_id)


@dataclass
class _Plan:
    """Where a block's decoding stands: step k of n_steps; for the fixed rule, LLaDA's counts per step (B, n_steps),
    fixed at the block's start (get_num_transfer_tokens)."""

    k: int
    n_steps: int
    counts: torch.Tensor | None

    @staticmethod
    def start(masked: torch.Tensor, n_steps: int, cfg: SamplerConfig) -> "_Plan":
        # More steps than masks would only add steps that commit nothing, except under ancestral_topk: Dream's float32
        # counts over N steps > masks are not those over fewer (the last commits differ), so its N is kept (the
        # steps that commit nothing are skipped, see idle)
        if cfg.rule is not CommitRule.ANCESTRAL_TOPK:
            n_steps = max(1, min(n_steps, int(masked.sum(1).max())))
        counts = transfer_counts(masked.sum(1), n_steps) if cfg.rule is CommitRule.FIXED else None
        return _Plan(k=0, n_steps=n_steps, counts=counts)

    def more(self, cfg: SamplerConfig, width: int) -> bool:
        """Another step? Adaptive rules run until the block is full, planned ones for their n_steps."""
        if cfg.rule not in ADAPTIVE:
            return self.k < self.n_steps
        if self.k > 4 * width + 8:  # only a model that keeps drawing [MASK] (suppress_special = false) gets here
            raise ValueError(f"decoding made no progress in {self.k} steps on a block of {width}: the model keeps "
                             "drawing [MASK]; sample with --sampler.suppress_special=true (the default)")
        return True

    def idle(self, masked: torch.Tensor, cfg: SamplerConfig, schedule: MaskSchedule) -> bool:
        """Would this step commit nothing in any row? Only ancestral_topk steps can (without remasking); Dream
        runs the network for them all the same, which changes no token, so they are skipped."""
        if cfg.rule is not CommitRule.ANCESTRAL_TOPK or cfg.remask is not RemaskKind.NONE:
            return False
        return not bool(dream_count(masked.sum(1), self.k, self.n_steps, schedule).any())


def dream_count(masks: torch.Tensor, k: int, n_steps: int, schedule: MaskSchedule) -> torch.Tensor:
    """Dream's commits at step k of n_steps for rows with `masks` (B,) masks: the ancestral step's expected count
    truncated, floor(m (a_s - a_t) / (1 - a_t)) (linear: floor(m (1 - s / t))), with times t = linspace(1, eps,
    n_steps + 1) in float32 as Dream computes them; every remaining mask at the last step. (B,) -> (B,)"""
    if k == n_steps - 1:
        return masks
    times = torch.linspace(1.0, schedule.eps, n_steps + 1)
    return (masks.float() * schedule.reveal_fraction(times[k], times[k + 1]).to(masks.device)).long()


def _end_rows(x: torch.Tensor, revealed: torch.Tensor, tail: torch.Tensor | None, eos_id: int | None):
    """The learned rule's end of text: the `tail` positions (B, L; the masks after a row's ending EOS) become EOS
    and count as revealed (B, L) in this step. Returns (canvas, revealed)."""
    if tail is None:
        return x, revealed
    return x.masked_fill(tail, eos_id), revealed | tail


def _widen(block_mask: torch.Tensor, x: torch.Tensor, lo: int) -> torch.Tensor:
    """A (B, n) mask of the block starting at column lo as a (B, L) mask of the canvas."""
    out = torch.zeros_like(x, dtype=torch.bool)
    out[:, lo : lo + block_mask.shape[1]] = block_mask
    return out


def _choose(logits, candidates, generated, psi, cfg: SamplerConfig, plan: _Plan, generator, schedule):
    """One step on the active block: positions to commit (B, n), the drawn tokens (B, n), their confidences
    (B, n), and committed positions to mask again (B, n, ReMDM)."""
    rows, logits, drawn, probs = _draw(logits, candidates, cfg, generator)
    conf = probs.gather(-1, drawn[..., None]).squeeze(-1)  # (B, n)
    scores, count = _rule(probs, drawn, candidates, cfg, plan, generator, schedule, rows, cfg.policy)
    again = remask(generated & ~candidates, generated, psi, candidates.sum(-1) - count, cfg, generator, rows)
    return top_ranked(scores, candidates, count + again.sum(-1)), drawn, conf, again


def _choose_info_gain(ig, x, lo: int, hi: int, logits, cfg: SamplerConfig, plan: _Plan, generator, schedule):
    """`_choose` under the info_gain policy (info_gain.py): the rule gives the count and `ig.ranking` the first
    candidate; returns also the next step's logits when the lookahead computed them (else None)."""
    candidates = x[:, lo:hi] == ig.mask_id
    rows, logits, drawn, probs = _draw(logits, candidates, cfg, generator)
    scores, count = _rule(probs, drawn, candidates, cfg, plan, generator, schedule, rows, ig.ranking)
    chosen, drawn, ahead = ig.choose(x, lo, hi, logits, probs, drawn, scores, count, candidates, rows)
    conf = probs.gather(-1, drawn[..., None]).squeeze(-1)  # (B, n)
    return chosen, drawn, conf, torch.zeros_like(chosen), ahead


def _rule(probs, drawn, candidates, cfg: SamplerConfig, plan: _Plan, generator, schedule: MaskSchedule, rows,
          policy: Policy):
    """(scores (B, n) by `policy`, count (B,)): the step commits the count[b] best-scoring candidates of row b."""
    k, n_steps = plan.k, plan.n_steps
    if cfg.rule is CommitRule.ANCESTRAL:
        t_now = torch.tensor(1.0 - k / n_steps, dtype=torch.float64)
        t_next = torch.tensor(1.0 - (k + 1) / n_steps, dtype=torch.float64)
        p = 1.0 if k == n_steps - 1 else float(schedule.reveal_fraction(t_now, t_next))
        u = uniform(tuple(candidates.shape), generator, rows=rows).to(candidates.device)
        return -u, (candidates & (u < p)).sum(-1)  # the masks with u < p are exactly the count lowest u
    if cfg.rule in ADAPTIVE:
        return adaptive_count(probs, drawn, candidates, cfg)
    scores = policy_scores(probs, drawn, policy, generator, rows)
    if cfg.rule is CommitRule.ANCESTRAL_TOPK:
        return scores, dream_count(candidates.sum(-1), k, n_steps, schedule)
    return scores, plan.counts[:, k].to(candidates.device)  # LLaDA's fixed counts


def _moved(logits: torch.Tensor, anchor: torch.Tensor, masked: torch.Tensor) -> float:
    """The adaptive refresh's drift proxy: the largest total variation 1/2 sum_v |p - q| between the block's
    predictions p now (logits (B, n, V)) and q at the last full pass (anchor (B, n, V)), over the positions still
    masked (B, n); 0 when none is. One softmax over the block: no network pass."""
    if not bool(masked.any()):
        return 0.0
    tv = 0.5 * (logits.softmax(-1) - anchor).abs().sum(-1)  # (B, n)
    return float(tv[masked].max())


def _drift(step: int, cached: torch.Tensor, exact_logprobs: torch.Tensor, chosen: torch.Tensor) -> Drift:
    diff = (cached.log_softmax(-1) - exact_logprobs).abs()
    finite = torch.isfinite(diff)
    differ = (cached.argmax(-1) != exact_logprobs.argmax(-1))[chosen]
    return Drift(step=step, max_abs=float(diff[finite].max()), mean_abs=float(diff[finite].mean()),
                 committed_differ=float(differ.float().mean()) if differ.numel() else 0.0)


def _finish_after_eos(x: torch.Tensor, hi: int, eos_id: int, mask_id: int) -> tuple[torch.Tensor, bool]:
    """If every row has an EOS before `hi`, its masks after the first EOS become EOS; (canvas, all done)."""
    is_eos = x[:, :hi] == eos_id
    if not is_eos.any(1).all():
        return x, False
    first = is_eos.float().argmax(1)  # (B,)
    after = torch.arange(x.shape[1], device=x.device)[None, :] > first[:, None]
    x = x.masked_fill(after & (x == mask_id), eos_id)
    return x, not (x == mask_id).any()
