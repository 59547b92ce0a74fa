"""The benchmark's verdicts: each target of the sampling issues, checked on the rows of one run.

* speed-up (the first fast-sampling issue): >= 8x the plain baseline's tokens/s at 256 tokens and >= 20x at 1024,
  with quality within 2% (generative perplexity at most 1.02x the baseline's);
* few-step (issue 18): a diffusion row committing >= 4 tokens per forward pass (TPF) on average, with generative
  perplexity within 5% of its own model's one-token-per-step row;
* against the causal model: a diffusion row at least as fast as the same-size causal model with a key/value cache,
  at generative perplexity no worse than that model's.

Generative perplexity is the scorer's (sample/bench.py: a larger causal reference model when one is given).
"""

from __future__ import annotations

from sunfish.sample.bench import QUALITY_TOLERANCE, TARGETS, BenchRow
from sunfish.sample.bench_latent import is_latent_role

FEW_STEP_TPF = 4.0  # tokens per forward pass the few-step target asks for
FEW_STEP_TOLERANCE = 0.05  # ... with generative perplexity within 5% of the same model's one-token-per-step row


def within_quality(row: BenchRow, baseline: BenchRow, tolerance: float = QUALITY_TOLERANCE) -> bool:
    """Quality within `tolerance` of the baseline: generative perplexity at most (1 + tolerance) times the
    baseline's when a causal scorer was given, else agreement with the reference output >= 1 - tolerance."""
    if row.gen_ppl is not None and baseline.gen_ppl is not None:
        return row.gen_ppl <= (1 + tolerance) * baseline.gen_ppl
    return row.agreement is None or row.agreement >= 1 - tolerance


def own_baseline(row: BenchRow, group: list[BenchRow]) -> BenchRow:
    """The same model's one-token-per-step row of the group (the row itself when it is one)."""
    return next((r for r in group if r.method == row.reference), row)


def few_step(diffusion: list[BenchRow], group: list[BenchRow]) -> str:
    """The few-step target: TPF >= 4 with generative perplexity within 5% of the own one-token-per-step row."""
    def ok(r: BenchRow) -> bool:
        return r.tpf >= FEW_STEP_TPF and within_quality(r, own_baseline(r, group), FEW_STEP_TOLERANCE)

    good = [r for r in diffusion if ok(r)]
    if good:
        best = max(good, key=lambda r: r.tpf)
        return (f">= {FEW_STEP_TPF:g} tokens per forward within {FEW_STEP_TOLERANCE:.0%} of its own 1 token/step "
                f"gen. PPL: MET ({best.method}: TPF {best.tpf:.2f})")
    quality = [r for r in diffusion if within_quality(r, own_baseline(r, group), FEW_STEP_TOLERANCE)]
    best = max(quality, key=lambda r: r.tpf, default=None)
    got = f"the most within quality is {best.method} at TPF {best.tpf:.2f}" if best else "no row within quality"
    most = max(diffusion, key=lambda r: r.tpf)
    return (f">= {FEW_STEP_TPF:g} tokens per forward within {FEW_STEP_TOLERANCE:.0%} of its own 1 token/step gen. PPL: "
            f"NOT MET ({got}; the highest TPF is {most.method}'s {most.tpf:.2f})")


def beats_causal(diffusion: list[BenchRow], ar: BenchRow) -> str:
    """At least as fast as the causal model with its KV cache at generative perplexity no worse than its."""
    if ar.gen_ppl is None:
        return "as fast as the causal model at its quality: no quality figure (give a reference model)"
    equal = [r for r in diffusion if r.gen_ppl is not None and r.gen_ppl <= ar.gen_ppl]
    if not equal:
        closest = min((r for r in diffusion if r.gen_ppl is not None), key=lambda r: r.gen_ppl, default=None)
        got = f"best gen. PPL {closest.gen_ppl:.2f} ({closest.method}) vs {ar.gen_ppl:.2f}" if closest else "no figure"
        return f"as fast as the causal model at its quality: NOT MET (no diffusion row at its quality: {got})"
    best = max(equal, key=lambda r: r.tokens_per_s)
    ratio = best.tokens_per_s / ar.tokens_per_s
    mark = "MET" if ratio >= 1 else "NOT MET"
    return (f"as fast as the causal model at its quality: {mark} ({best.method} at {ratio:.2f}x its tokens/s, "
            f"gen. PPL {best.gen_ppl:.2f} vs {ar.gen_ppl:.2f})")


def target_report(rows: list[BenchRow]) -> list[str]:
    """One line per target and (length, batch)."""
    lines = []
    groups: dict[tuple[int, int], list[BenchRow]] = {}
    for row in rows:
        groups.setdefault((row.length, row.batch), []).append(row)
    for (length, batch), group in groups.items():
        baseline = group[0]
        diffusion = [r for r in group if r.model != "ar"]
        good = [r for r in diffusion if within_quality(r, baseline)]
        best = max(good, key=lambda r: r.tokens_per_s, default=None)
        where = f"length {length}, batch {batch}"
        if length in TARGETS:
            need = TARGETS[length]
            mark = "MET" if best is not None and best.speedup >= need else "NOT MET"
            got = f"{best.method} at {best.speedup:.1f}x" if best else "no setting within quality"
            lines.append(f"{where}: >= {need:g}x the baseline within {QUALITY_TOLERANCE:.0%} quality: {mark} ({got})")
            own = [r for r in diffusion if not is_latent_role(r.model)]  # latent rows have no 1 token/step row
            lines.append(f"{where}: {few_step(own, group)}")
        ar = next((r for r in group if r.model == "ar"), None)
        if ar is not None:
            lines.append(f"{where}: {beats_causal(diffusion, ar)}")
    return lines
