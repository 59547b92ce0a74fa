"""Measuring samplers: speed (tokens/s, NFE per token) and quality (agreement, generative perplexity).

Used by `sunfish tune-sampler` (tune.py) and `sunfish bench sample`. Every decode here is greedy
(temperature 0) and fills the whole canvas (no EOS stopping), so all settings generate the same number
of tokens and two outputs can be compared position by position. Quality figures:

* agreement: the fraction of generated positions holding the same token as a reference decode of the
  same model and prompts (the slow exact sampler: one token per step, no cache);
* generative perplexity: exp of the mean next-token NLL of the generated tokens, given the prompt, under
  a causal reference model trained with `--objective ar` on the same tokenizer (ALGORITHMS.md, section 7):
  a larger one when given ('reference'), else the same-size causal model (which then scores its own output);
  reported with distinct-2 and the unigram entropy of the output (low-temperature text can game perplexity
  by repeating). Unlike agreement, it is not wrecked by one early flipped token of a greedy continuation.
* TPF: tokens committed per forward pass (1 / NFE per token).

The benchmark compares the plain LLaDA-style sampler (one token per step, semi-autoregressive blocks,
no cache; the baseline measured in the same run) with threshold decoding, the prefix and dual caches,
block diffusion with its exact cache, a distilled student (`sunfish distill`) against its own one-token-per-step
output, a causal model with a key/value cache, and speculative decoding of the baseline (self-drafted, and with a
draft model when one is given), whose output must equal the baseline's; optionally the learned commit rule (a
filter from `sunfish tune-commit`) and the dual cache with adaptive refresh, whose refreshes per block show
beside the row's name. The verdicts on the targets are in
bench_targets.py.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from collections import Counter
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from typing import TYPE_CHECKING

from sunfish.config import CacheMode, CommitRule, SamplerConfig, Speculate
from sunfish.eval.generative import diversity
from sunfish.process.schedules import MaskSchedule
from sunfish.sample.batch import left_pad
from sunfish.sample.bench_types import BenchError, Method  # noqa: F401  (BenchError: re-exported)
from sunfish.sample.prompt import prompt_canvas
from sunfish.sample.text import decode_canvas, never_sampled

if TYPE_CHECKING:
    from sunfish.loading import LoadedModel

DEFAULT_PROMPTS = (
    "Once upon a time, there was a little",
    "One day, a girl named Lily went to the",
    "The sun was warm and the birds sang in the",
    "Tom had a big red ball. He wanted to",
    "In a small house near the forest lived an old",
    "The little dog was sad because he could not",
    "Жила-была маленькая девочка, которая очень любила",
    "Однажды утром кот вышел в сад и увидел",
)
DEFAULT_LENGTHS = (64, 256, 1024)  # generation lengths measured unless --lengths says otherwise
QUALITY_TOLERANCE = 0.02  # "quality within 2%" (Fast-dLLM's figure): the bound the targets use
TARGETS = {256: 8.0, 1024: 20.0}  # generation length -> speed-up over the baseline the issue asks for


@dataclass(frozen=True)
class Decoded:
    tokens: list[list[int]]  # generated ids per row, prompt excluded
    seconds: float  # wall-clock time of the decode
    nfe: int  # network function evaluations (one batched forward pass counts once)
    accepted: int = 0  # speculative decoding: drafted commits accepted ...
    proposed: int = 0  # ... of those proposed
    draft_nfe: int = 0  # ... and the draft model's forward passes
    refreshes: list[int] = dataclasses.field(default_factory=list)  # approximate cache's full passes per block

    @property
    def generated(self) -> int:
        return sum(len(row) for row in self.tokens)

    @property
    def tokens_per_s(self) -> float:
        return self.generated / max(self.seconds, 1e-9)

    @property
    def nfe_per_token(self) -> float:
        """Forward passes per generated token of one row (a batch shares its passes)."""
        return self.nfe / max(len(self.tokens[0]), 1)


def is_unmasking(loaded: LoadedModel) -> bool:
    """A model that predicts masks anywhere in one pass and commits several per step (masked diffusion)."""
    return loaded.spec.infill and loaded.spec.parallel


def encodable_prompts(loaded: LoadedModel, prompts: list[str]) -> list[str]:
    """The prompts the checkpoint's tokenizer can encode (a character vocabulary may lack some letters)."""
    kept = []
    for prompt in prompts:
        try:
            loaded.tokenizer.encode(prompt)
        except ValueError:
            continue
        kept.append(prompt)
    if not kept:
        raise BenchError(f"none of the built-in prompts can be encoded by the tokenizer of '{loaded.path}'; pass --prompts FILE")
    return kept


def fitting_lengths(models: dict[str, LoadedModel], prompts: list[str],
                    lengths: list[int] | None = None) -> tuple[list[int], list[str]]:
    """The generation lengths that fit every model's context after the longest prompt, and a note for each
    length skipped. Without `lengths`: those of DEFAULT_LENGTHS that fit, or, when none does, the largest power
    of two that fits. Given lengths of which none fits are a BenchError."""
    room = min(m.cfg.model.context - max(1 + len(m.tokenizer.encode(p)) for p in prompts) for m in models.values())
    asked = list(lengths or DEFAULT_LENGTHS)
    fits = [n for n in asked if n <= room]
    notes = [f"length {n} skipped: the longest prompt plus {n} tokens exceed the context "
             f"({room} tokens are left after it)" for n in asked if n > room]
    if not fits and lengths is None and room >= 1:
        fits = [1 << (room.bit_length() - 1)]
        notes.append(f"generating {fits[0]} tokens instead, the largest power of two that fits")
    if not fits and room < 1:
        context = min(m.cfg.model.context for m in models.values())
        raise BenchError(f"the longest prompt fills the context of {context} tokens by itself, leaving none to generate; "
                         "give shorter prompts with --prompts FILE")
    if not fits:
        raise BenchError(f"no generation length fits the context: at most {room} tokens are left after the longest prompt; "
                         f"give --lengths up to {room} or shorter prompts")
    return fits, notes


def prompt_ids(loaded: LoadedModel, prompts: list[str], length: int) -> list[list[int]]:
    """[BOS] + tokens of each prompt, checked against the model's context for `length` new tokens."""
    tok = loaded.tokenizer
    out = []
    for prompt in prompts:
        canvas = prompt_canvas(tok, prompt, length, loaded.cfg.model.context)
        out.append(canvas.ids[: canvas.fill_start])
    return out


def batch_of(ids: list[list[int]], batch: int) -> list[list[int]]:
    """`batch` prompts, cycling through `ids`."""
    return [ids[i % len(ids)] for i in range(batch)]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def decode(loaded: LoadedModel, rows: list[list[int]], cfg: SamplerConfig, seed: int = 0) -> Decoded:
    """Greedily generate `cfg.length` tokens after each prompt of `rows` (token ids, [BOS] first) in one
    batch, with the sampler `sunfish sample` uses for this kind of model. Prompts of different lengths
    are right-aligned with their left padding hidden from attention (sample/batch.py), as in
    `generate_batch`; a model that cannot batch them (latent models) decodes each prompt length as its own
    batch, one after another (their passes and seconds add up). The whole canvas is filled (no EOS stopping)."""
    if not loaded.mixed_batches and len({len(r) for r in rows}) > 1:
        groups: dict[int, list[int]] = {}
        for i, row in enumerate(rows):
            groups.setdefault(len(row), []).append(i)
        # each group draws its own noise (a latent model's start): the seed moves on by the group's first row
        parts = {tuple(idx): decode(loaded, [rows[i] for i in idx], cfg, seed + idx[0]) for idx in groups.values()}
        tokens: list[list[int]] = [[] for _ in rows]
        for idx, part in parts.items():
            for i, row in zip(idx, part.tokens):
                tokens[i] = row
        return Decoded(tokens=tokens, seconds=sum(p.seconds for p in parts.values()),
                       nfe=sum(p.nfe for p in parts.values()))
    cfg = dataclasses.replace(cfg, temperature=0.0, stop_at_eos=False)
    mask_id = loaded.tokenizer.mask_id
    device = loaded.device
    prompt, padding = left_pad(rows, loaded.tokenizer.pad_id, device)  # (B, P)
    B, P = prompt.shape
    canvas = torch.cat([prompt, torch.full((B, cfg.length), mask_id, dtype=prompt.dtype, device=device)], 1)
    generator = torch.Generator(device=device).manual_seed(seed)
    _sync(device)
    began = time.perf_counter()
    result = decode_canvas(loaded, canvas, P, cfg, generator, padding=padding)
    _sync(device)
    seconds = time.perf_counter() - began
    return Decoded(tokens=result.tokens[:, P:].tolist(), seconds=seconds, nfe=result.nfe, refreshes=result.refreshes,
                   accepted=result.accepted,
                   proposed=result.proposed, draft_nfe=result.draft_nfe)


def agreement(tokens: list[list[int]], reference: list[list[int]]) -> float:
    """Fraction of positions where `tokens` equals `reference` (same shapes)."""
    same = sum(a == b for row, ref in zip(tokens, reference) for a, b in zip(row, ref))
    return same / max(sum(len(r) for r in reference), 1)


def unigram_entropy(tokens: list[list[int]]) -> float:
    """Mean over rows of the entropy (nats) of the row's token histogram: a diversity figure."""
    values = []
    for row in tokens:
        counts = Counter(row)
        n = len(row)
        values.append(-sum(c / n * math.log(c / n) for c in counts.values()) if n else 0.0)
    return sum(values) / max(len(values), 1)


def distinct_words(loaded: LoadedModel, tokens: list[list[int]]) -> float:
    """distinct-2 of the decoded outputs: unique word bigrams / all, pooled over the rows (eval/generative.py)."""
    return diversity([loaded.tokenizer.decode(row) for row in tokens])["distinct_2"]


def check_reference(ref: LoadedModel, loaded: LoadedModel) -> None:
    """The generative-perplexity scorer must be a causal model sharing the checkpoint's tokenizer."""
    if not ref.spec.causal:
        raise BenchError(f"the reference model '{ref.path}' is not autoregressive; "
                         "train one with `sunfish train --objective ar` on the same data")
    if ref.tokenizer.sha256() != loaded.tokenizer.sha256():
        raise BenchError(f"the reference model '{ref.path}' uses another tokenizer than '{loaded.path}'; "
                         "train it on the same data and tokenizer")


@torch.no_grad()
def generative_nll(ref: LoadedModel, rows: list[list[int]], tokens: list[list[int]]) -> tuple[float, int]:
    """(sum of -log p(token | prompt, earlier tokens), token count) of the generated `tokens` after each
    prompt of `rows` under the causal model `ref`. Rows longer than its context are cut to it."""
    device = next(ref.model.parameters()).device
    total, count = 0.0, 0
    for p_row, g_row in zip(rows, tokens):
        x = torch.tensor([p_row + g_row], dtype=torch.long, device=device)[:, : ref.cfg.model.context]  # (1, L)
        logits = ref.model(x[:, :-1]).float()  # (1, L - 1, V)
        start = len(p_row) - 1  # the logit row that predicts the first generated token
        nll = F.cross_entropy(logits[0, start:], x[0, start + 1 :], reduction="sum")
        total, count = total + float(nll), count + x.shape[1] - 1 - start
    return total, count


def generative_ppl(ref: LoadedModel, rows: list[list[int]], tokens: list[list[int]]) -> float:
    nll, count = generative_nll(ref, rows, tokens)
    return math.exp(nll / max(count, 1))


# --- why a rule commits what it does -----------------------------------------------------------------


@dataclass(frozen=True)
class ConfidenceRow:
    regime: str  # 'random 10%' ... or 'block start'
    positions: int  # masked positions scored
    accuracy: float  # argmax equals the held-out token
    confident: float  # fraction whose top probability is >= the threshold: what threshold decoding may commit


@torch.no_grad()
def confidence_profile(loaded: LoadedModel, texts: list[str], threshold: float = 0.9, block_length: int = 32,
                       rates: tuple[float, ...] = (0.1, 0.5, 0.9), seed: int = 0) -> list[ConfidenceRow]:
    """How often a masked diffusion model is sure, and right, on held-out `texts` ([BOS] + tokens, cut to the
    context): with a random fraction of the tokens masked (training's regime), and at the start of a
    semi-autoregressive block in generation, where the text up to a random cut is clean and everything
    after it is [MASK] (scored on the first `block_length` masks). Threshold decoding commits more than one
    token per step only where `confident` is well above 1 / block_length."""
    if not is_unmasking(loaded):
        raise BenchError(f"'{loaded.path}' is {loaded.spec.a_label} model; the confidence profile reads masked diffusion models")
    model, tok = loaded.model, loaded.tokenizer
    device = next(model.parameters()).device
    schedule = MaskSchedule(loaded.cfg.process.mask_schedule, loaded.cfg.process.eps)
    generator = torch.Generator().manual_seed(seed)
    banned = sorted({tok.mask_id, *never_sampled(tok)})  # never committed, so never counted
    sums: dict[str, list[float]] = {}
    for text in texts:
        ids = torch.tensor([[tok.bos_id, *tok.encode(text)][: loaded.cfg.model.context]])  # (1, L)
        L = ids.shape[1]
        if L < block_length + 2:
            continue
        masks = {f"random {rate:.0%}": torch.rand(ids.shape, generator=generator) < rate for rate in rates}
        cut = int(torch.randint(1, L - block_length, (1,), generator=generator))
        after = torch.arange(L)[None] >= cut
        masks["block start"] = after
        for regime, mask in masks.items():
            mask[:, 0] = False  # BOS stays
            if not mask.any():
                continue
            x = ids.masked_fill(mask, tok.mask_id).to(device)
            t = schedule.time_of_alpha(1.0 - mask.float().mean(1)).to(device) if model.needs_time else None
            logits = model(x, t).float().cpu()
            logits[..., banned] = float("-inf")
            scored = mask & (torch.arange(L)[None] < cut + block_length) if regime == "block start" else mask
            probs = logits[scored].softmax(-1)  # (n, V)
            row = sums.setdefault(regime, [0.0, 0.0, 0.0])
            row[0] += probs.shape[0]
            row[1] += float((probs.argmax(-1) == ids[scored]).sum())
            row[2] += float((probs.max(-1).values >= threshold).sum())
    return [ConfidenceRow(regime=k, positions=int(v[0]), accuracy=v[1] / max(v[0], 1), confident=v[2] / max(v[0], 1))
            for k, v in sums.items()]


def format_confidence(rows: list[ConfidenceRow], threshold: float) -> str:
    lines = [f"| masked positions | scored | argmax accuracy | top probability >= {threshold:g} |", "|---|---:|---:|---:|"]
    lines += [f"| {r.regime} | {r.positions} | {r.accuracy:.3f} | {r.confident:.3f} |" for r in rows]
    return "\n".join(lines)


# --- the benchmark ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchRow:
    length: int
    batch: int
    method: str
    model: str  # 'diffusion', 'block' or 'ar'
    tokens_per_s: float  # median over repeats, all rows of the batch counted
    nfe_per_token: float
    speedup: float  # tokens/s over the baseline's, same length and batch
    agreement: float | None  # with the method's reference output (None: no reference)
    gen_ppl: float | None  # under the scorer (the reference causal model, else the same-size one), when there is one
    entropy: float  # unigram entropy of the output, nats
    distinct: float | None = None  # distinct-2 of the output's words (eval/generative.py: diversity)
    reference: str | None = None  # the same model's one-token-per-step row (the few-step target's baseline)
    acceptance: float | None = None  # speculative rows: accepted / proposed drafted commits
    draft_nfe_per_token: float | None = None  # draft-model speculative rows: draft forward passes per token
    refreshes: float | None = None  # adaptive cache refresh rows: the cache's full passes per block

    @property
    def tpf(self) -> float:
        """Tokens committed per forward pass of the model, per row (a batch shares its passes)."""
        return 1.0 / max(self.nfe_per_token, 1e-9)


PIPELINE_START = 0.5  # the pipelined row's start ratio: the next block joins once half of the newest is committed


def bench_methods(block_length: int, threshold: float, has_block: bool, has_ar: bool,
                  has_distilled: bool = False, draft: str | None = None, draft_len: int = 2, commit_model: str = "",
                  refresh_bound: float = -1.0) -> list[Method]:
    """The rows of the table, the baseline first."""
    base = one_per_step(SamplerConfig(block_length=block_length))
    fast = dataclasses.replace(base, rule=CommitRule.THRESHOLD, threshold=threshold)
    rows = [
        Method("baseline: LLaDA 1 token/step", "diffusion", base, None),
        Method(f"+ threshold {threshold:g}", "diffusion", fast, "baseline: LLaDA 1 token/step"),
        Method("+ prefix cache", "diffusion", dataclasses.replace(fast, cache=CacheMode.PREFIX), "baseline: LLaDA 1 token/step"),
        Method("+ dual cache", "diffusion", dataclasses.replace(fast, cache=CacheMode.DUAL), "baseline: LLaDA 1 token/step"),
    ] + commit_methods(base, fast, commit_model, refresh_bound)
    if has_block:
        rows += [Method("block diffusion 1 token/step, exact cache", "block", base, None),
                 Method(f"block diffusion threshold {threshold:g}, exact cache", "block", fast,
                        "block diffusion 1 token/step, exact cache"),
                 Method(f"block diffusion pipelined (D2F, start {PIPELINE_START:g}), threshold {threshold:g}", "block",
                        dataclasses.replace(fast, pipeline_start=PIPELINE_START, pipeline_threshold=threshold),
                        "block diffusion 1 token/step, exact cache")]
    if has_distilled:  # the distilled student (sunfish distill) against its own one-token-per-step output
        own = "distilled 1 token/step"
        rows += [Method(own, "distilled", base, None),
                 Method(f"distilled threshold {threshold:g}", "distilled", fast, own),
                 Method(f"distilled threshold {threshold:g}, dual cache", "distilled",
                        dataclasses.replace(fast, cache=CacheMode.DUAL), own)]
    if has_ar:
        rows.append(Method("causal model, KV cache", "ar", base, None))
    return rows + speculative_methods(base, has_block, draft, draft_len)


def commit_methods(base: SamplerConfig, fast: SamplerConfig, commit_model: str, refresh_bound: float) -> list[Method]:
    """With `refresh_bound` >= 0 the dual cache's row with adaptive refresh; with `commit_model` the learned rule's
    rows, plain and with the dual cache (sample/learned.py)."""
    baseline = "baseline: LLaDA 1 token/step"
    rows = []
    if refresh_bound >= 0:
        rows.append(Method(f"+ dual cache, adaptive refresh {refresh_bound:g}", "diffusion",
                           dataclasses.replace(fast, cache=CacheMode.DUAL, refresh_bound=refresh_bound), baseline))
    if commit_model:
        learned = dataclasses.replace(base, rule=CommitRule.LEARNED, commit_model=commit_model)
        rows += [Method("learned commit rule", "diffusion", learned, baseline),
                 Method("learned commit rule, dual cache", "diffusion", dataclasses.replace(learned, cache=CacheMode.DUAL),
                        baseline)]
    return rows


def speculative_methods(base: SamplerConfig, has_block: bool, draft: str | None, draft_len: int) -> list[Method]:
    """Speculative decoding of the one-token-per-step baseline (sample/speculate.py): its output is the baseline's,
    so agreement must read 1.000; NFE/token counts target passes, a verification over K canvases as one."""
    self_ = dataclasses.replace(base, speculate=Speculate.SELF, draft_len=draft_len)
    rows = [Method(f"self-speculative K={draft_len}", "diffusion", self_, "baseline: LLaDA 1 token/step")]
    if draft:
        rows.append(Method(f"draft-speculative K={draft_len}", "diffusion",
                           dataclasses.replace(self_, speculate=Speculate.DRAFT, draft=draft), "baseline: LLaDA 1 token/step"))
    if has_block:
        rows.append(Method(f"block diffusion self-speculative K={draft_len}", "block", self_,
                           "block diffusion 1 token/step, exact cache"))
    return rows


def one_per_step(cfg: SamplerConfig) -> SamplerConfig:
    """Exactly one token per step in the policy's order, whatever the block layout: the fixed rule with as many
    steps as tokens (steps are shared among blocks in proportion to their masks), no cache."""
    return dataclasses.replace(cfg, rule=CommitRule.FIXED, steps=cfg.length, cache=CacheMode.NONE)


def _setting_for(method: Method, length: int) -> SamplerConfig:
    steps = method.cfg.steps if method.own_steps else length
    return dataclasses.replace(method.cfg, length=length, steps=steps, block_length=min(method.cfg.block_length, length))


def run_bench(models: dict[str, LoadedModel], prompts: list[str], lengths: list[int], batches: list[int],
              repeats: int, block_length: int = 32, threshold: float = 0.9,
              log=lambda line: None, draft_len: int = 2, commit_model: str = "", refresh_bound: float = -1.0,
              latent_steps: tuple[int, ...] = (16, 64)) -> list[BenchRow]:
    """Measure every method at every (length, batch). `models` holds 'diffusion' and optionally 'block', 'ar',
    'distilled' (a masked student of 'diffusion'), 'draft' (speculative decoding's), 'reference' (a causal model,
    larger than the others, that scores generative perplexity; without it the same-size causal model 'ar' scores)
    and latent models ('latent', 'latent2', ...: bench_latent.py, rows at `latent_steps` denoising steps where the
    length fits them). `commit_model` and `refresh_bound` add the learned rule's and the adaptive refresh's rows."""
    from sunfish.sample.bench_latent import is_latent_role, latent_methods, latent_prompt_ids, room

    scorer, draft = models.get("reference", models.get("ar")), models.get("draft")
    if draft is not None:  # the draft row's sampler opens it by path: hand it the one loaded
        models["diffusion"].drafts[str(draft.path)] = draft
    models = {name: m for name, m in models.items() if name not in ("reference", "draft")}
    methods = bench_methods(block_length, threshold, "block" in models, "ar" in models, "distilled" in models,
                            None if draft is None else str(draft.path), draft_len, commit_model, refresh_bound)
    methods += latent_methods(models, latent_steps)
    # a latent model's rows run only where its texts hold the prompt and the length (the others are left out with a
    # note, bench_latent.latent_notes), so its prompts are not checked against its context here
    ids = {name: latent_prompt_ids(m, prompts) if is_latent_role(name) else prompt_ids(m, prompts, max(lengths))
           for name, m in models.items()}
    for name, m in models.items():  # warm-up: first calls pay for allocation and kernel selection
        if room(m, ids[name]) >= 1:
            decode(m, batch_of(ids[name], 1), one_per_step(SamplerConfig(length=min(min(lengths), room(m, ids[name])))))
    rows: list[BenchRow] = []
    for length in lengths:
        for batch in batches:
            usable = [m for m in methods if room(models[m.model], ids[m.model]) >= length]
            prompts_of = {name: batch_of(ids[name], batch) for name in models}
            runs = _interleaved(models, usable, prompts_of, length, repeats)
            rows += _rows(models, usable, runs, prompts_of, scorer, length, batch, log)
    return rows


def _rows(models: dict[str, LoadedModel], methods: list[Method], runs: dict[str, list[Decoded]],
          prompts_of: dict[str, list[list[int]]], scorer: LoadedModel | None, length: int, batch: int,
          log) -> list[BenchRow]:
    """The table rows of one (length, batch): medians over the repeats, quality of the first repeat's output."""
    outputs = {name: decoded[0].tokens for name, decoded in runs.items()}
    base_speed = statistics.median(r.tokens_per_s for r in runs[methods[0].name])
    rows = []
    for method in methods:
        out, prompt = runs[method.name][0], prompts_of[method.model]
        speed = statistics.median(r.tokens_per_s for r in runs[method.name])
        ref_out = outputs.get(method.reference) if method.reference else None
        row = BenchRow(length=length, batch=batch, method=method.name, model=method.model, tokens_per_s=speed,
                       nfe_per_token=out.nfe_per_token, speedup=speed / base_speed,
                       agreement=agreement(out.tokens, ref_out) if ref_out is not None else None,
                       gen_ppl=generative_ppl(scorer, prompt, out.tokens) if scorer is not None else None,
                       entropy=unigram_entropy(out.tokens), reference=method.reference,
                       distinct=distinct_words(models[method.model], out.tokens),
                       acceptance=out.accepted / out.proposed if out.proposed else None,
                       draft_nfe_per_token=out.draft_nfe / max(len(out.tokens[0]), 1) if out.draft_nfe else None,
                       refreshes=_per_block(out) if method.cfg.refresh_bound >= 0 else None)
        rows.append(row)
        log(format_row(row))
    return rows


def _interleaved(models: dict[str, LoadedModel], methods: list[Method], prompts_of: dict[str, list[list[int]]],
                 length: int, repeats: int) -> dict[str, list[Decoded]]:
    """`repeats` rounds, each decoding with every method once, so a change in machine load during the run
    touches all methods alike rather than whichever ran at that moment."""
    runs: dict[str, list[Decoded]] = {m.name: [] for m in methods}
    for _ in range(max(repeats, 1)):
        for m in methods:
            runs[m.name].append(decode(models[m.model], prompts_of[m.model], _setting_for(m, length)))
    return runs


def _per_block(out: Decoded) -> float | None:
    return sum(out.refreshes) / len(out.refreshes) if out.refreshes else None


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


HEADER = ("| length | batch | method | tokens/s | NFE/token | TPF | speed-up | agreement | gen. PPL | distinct-2 | entropy "
          "| acceptance | draft NFE/token |\n|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")


def format_row(row: BenchRow) -> str:
    method = row.method if row.refreshes is None else f"{row.method} ({row.refreshes:.1f} refreshes/block)"
    return (f"| {row.length} | {row.batch} | {method} | {row.tokens_per_s:,.1f} | {row.nfe_per_token:.3f} | "
            f"{row.tpf:.2f} | {row.speedup:.2f}x | {_fmt(row.agreement, '.3f')} | {_fmt(row.gen_ppl, '.2f')} | "
            f"{_fmt(row.distinct, '.3f')} | {row.entropy:.2f} | {_fmt(row.acceptance, '.3f')} | "
            f"{_fmt(row.draft_nfe_per_token, '.3f')} |")
