"""Training the learned commit rule's filter (learned.py; after Learn2PD, ICLR 2026) in minutes on the CPU.

1. Reference: the exact sampler (one token per step in confidence order, no cache, greedy, the whole canvas:
   bench.one_per_step) decodes the prompts, or another `reference` setting does. Its final canvas y is the output
   the learned rule should reproduce.
2. States: at every step of that decoding, each masked position i of the active block gives the features f_i
   (learned.FEATURES) of the step's prediction, and two labels: commit y_i = [the current prediction at i is
   already y(i)], Learn2PD's "committing it now would not change the output"; and, where the prediction is
   EOS, end e_i = [y's text has ended by i: its first EOS is at or before i].
3. Training: the commit head by binary cross-entropy on (f_i, y_i), the end head on the EOS positions, full batch
   with Adam; the prompts are split so that a quarter of them (when there are four or more) is held out.
4. Thresholds: the commit bar is the lowest score at which the held-out positions passed have precision
   >= `precision` (the fraction of commits whose token is the exact output's); the end bar likewise at
   `end_precision`. With no qualifying bar a head passes nothing (the rule is then the exact sampler).
5. Check: the learned rule decodes the prompts (greedy, whole canvas); tokens per step and agreement with the
   reference output are reported.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import torch
import torch.nn.functional as F

from sunfish.config import CommitRule, SamplerConfig
from sunfish.sample.learned import FEATURES, FILE_NAME, CommitFilter, CommitSpec, filter_bytes, save_filter, step_features

if TYPE_CHECKING:
    from sunfish.loading import LoadedModel


@dataclass(frozen=True)
class CommitTuneResult:
    path: Path  # the filter file written
    spec: CommitSpec
    positions: int  # training states (masked positions over all reference steps)
    positive: float  # fraction labelled "already the exact output's token"
    precision: float  # held-out: of the positions the filter passes, the fraction labelled positive
    recall: float  # held-out: of the positive positions, the fraction the filter passes
    tokens_per_step: float  # the learned rule's check decode: generated tokens per step (exact sampler: 1)
    agreement: float  # its output's agreement with the reference output
    seconds: float  # the whole run


@dataclass
class _States:
    feats: list[torch.Tensor]  # (N_k, F) per step
    commit: list[torch.Tensor]  # (N_k,) labels
    end_feats: list[torch.Tensor]
    end: list[torch.Tensor]
    group: list[torch.Tensor]  # (N_k,) prompt index of each state (for the held-out split)
    vocab: int = 0  # the logits' width


def _record(loaded: LoadedModel, rows: list[list[int]], cfg: SamplerConfig, first: int, states: _States,
            reference: list[list[int]] | None) -> tuple[list[list[int]], int]:
    """Decode `rows` (prompt ids) greedily with `cfg` over the whole canvas, adding each step's states to `states`
    with labels against `reference` (the generated ids per row; None: against this decode's own output).
    Returns the generated ids per row and the steps the batch took."""
    eos_id, mask_id = loaded.tokenizer.eos_id, loaded.tokenizer.mask_id
    seen: list[tuple] = []

    def on_step(info, before: torch.Tensor) -> None:
        lo, hi = info.block
        feats, drawn, _, candidates = step_features(before, lo, hi, info.logits, cfg, None, mask_id, FEATURES, eos_id)
        seen.append((lo, feats[candidates].cpu(), drawn.cpu(), candidates.cpu()))
        states.vocab = info.logits.shape[-1]

    out, steps, fill_start = _decode_steps(loaded, rows, cfg, on_step)
    y = torch.tensor(out if reference is None else reference)  # (B, length)
    ended = _ended(y, eos_id) if eos_id is not None else None
    for lo, feats, drawn, candidates in seen:
        cols = slice(lo - fill_start, lo - fill_start + candidates.shape[1])
        states.feats.append(feats)
        states.commit.append((drawn == y[:, cols])[candidates].float())
        states.group.append(torch.arange(len(rows))[:, None].expand_as(candidates)[candidates] + first)
        if ended is not None:
            is_eos = (drawn == eos_id)[candidates]
            states.end_feats.append(feats[is_eos])
            states.end.append(ended[:, cols][candidates][is_eos].float())
    return out, steps


def _decode_steps(loaded: LoadedModel, rows: list[list[int]], cfg: SamplerConfig, on_step) -> tuple[list, int, int]:
    """Greedy decode of `cfg.length` tokens after each prompt of `rows` in one left-padded batch (as bench.decode),
    calling on_step(info, canvas before the step) after every step; (generated ids per row, steps, fill start)."""
    from sunfish.sample.batch import left_pad
    from sunfish.sample.text import decode_canvas

    mask_id, device = loaded.tokenizer.mask_id, loaded.device
    prompt, padding = left_pad(rows, loaded.tokenizer.pad_id, device)  # (B, P)
    B, P = prompt.shape
    canvas = torch.cat([prompt, torch.full((B, cfg.length), mask_id, dtype=prompt.dtype, device=device)], 1)
    last = [canvas]

    def callback(info) -> None:
        on_step(info, last[0])
        last[0] = info.tokens

    generator = torch.Generator(device=device).manual_seed(0)
    result = decode_canvas(loaded, canvas, P, cfg, generator, padding=padding, recorder=callback)
    return result.tokens[:, P:].tolist(), result.steps, P


def _ended(y: torch.Tensor, eos_id: int) -> torch.Tensor:
    """(B, n) whether each generated position is at or after its row's first EOS."""
    return (y == eos_id).long().cummax(-1).values.bool()


def _fit(filt: CommitFilter, head: str, x: torch.Tensor, y: torch.Tensor, epochs: int) -> None:
    """Train one head (commit or end) by binary cross-entropy, full batch, Adam (no randomness)."""
    params = list(getattr(filt, head).parameters())
    opt = torch.optim.Adam(params, lr=1e-2)
    for _ in range(epochs):
        commit, end = filt.logits(x)
        loss = F.binary_cross_entropy_with_logits(commit if head == "commit" else end, y)
        opt.zero_grad()
        loss.backward()
        opt.step()


@torch.no_grad()
def _bar(scores: torch.Tensor, labels: torch.Tensor, precision: float) -> float:
    """The lowest probability bar whose passed positions have precision >= `precision` (1.0: none does)."""
    if scores.numel() == 0:
        return 1.0
    order = scores.argsort(descending=True)
    hits = labels[order].cumsum(0) / torch.arange(1, len(order) + 1)
    ok = (hits >= precision).nonzero().flatten()
    if ok.numel() == 0:
        return 1.0
    return float(scores[order][int(ok[-1])])


def _split(group: torch.Tensor, n_prompts: int) -> torch.Tensor:
    """Held-out states (bool (N,)): those of every fourth prompt when there are four or more, else none."""
    if n_prompts < 4:
        return torch.zeros_like(group, dtype=torch.bool)
    return group % 4 == 3


def train_filter(states: _States, n_prompts: int, *, precision: float, end_precision: float, hidden: int,
                 epochs: int, seed: int, eos_id: int | None, vocab_size: int) -> tuple[CommitFilter, dict]:
    """Fit both heads on the recorded states and choose their bars; returns the filter and its held-out figures."""
    x, y, group = torch.cat(states.feats), torch.cat(states.commit), torch.cat(states.group)
    held = _split(group, n_prompts)
    fit, check = (~held, held) if held.any() else (torch.ones_like(held), torch.ones_like(held))
    spec = CommitSpec(features=FEATURES, hidden=hidden, threshold=1.0, end_threshold=None, eos_id=eos_id,
                      vocab_size=vocab_size)
    with torch.random.fork_rng(devices=[]):  # the initialisation follows `seed`, the caller's RNG is left alone
        torch.manual_seed(seed)
        filt = CommitFilter(spec)
    filt.mean.copy_(x[fit].mean(0))
    filt.std.copy_(x[fit].std(0).clamp_min(1e-3) if int(fit.sum()) > 1 else torch.ones(x.shape[1]))
    _fit(filt, "commit", x[fit], y[fit], epochs)
    with torch.no_grad():
        scores = filt.logits(x[check])[0].sigmoid()
    threshold = _bar(scores, y[check], precision)
    passed = scores >= threshold if threshold < 1 else torch.zeros_like(scores, dtype=torch.bool)
    figures = {"precision": float(y[check][passed].mean()) if passed.any() else 1.0,
               "recall": float(passed[y[check] > 0].float().mean()) if (y[check] > 0).any() else 0.0}
    end_threshold = _train_end(filt, states, end_precision, epochs)
    filt.spec = dataclasses.replace(spec, threshold=threshold, end_threshold=end_threshold)
    return filt, figures


def _train_end(filt: CommitFilter, states: _States, end_precision: float, epochs: int) -> float | None:
    """Fit the end head on the EOS predictions; None (no end head) without both kinds of example."""
    if not states.end:
        return None
    x, y = torch.cat(states.end_feats), torch.cat(states.end)
    if x.shape[0] < 8 or y.sum() == 0 or y.sum() == len(y):
        return None
    _fit(filt, "end", x, y, epochs)
    with torch.no_grad():
        scores = filt.logits(x)[1].sigmoid()
    bar = _bar(scores, y, end_precision)
    return None if bar >= 1 else bar


def train_commit_rule(loaded: LoadedModel, prompts: Sequence[str] | None, base: SamplerConfig, *,
                      out: str | Path | None = None, reference: SamplerConfig | None = None, precision: float = 0.9,
                      end_precision: float = 0.99, hidden: int = 32, epochs: int = 300, batch: int = 8,
                      seed: int = 0, log: Callable[[str], object] = lambda line: None) -> CommitTuneResult:
    """Record the reference decoding of `prompts`, train the filter, write it to `out` (default: the checkpoint's
    own commit_rule.safetensors, its manifest updated) and check it by decoding the prompts with it."""
    from sunfish.sample.bench import DEFAULT_PROMPTS, BenchError, agreement, encodable_prompts, one_per_step, prompt_ids

    if not loaded.spec.parallel or loaded.spec.causal:
        raise BenchError(f"'{loaded.path}' holds a model of the {loaded.spec.label} process; the learned commit rule "
                         "drives the unmasking samplers of masked and block diffusion models")
    if not 0 < precision <= 1 or not 0 < end_precision <= 1:
        raise BenchError("--precision and --end-precision are fractions in (0, 1], e.g. 0.9")
    began = time.perf_counter()
    prompts = list(prompts) if prompts else encodable_prompts(loaded, list(DEFAULT_PROMPTS))
    base = dataclasses.replace(base, temperature=0.0, top_k=0, top_p=1.0, stop_at_eos=False)
    ref_cfg = one_per_step(base) if reference is None else dataclasses.replace(
        reference, length=base.length, temperature=0.0, top_k=0, top_p=1.0, stop_at_eos=False)
    ids = prompt_ids(loaded, prompts, base.length)
    states = _States([], [], [], [], [])
    ref_out: list[list[int]] = []
    for first in range(0, len(ids), batch):
        out_rows, _ = _record(loaded, ids[first : first + batch], ref_cfg, first, states, None)
        ref_out += out_rows
        log(f"reference: {min(first + batch, len(ids))}/{len(ids)} prompts decoded")
    filt, figures = train_filter(states, len(ids), precision=precision, end_precision=end_precision, hidden=hidden,
                                 epochs=epochs, seed=seed, eos_id=loaded.tokenizer.eos_id, vocab_size=states.vocab)
    positions = sum(len(f) for f in states.commit)
    filt.spec = dataclasses.replace(filt.spec, trained={
        "checkpoint": str(loaded.path), "prompts": len(ids), "length": base.length,
        "block_length": base.block_length, "reference": _describe(ref_cfg), "positions": positions,
        "precision_target": precision, **figures})
    path = _write(loaded, filt, out)
    log(f"wrote the filter to {path}")
    learned = dataclasses.replace(base, rule=CommitRule.LEARNED, commit_model=str(path))
    tokens, steps = [], 0
    for row in ids:  # one prompt at a time: each row's own step count
        out_row, n, _ = _decode_steps(loaded, [row], learned, lambda info, before: None)
        tokens, steps = tokens + out_row, steps + n
    return CommitTuneResult(path=path, spec=filt.spec, positions=positions,
                            positive=float(torch.cat(states.commit).mean()), precision=figures["precision"],
                            recall=figures["recall"], tokens_per_step=len(ids) * base.length / max(steps, 1),
                            agreement=agreement(tokens, ref_out), seconds=time.perf_counter() - began)


def _describe(cfg: SamplerConfig) -> dict:
    return {"rule": cfg.rule.value, "steps": cfg.steps, "policy": cfg.policy.value, "block_length": cfg.block_length,
            "cache": cfg.cache.value}


def _write(loaded: LoadedModel, filt: CommitFilter, out: str | Path | None) -> Path:
    """Save to `out`, or into the checkpoint as commit_rule.safetensors with its manifest entry updated."""
    if out is not None:
        return save_filter(out, filt)
    from sunfish.checkpoint.files import MANIFEST, manifest_with
    from sunfish.fileio import write_bytes_atomic, write_text_atomic

    ckpt = Path(loaded.path)
    body = filter_bytes(filt)
    manifest = manifest_with(ckpt, FILE_NAME, body)
    write_bytes_atomic(ckpt / FILE_NAME, body)
    if manifest is not None:
        write_text_atomic(ckpt / MANIFEST, manifest)
    return ckpt / FILE_NAME
