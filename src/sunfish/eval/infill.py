"""Infilling: mask one span of each held-out window and measure how well the model restores it.

Span kinds: 1, 4 and 16 tokens at seeded random offsets, and the middle third of the window. For each:
- exact-token accuracy of the greedy fill (the sampler with temperature 0, one token per step, the
  checkpoint's policy), and the fraction of spans restored exactly;
- the likelihood of the true fill: a Monte Carlo bound on -log p(span | rest) per span token,
  E_t[ w(t) sum over masked span tokens of -log p(x_i | z_t) ] with only span tokens corrupted
  (the masked-diffusion NELBO of likelihood.py restricted to the span), reported as nats and perplexity.
Causal and block-diffusion models generate left to right and are skipped with a sentence.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from typing import TYPE_CHECKING

from sunfish.config import CacheMode, CommitRule, EvalConfig
from sunfish.eval.likelihood import monte_carlo
from sunfish.process.masked import masked_nats
from sunfish.process.schedules import MaskSchedule
from sunfish.sample.text import never_sampled

if TYPE_CHECKING:
    from sunfish.loading import LoadedModel

SPAN_KINDS = ("1", "4", "16", "middle_third")


class InfillUnsupported(ValueError):
    """The model cannot infill; the message is one sentence."""


@dataclass(frozen=True)
class InfillResult:
    span: str  # span kind
    span_tokens: int  # tokens per span
    windows: int
    token_accuracy: float  # greedy fill tokens equal to the truth
    exact_match: float  # spans restored entirely
    fill_nats_per_token: float  # Monte Carlo bound on -log p(true fill | rest), per span token
    fill_se: float
    fill_perplexity: float

    def as_json(self) -> dict:
        return dataclasses.asdict(self)


def check_infill(loaded: LoadedModel) -> None:
    spec = loaded.spec
    if not (spec.infill and spec.likelihood is not None and spec.likelihood.nats is masked_nats):
        raise InfillUnsupported(f"the infill suite scores masked diffusion models; this is {spec.a_label} model")


def span_mask(length: int, windows: int, kind: str, generator: torch.Generator) -> torch.Tensor:
    """(N, L) bool: one span per window, never at position 0 (the window's given first token)."""
    if kind == "middle_third":
        lo, n = length // 3, max(1, length // 3)
        spans = torch.zeros(windows, length, dtype=torch.bool)
        spans[:, lo : lo + n] = True
        return spans
    n = int(kind)
    if n > length - 1:
        raise ValueError(f"a span of {n} tokens does not fit windows of {length}; raise --eval.seq_len")
    starts = torch.randint(1, length - n + 1, (windows,), generator=generator)  # (N,)
    cols = torch.arange(length)
    return (cols[None, :] >= starts[:, None]) & (cols[None, :] < starts[:, None] + n)


@torch.no_grad()
def greedy_fill(loaded: LoadedModel, x: torch.Tensor, spans: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The canvas x (N, L) with its spans filled by the sampler at temperature 0, one token per step."""
    from sunfish.sample.unmask import unmask

    tok = loaded.tokenizer
    n = int(spans.sum(1).max())
    cfg = dataclasses.replace(loaded.cfg.sampler, length=n, steps=n, temperature=0.0, block_length=0,
                              rule=CommitRule.FIXED, cache=CacheMode.NONE, stop_at_eos=False)
    canvas = x.masked_fill(spans, tok.mask_id)
    schedule = MaskSchedule(loaded.cfg.process.mask_schedule, loaded.cfg.process.eps)
    return unmask(loaded.model, canvas, tok.mask_id, cfg, generator=generator, schedule=schedule,
                  suppress=never_sampled(tok)).tokens


@torch.no_grad()
def fill_nats(loaded: LoadedModel, x: torch.Tensor, spans: torch.Tensor, u: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One-sample bound on -log p(x[spans] | x[~spans]) per window. x, spans: (N, L); u: (N,) -> (N,)"""
    return masked_nats(loaded.model, x, loaded.cfg.process, loaded.tokenizer.mask_id, u, generator, scored=spans)


def infill_suite(loaded: LoadedModel, windows: torch.Tensor, cfg: EvalConfig, log=print) -> list[InfillResult]:
    """Every span kind over the first `cfg.infill_windows` windows (N, L)."""
    check_infill(loaded)
    device = next(loaded.model.parameters()).device
    x = windows[: cfg.infill_windows].to(device)
    N, L = x.shape
    results = []
    for kind in SPAN_KINDS:
        cpu_gen = torch.Generator().manual_seed(cfg.seed)
        spans = span_mask(L, N, kind, cpu_gen).to(device)
        generator = torch.Generator(device=device).manual_seed(cfg.seed)
        filled = greedy_fill(loaded, x, spans, generator)
        right = (filled == x) & spans
        token_acc = float(right.sum()) / float(spans.sum())
        exact = float((right.sum(1) == spans.sum(1)).float().mean())
        n_tokens = float(spans.sum())

        def draw_round() -> float:
            base = torch.rand(1, generator=generator, device=generator.device).item()
            u = (base + torch.arange(N, device=device) / N) % 1.0
            return float(fill_nats(loaded, x, spans, u, generator).sum()) / n_tokens

        mc = monte_carlo(draw_round, cfg)
        results.append(InfillResult(span=kind, span_tokens=int(spans[0].sum()), windows=N, token_accuracy=token_acc,
                                    exact_match=exact, fill_nats_per_token=mc.mean, fill_se=mc.se,
                                    fill_perplexity=math.exp(mc.mean)))
        log(f"  span {kind}: token accuracy {token_acc:.3f}, exact {exact:.3f}, "
            f"fill perplexity {math.exp(mc.mean):.2f} ({mc.mean:.3f} ± {mc.se:.3f} nats/token)")
    return results
