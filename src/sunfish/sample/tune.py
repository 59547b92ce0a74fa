"""Auto-tuning the sampler: the fastest setting whose quality stays within a bound of the exact sampler.

The reference is the slow exact sampler: one token per step in confidence order (LLaDA's sampler), no
cache, greedy, at the checkpoint's block length. Candidates vary the step rule (threshold tau, Fast-dLLM's
factor rule, the EB-sampler's entropy bound, or a fixed step count below the length), the
semi-autoregressive block length and the key/value cache mode
(block-diffusion models have a fixed block size and an exact cache, so only the step rule varies). Each
candidate decodes the same prompts greedily; its quality is either

* agreement: the fraction of generated tokens equal to the exact sampler's output at the candidate's own
  block length (bound: >= 1 - bound), measuring what the faster rule or the cache changes, or
* generative perplexity under a causal reference model (bound: <= (1 + bound) x the exact sampler's at the
  checkpoint's block length), which also judges a different block length.

The fastest candidate (measured tokens/s) within the bound wins; the exact sampler itself always
qualifies, so there is always an answer. `write_sampler_defaults` stores it in the checkpoint's
config.json, which `sunfish sample` reads, through a temporary file and os.replace, keeping the old file
as config.json.bak, and updates the file's entry in the checkpoint's manifest.json the same way.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path


from typing import TYPE_CHECKING

from sunfish.checkpoint.files import MANIFEST, manifest_with, resolve_checkpoint
from sunfish.config import CacheMode, CommitRule, SamplerConfig, config_from_dict, upgrade_tree
from sunfish.fileio import write_text_atomic
from sunfish.sample.bench import BenchError, agreement, check_reference, decode, generative_nll, one_per_step, prompt_ids

if TYPE_CHECKING:
    from sunfish.loading import LoadedModel


class Quality(str, enum.Enum):
    AGREEMENT = "agreement"  # token agreement with the exact sampler's greedy output
    GEN_PPL = "gen_ppl"  # generative perplexity under a causal reference model


@dataclass(frozen=True)
class Trial:
    cfg: SamplerConfig
    label: str
    tokens_per_s: float  # median over repeats, all prompts together
    nfe_per_token: float
    agreement: float  # with the exact sampler's output at the same block layout
    gen_ppl: float | None  # under the reference model, when given
    within: bool  # quality within the bound


@dataclass(frozen=True)
class TuneResult:
    trials: list[Trial]  # in the order measured; trials[0] is the exact sampler at the checkpoint's block length
    chosen: Trial
    quality: Quality
    bound: float
    skipped: int  # candidates not measured because the time budget ran out


def label(cfg: SamplerConfig, fixed_blocks: bool) -> str:
    if is_exact(cfg):
        rule = "exact: 1 token/step"
    elif cfg.rule is CommitRule.THRESHOLD:
        rule = f"threshold {cfg.threshold:g}"
    elif cfg.rule is CommitRule.FACTOR:
        rule = f"factor {cfg.factor:g}"
    elif cfg.rule is CommitRule.ENTROPY_BOUND:
        rule = f"entropy bound {cfg.entropy_bound:g}"
    else:
        rule = f"{cfg.steps} steps"
    if fixed_blocks:
        return f"{rule}, exact block cache"
    block = "one block" if cfg.block_length in (0, cfg.length) else f"block {cfg.block_length}"
    return f"{rule}, {block}, cache {cfg.cache.value}"


def _n_blocks(length: int, block_length: int) -> int:
    return 1 if block_length in (0, length) else -(-length // block_length)


def candidates(base: SamplerConfig, fixed_blocks: bool, thresholds: list[float], steps: list[int],
               block_lengths: list[int], block_size: int = 0, factors: list[float] = (),
               entropy_bounds: list[float] = ()) -> list[SamplerConfig]:
    """The search grid, step rule outermost so a cut budget still covers every block length and cache.
    Adaptive rules (threshold, factor, entropy bound) come before fixed step counts.
    `fixed_blocks` and `block_size`: a block-diffusion model decodes in its trained blocks of `block_size`."""
    length = base.length
    rules = [dataclasses.replace(base, rule=CommitRule.THRESHOLD, threshold=t) for t in thresholds]
    rules += [dataclasses.replace(base, rule=CommitRule.FACTOR, factor=f) for f in factors]
    rules += [dataclasses.replace(base, rule=CommitRule.ENTROPY_BOUND, entropy_bound=g) for g in entropy_bounds]
    rules += [dataclasses.replace(base, rule=CommitRule.FIXED, steps=s) for s in steps if 1 <= s < length]
    if fixed_blocks:
        return [r for r in rules if r.rule is not CommitRule.FIXED or r.steps >= _n_blocks(length, block_size)]
    layouts = []
    for b in dict.fromkeys(min(b, length) if b > 0 else 0 for b in block_lengths):
        modes = [CacheMode.NONE, CacheMode.PREFIX] + ([CacheMode.DUAL] if _n_blocks(length, b) > 1 else [])
        layouts += [(b, mode) for mode in modes]
    out = []
    for rule in rules:
        for b, mode in layouts:
            if rule.rule is CommitRule.FIXED and rule.steps < _n_blocks(length, b):
                continue  # fewer steps than blocks cannot finish every block
            out.append(dataclasses.replace(rule, block_length=b, cache=mode))
    return out


def is_exact(cfg: SamplerConfig) -> bool:
    """One token per step without a cache (see bench.one_per_step)."""
    return cfg.rule is CommitRule.FIXED and cfg.steps >= cfg.length and cfg.cache is CacheMode.NONE


def _layout(cfg: SamplerConfig) -> int:
    """The block length as a layout: 0 for one block over the whole canvas."""
    return cfg.block_length if 0 < cfg.block_length < cfg.length else 0


def with_references(exact: SamplerConfig, todo: list[SamplerConfig]) -> list[SamplerConfig]:
    """The measuring order: `exact` first, and the exact sampler of each further block layout just before
    the first candidate with that layout. Agreement compares a candidate with the exact sampler of its own
    layout, so it measures what the faster rule or cache changes, not what a different block order does
    (that shows in the generative perplexity)."""
    queue, seen = [exact], {_layout(exact)}
    for cfg in todo:
        if _layout(cfg) not in seen:
            seen.add(_layout(cfg))
            queue.append(dataclasses.replace(exact, block_length=cfg.block_length))
        if cfg not in queue:
            queue.append(cfg)
    return queue


@dataclass(frozen=True)
class Grid:
    """The values searched per knob; `default_grid` fills those a user does not give."""
    thresholds: list[float]
    factors: list[float]
    entropy_bounds: list[float]  # nats
    steps: list[int]
    block_lengths: list[int]  # 0 = one block


def default_grid(length: int) -> Grid:
    """The values searched when none are given: Fast-dLLM's threshold (0.9) and factor (1) with a looser
    and stricter neighbour, EB-sampler bounds around its examples, halving step counts, and block lengths."""
    steps = [length // d for d in (2, 4, 8) if length // d >= 1]
    blocks = [0] + [b for b in (64, 32, 16, 8) if b < length]
    return Grid(thresholds=[0.95, 0.9, 0.8, 0.7, 0.5], factors=[1.0, 2.0], entropy_bounds=[0.1, 1.0], steps=steps,
                block_lengths=blocks)


@dataclass(frozen=True)
class _Measured:
    tokens: list[list[int]]  # generated ids per prompt
    tokens_per_s: float  # median over repeats
    nfe_per_token: float  # forward passes per generated token, over all prompts


def _measure(loaded: LoadedModel, ids: list[list[int]], cfg: SamplerConfig, repeats: int = 1) -> _Measured:
    """Decode each prompt alone (batch 1, as `sunfish sample` does), `repeats` times; pool the figures."""
    speeds, runs = [], []
    for _ in range(max(repeats, 1)):
        runs = [decode(loaded, [row], cfg) for row in ids]
        speeds.append(sum(r.generated for r in runs) / max(sum(r.seconds for r in runs), 1e-9))
    generated = sum(r.generated for r in runs)
    return _Measured(tokens=[r.tokens[0] for r in runs], tokens_per_s=statistics.median(speeds),
                     nfe_per_token=sum(r.nfe for r in runs) / max(generated, 1))


def _gen_ppl(ref: LoadedModel | None, ids: list[list[int]], tokens: list[list[int]]) -> float | None:
    if ref is None:
        return None
    nll, count = generative_nll(ref, ids, tokens)
    return math.exp(nll / max(count, 1))


def tune(loaded: LoadedModel, prompts: list[str], *, length: int, sampler: SamplerConfig | None = None,
         quality: Quality = Quality.AGREEMENT,
         bound: float = 0.02, ref: LoadedModel | None = None, budget_s: float = 300.0, repeats: int = 1,
         thresholds: list[float] | None = None, steps: list[int] | None = None,
         block_lengths: list[int] | None = None, factors: list[float] | None = None,
         entropy_bounds: list[float] | None = None, log=lambda line: None) -> TuneResult:
    """Measure the exact sampler and then the grid until the budget is spent; pick the fastest within bound.
    `sampler`: the base of every setting (default the checkpoint's). A knob given as None searches its default
    values; an empty list leaves that rule out."""
    spec = loaded.spec
    if spec.causal:
        raise BenchError(f"'{loaded.path}' is an autoregressive model, which decodes one token per pass; "
                         "tune-sampler tunes diffusion samplers")
    if not spec.parallel:
        raise BenchError(f"'{loaded.path}' is {spec.a_label} model; tune-sampler tunes the unmasking samplers of masked "
                         "and block diffusion models")
    if not 0 <= bound < 1:
        raise BenchError(f"--bound {bound} is out of range; give a fraction between 0 and 1, e.g. 0.02 for 2%")
    if quality is Quality.GEN_PPL and ref is None:
        raise BenchError("--quality gen_ppl needs a causal reference model; pass --ref CKPT (trained with --objective ar)")
    if ref is not None:
        check_reference(ref, loaded)
    ids = prompt_ids(loaded, prompts, length)
    grid = default_grid(length)

    def pick(given, default):
        return default if given is None else given

    base = dataclasses.replace(sampler or loaded.cfg.sampler, length=length, temperature=0.0, top_k=0, top_p=1.0)
    exact = one_per_step(base)
    todo = candidates(base, spec.fixed_blocks, pick(thresholds, grid.thresholds), pick(steps, grid.steps),
                      pick(block_lengths, grid.block_lengths), loaded.cfg.process.block_size,
                      factors=pick(factors, grid.factors), entropy_bounds=pick(entropy_bounds, grid.entropy_bounds))
    _measure(loaded, ids[:1], dataclasses.replace(exact, length=min(length, 8)))  # warm-up: one-time costs
    queue = with_references(exact, todo)
    began = time.perf_counter()
    references: dict[int, list[list[int]]] = {}  # layout -> the exact sampler's output with that layout
    trials: list[Trial] = []
    skipped = 0
    for i, cfg in enumerate(queue):
        if trials and time.perf_counter() - began > budget_s:
            skipped = len(queue) - i
            log(f"time budget of {budget_s:g} s spent; {skipped} of {len(queue)} settings not measured")
            break
        out = _measure(loaded, ids, cfg, repeats)
        if is_exact(cfg):
            references[_layout(cfg)] = out.tokens
        main_ppl = trials[0].gen_ppl if trials else None
        trials.append(_trial(cfg, spec.fixed_blocks, out, references[_layout(cfg)], ref, ids, quality, bound, main_ppl))
        t = trials[-1]
        log(f"[{i + 1}/{len(queue)}] {t.label}: {t.tokens_per_s:,.1f} tokens/s, agreement {t.agreement:.3f}")
    chosen = max((t for t in trials if t.within), key=lambda t: t.tokens_per_s)
    return TuneResult(trials=trials, chosen=chosen, quality=quality, bound=bound, skipped=skipped)


def _trial(cfg, fixed_blocks: bool, out: _Measured, reference, ref, ids, quality, bound, ref_ppl) -> Trial:
    agree = agreement(out.tokens, reference)
    ppl = _gen_ppl(ref, ids, out.tokens)
    if quality is Quality.GEN_PPL:
        within = ref_ppl is None or ppl <= (1 + bound) * ref_ppl
    else:
        within = agree >= 1 - bound
    return Trial(cfg=cfg, label=label(cfg, fixed_blocks), tokens_per_s=out.tokens_per_s, nfe_per_token=out.nfe_per_token,
                 agreement=agree, gen_ppl=ppl, within=within)


def format_trials(result: TuneResult) -> str:
    """The searched table, fastest first; * marks the chosen setting, x settings outside the bound."""
    lines = ["|   | setting | tokens/s | NFE/token | agreement | gen. PPL |", "|---|---|---:|---:|---:|---:|"]
    for t in sorted(result.trials, key=lambda t: -t.tokens_per_s):
        mark = "*" if t is result.chosen else (" " if t.within else "x")
        ppl = "-" if t.gen_ppl is None else f"{t.gen_ppl:.2f}"
        lines.append(f"| {mark} | {t.label} | {t.tokens_per_s:,.1f} | {t.nfe_per_token:.3f} | {t.agreement:.3f} | {ppl} |")
    return "\n".join(lines)


def chosen_values(cfg: SamplerConfig, fixed_blocks: bool) -> dict:
    """The sampler fields that define a setting, as config.json stores them."""
    values: dict = {"length": cfg.length, "rule": cfg.rule.value}
    knob = {CommitRule.THRESHOLD: "threshold", CommitRule.FACTOR: "factor",
            CommitRule.ENTROPY_BOUND: "entropy_bound"}.get(cfg.rule, "steps")
    values[knob] = getattr(cfg, knob)
    if not fixed_blocks:
        values |= {"block_length": cfg.block_length, "cache": cfg.cache.value}
    return values


def write_sampler_defaults(path: str | Path, values: dict) -> tuple[Path, dict]:
    """Set `values` in the `sampler` section of the checkpoint's config.json atomically (temporary file +
    os.replace), after copying the current file to config.json.bak. Returns (config path, old values)."""
    ckpt = resolve_checkpoint(path)
    target = ckpt / "config.json"
    text = target.read_text(encoding="utf-8")
    tree = upgrade_tree(json.loads(text))  # keys renamed since the run was saved get their current names
    old_sampler = tree.get("sampler", {})
    old = {k: old_sampler.get(k, getattr(SamplerConfig(), k)) for k in values}
    old = {k: v.value if isinstance(v, enum.Enum) else v for k, v in old.items()}
    tree["sampler"] = {**old_sampler, **values}
    config_from_dict(tree)  # refuse to write a config that would not load
    new_text = json.dumps(tree, indent=2) + "\n"
    manifest = manifest_with(ckpt, "config.json", new_text.encode("utf-8"))
    write_text_atomic(ckpt / "config.json.bak", text)
    write_text_atomic(target, new_text)
    if manifest is not None:  # the loader checks every file against it, so it follows at once
        write_text_atomic(ckpt / MANIFEST, manifest)
    return target, old
