"""Held-out likelihood: Monte Carlo NELBO for diffusion models, exact NLL for causal ones, bits per byte.

The held-out documents are tokenized as [BOS] doc [EOS], concatenated, and cut into windows of L tokens
that overlap by one: every window's first token is given (kept clean) and the other L - 1 are scored, so
the windows together score every token of the stream but the first BOS exactly once. Bits per byte
    bpb = total nats / (ln 2 x UTF-8 bytes of the documents)
compares models with different tokenizers.

Each process has an estimator of per-sequence nats (its registry entry's `likelihood`):
- masked (MDLM, Sahoo et al. 2024, eq. 10): -log p(x) <= E_t[ w(t) sum over masked i of -log p(x_i | z_t) ],
  w(t) = -alpha'(t) / (1 - alpha(t)), t ~ U[eps, 1]; with T discrete steps the weight is
  T (alpha(s) - alpha(t)) / (1 - alpha(t)), s = t - 1/T (MDLM eq. 8);
- block diffusion (BD3-LM, Arriola et al. 2025): the same bound per block given the clean blocks before it;
- ar: the exact chain rule sum of -log p(x_i | x_<i), one pass.
A Monte Carlo round scores every window once with times stratified across the round (antithetic:
u_j = (u + j / N) mod 1); rounds repeat until the standard error of the mean is below `rel_se` of the
estimate (at least `min_rounds`, at most `max_rounds`).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Callable

import torch

from sunfish.config import EvalConfig, ProcessConfig
from sunfish.registry import SPECS, Estimator, spec_of
from sunfish.tokenizer import Tokenizer

LN2 = math.log(2.0)


class UnsupportedProcess(ValueError):
    """The model's process kind has no likelihood estimator yet; the message is one sentence."""


@dataclass(frozen=True)
class HeldOut:
    windows: list[torch.Tensor]  # (N_i, L_i) batches of windows, each sharing one length
    tokens: int  # tokens scored (every window position but the first)
    bytes: int  # UTF-8 bytes of the documents covered
    documents: int


def held_out(docs: list[str], tokenizer: Tokenizer, seq_len: int, max_tokens: int = 0) -> HeldOut:
    """Windows of `seq_len` tokens (overlapping by one) over whole documents, up to about `max_tokens`."""
    if seq_len < 2:
        raise ValueError(f"the evaluation window must hold at least 2 tokens, not {seq_len}")
    stream: list[int] = []
    n_bytes, used = 0, 0
    for doc, ids in zip(docs, tokenizer.encode_batch(docs)):
        if max_tokens and used and len(stream) + len(ids) + 2 > max_tokens + 1:
            break
        stream += [tokenizer.bos_id, *ids, tokenizer.eos_id]
        n_bytes += len(doc.encode("utf-8"))
        used += 1
    if len(stream) < 2:
        raise ValueError("the held-out text is empty; pass files with at least one non-empty document")
    stride = seq_len - 1
    starts = range(0, len(stream) - 1, stride)
    full = [stream[s : s + seq_len] for s in starts if s + seq_len <= len(stream)]
    tail = [stream[s:] for s in starts if s + seq_len > len(stream) and len(stream) - s >= 2]
    windows = [torch.tensor(full, dtype=torch.long)] if full else []
    windows += [torch.tensor(tail[:1], dtype=torch.long)] if tail else []
    return HeldOut(windows=windows, tokens=len(stream) - 1, bytes=n_bytes, documents=used)


# ---- the estimator of each process -----------------------------------------------------------------

def estimator_for(cfg: ProcessConfig) -> Estimator:
    """The process's likelihood estimator (the registry's), or UnsupportedProcess (one sentence)."""
    spec = spec_of(cfg)
    if spec.likelihood is None:
        known = ", ".join(name for name, s in SPECS.items() if s.likelihood is not None)
        raise UnsupportedProcess(f"likelihood evaluation has no estimator for {spec.label} models (known: {known}); "
                                 "skip the likelihood suite for this model")
    return spec.likelihood


# ---- the Monte Carlo driver --------------------------------------------------------------------------

@dataclass(frozen=True)
class LikelihoodResult:
    method: str  # which estimator
    exact: bool  # True: exact NLL, no Monte Carlo error
    nats_per_token: float  # estimate of -log p per scored token (an upper bound for NELBO estimates)
    se: float  # standard error of nats_per_token (0 when exact)
    tokens: int
    bytes: int
    documents: int
    rounds: int  # Monte Carlo passes over the held-out text
    converged: bool  # reached se < rel_se x estimate within max_rounds

    @property
    def perplexity(self) -> float:
        return math.exp(self.nats_per_token) if self.nats_per_token < 700 else math.inf  # a loose bound must not overflow

    @property
    def perplexity_se(self) -> float:
        return self.perplexity * self.se  # delta method: d exp(m) = exp(m) dm

    @property
    def bits_per_byte(self) -> float:
        return self.nats_per_token * self.tokens / (LN2 * self.bytes)

    @property
    def bits_per_byte_se(self) -> float:
        return self.se * self.tokens / (LN2 * self.bytes)

    def line(self) -> str:
        if self.exact:
            return f"perplexity {self.perplexity:.3f} (exact), {self.bits_per_byte:.4f} bits/byte over {self.tokens:,} tokens"
        flag = "" if self.converged else " (s.e. target not reached)"
        return (f"perplexity <= {self.perplexity:.3f} ± {self.perplexity_se:.3f}, {self.bits_per_byte:.4f} ± "
                f"{self.bits_per_byte_se:.4f} bits/byte ({self.method}, {self.rounds} rounds over {self.tokens:,} tokens){flag}")

    def as_json(self) -> dict:
        return {"method": self.method, "exact": self.exact, "nats_per_token": self.nats_per_token, "se": self.se,
                "perplexity": self.perplexity, "perplexity_se": self.perplexity_se, "bits_per_byte": self.bits_per_byte,
                "bits_per_byte_se": self.bits_per_byte_se, "tokens": self.tokens, "bytes": self.bytes,
                "documents": self.documents, "rounds": self.rounds, "converged": self.converged}


def _round_nats(model, data: HeldOut, cfg: ProcessConfig, estimator: Estimator, mask_id: int, batch_size: int,
                generator: torch.Generator, device: torch.device) -> float:
    """Total nats of one pass over every window, times stratified across the pass."""
    n_windows = sum(w.shape[0] for w in data.windows)
    base = torch.rand(1, generator=generator, device=generator.device).item()
    total, j = 0.0, 0
    for group in data.windows:
        for batch in group.split(batch_size):
            u = (base + torch.arange(j, j + batch.shape[0], device=device) / n_windows) % 1.0  # (B,)
            total += float(estimator.nats(model, batch.to(device), cfg, mask_id, u, generator).sum())
            j += batch.shape[0]
    return total


@dataclass(frozen=True)
class MonteCarlo:
    mean: float
    se: float  # standard error of the mean over rounds
    rounds: int
    converged: bool  # se < rel_se x mean was reached


def monte_carlo(draw_round: Callable[[], float], cfg: EvalConfig, exact: bool = False,
                log: Callable[[str], None] | None = None) -> MonteCarlo:
    """Repeat `draw_round` (one unbiased estimate each) until se < cfg.rel_se x mean after at least
    cfg.min_rounds rounds, or cfg.max_rounds; an exact quantity takes one round."""
    rounds: list[float] = []
    mean, se = 0.0, 0.0
    while True:
        rounds.append(draw_round())
        mean = sum(rounds) / len(rounds)
        if exact:
            return MonteCarlo(mean=mean, se=0.0, rounds=1, converged=True)
        if len(rounds) >= 2:
            se = math.sqrt(sum((r - mean) ** 2 for r in rounds) / (len(rounds) - 1) / len(rounds))
            if log is not None:
                log(f"  round {len(rounds)}: {mean:.4f} ± {se:.4f}")
        converged = len(rounds) >= 2 and se < cfg.rel_se * abs(mean)
        if (len(rounds) >= cfg.min_rounds and converged) or len(rounds) >= cfg.max_rounds:
            return MonteCarlo(mean=mean, se=se, rounds=len(rounds), converged=converged)


@torch.no_grad()
def evaluate_likelihood(model: torch.nn.Module, process: ProcessConfig, mask_id: int, data: HeldOut, cfg: EvalConfig,
                        autocast=None, log: Callable[[str], None] | None = None) -> LikelihoodResult:
    """Estimate nats per token of `data` under `model`, with its standard error."""
    estimator = estimator_for(process)
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    model.eval()

    def draw_round() -> float:
        with autocast() if autocast is not None else contextlib.nullcontext():
            return _round_nats(model, data, process, estimator, mask_id, cfg.batch_size, generator, device) / data.tokens

    mc = monte_carlo(draw_round, cfg, exact=estimator.exact, log=log)
    return LikelihoodResult(method=estimator.name, exact=estimator.exact, nats_per_token=mc.mean, se=mc.se,
                            tokens=data.tokens, bytes=data.bytes, documents=data.documents, rounds=mc.rounds,
                            converged=mc.converged)


@torch.no_grad()
def reconstruction_suite(model: torch.nn.Module, process: ProcessConfig, data: HeldOut, batch_size: int) -> dict:
    """What a latent model reports instead of a likelihood: the sentence saying no bound exists, and the token
    accuracy of reading every held-out window back from its own latents (the registry's `reconstruction`)."""
    spec = spec_of(process)
    device = next(model.parameters()).device
    correct = total = 0
    for group in data.windows:
        for batch in group.split(batch_size):
            c, n = spec.reconstruction(model, batch.to(device))
            correct, total = correct + c, total + n
    return {"no_likelihood": f"no likelihood bound exists for {spec.label} models (text is decoded from latents, "
                             "whose density over texts is intractable); reconstruction token accuracy is reported instead",
            "reconstruction_accuracy": correct / max(total, 1), "tokens": total}
