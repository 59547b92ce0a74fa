"""Info-Gain against the confidence, margin and entropy policies at equal steps (issue 19).

    python benchmarks/info_gain.py [--workdir runs/bench-info-gain] [--diffusion CKPT --ar CKPT]
        [--train-steps diffusion=1200,ar=600] [--length 64] [--steps 64] [--block-length 32] [--prompts 48]
        [--candidates 8] [--temperatures 0,0.8] [--infill-windows 64] [--threads 1]

Every policy decodes the same prompts with the same step budget (the fixed rule, --steps steps for --length
tokens in semi-autoregressive blocks, no cache), so the rows differ only in which masks each step commits.
Figures per policy and temperature:
* NFE/token: network passes per generated token (Info-Gain's lookahead passes included);
* gen. PPL: perplexity of the text (cut at EOS) under a causal model trained on the same data (± its standard
  error over the samples), with
  distinct-1/2/3 (unique word n-grams / all, pooled over the samples) and rep-4 (mean share of a sample's word
  4-grams seen earlier in it) beside it, since repetitive text scores well;
* cum. H: the paper's cumulative entropy, sum over steps of the entropy of the committed positions' marginals
  at commit time, per generated token (nats): what Info-Gain sets out to lower;
* seconds of decoding.
Then infilling at the same ratio of steps to masked tokens, greedy: held-out windows of --window characters with
one span masked (16 characters at a seeded offset, and the middle third), exact-character accuracy of the fill
(± its standard error over windows) and the share of spans restored whole.

Models: pass a masked-diffusion checkpoint and a causal one on the same tokenizer, or let the script train both
(character vocabulary, --layers x --width, context 128, on --docs of Sunfish's built-in English stories, seed 1)
into --workdir, reusing models already trained there. Prompts and infill windows come from built-in stories
drawn with seed 2 (not in training). The `info_gain w=0` row is the information term switched off: it must
equal the entropy row (the policy Info-Gain generalises).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import platform
import time
from pathlib import Path

import torch

from sunfish.config import CacheMode, CommitRule, Policy, SamplerConfig, apply_tree, load_preset
from sunfish.checkpoint.files import list_checkpoints
from sunfish.data.synth import generate_stories
from sunfish.eval.generative import diversity
from sunfish.eval.infill import span_mask
from sunfish.loading import load_model
from sunfish.model.transformer import count_parameters
from sunfish.process.schedules import MaskSchedule
from sunfish.runtime import setup_runtime
from sunfish.sample.batch import row_generators
from sunfish.sample.bench import check_reference, generative_nll
from sunfish.sample.policies import entropy
from sunfish.sample.prompt import cut_at_eos
from sunfish.sample.text import decode_canvas, never_sampled
from sunfish.sample.unmask import unmask
from sunfish.training.loop import train

CONTEXT = 128  # of the models trained here: [BOS] + prompt + generation, and an infill window, must fit
KINDS = {"diffusion": {}, "ar": {"process": {"kind": "ar"}, "model": {"attention": "causal"}}}


@dataclasses.dataclass(frozen=True)
class Method:
    name: str
    settings: dict  # SamplerConfig fields


def methods(candidates: int) -> list[Method]:
    ig = {"policy": Policy.INFO_GAIN, "info_gain_candidates": candidates}
    return [Method("confidence", {"policy": Policy.CONFIDENCE}), Method("margin", {"policy": Policy.MARGIN}),
            Method("entropy", {"policy": Policy.ENTROPY}),
            Method(f"info_gain N={candidates}", ig),
            Method("info_gain w=0", {**ig, "info_gain_weight": 0.0})]


def trained(kind: str, workdir: Path, docs: int, steps: int, width: int, layers: int, threads: int) -> Path:
    """A checkpoint of `kind` in workdir/kind, trained here unless one is already there."""
    out = workdir / kind
    if list_checkpoints(out):
        print(f"reusing {out}", flush=True)
        return out
    data = workdir / f"builtin-en-{docs}.jsonl"
    if not data.exists():
        workdir.mkdir(parents=True, exist_ok=True)
        data.write_text("".join(json.dumps({"text": t}) + "\n" for t in generate_stories("en", docs, seed=1)),
                        encoding="utf-8")
    tree = {"model": {"d_model": width, "n_layers": layers, "n_heads": 4, "context": CONTEXT},
            "train": {"steps": steps, "batch_size": 16, "log_every": 100, "val_every": 0, "threads": threads},
            "optim": {"lr": 2e-3, "warmup_steps": 50}}
    for section, values in KINDS[kind].items():
        tree.setdefault(section, {}).update(values)
    cfg = apply_tree(load_preset("nano"), tree)
    print(f"training the {kind} model ({steps} steps) into {out}", flush=True)
    result = train(cfg, run_dir=out, data=[str(data)], progress=False, log=lambda line: None)
    print(f"  {result.parameters:,} parameters, final loss {result.final_loss:.3f}, {result.seconds:.0f} s", flush=True)
    return out


def sampler(loaded, length: int, steps: int, block_length: int, temperature: float, settings: dict) -> SamplerConfig:
    return dataclasses.replace(loaded.cfg.sampler, length=length, steps=steps, block_length=block_length,
                               temperature=temperature, top_k=0, top_p=1.0, rule=CommitRule.FIXED, cache=CacheMode.NONE,
                               stop_at_eos=False, remask="none", guidance=0.0, **settings)


@torch.no_grad()
def generate(loaded, prompts: torch.Tensor, cfg: SamplerConfig) -> dict:
    """Decode `prompts` (B, P) with per-row seeds; the figures of one table row."""
    tok = loaded.tokenizer
    B, P = prompts.shape
    canvas = torch.cat([prompts, torch.full((B, cfg.length), tok.mask_id, dtype=torch.long)], 1)
    states = [canvas]
    began = time.perf_counter()
    result = decode_canvas(loaded, canvas, P, cfg, row_generators(range(B), "cpu"),
                           recorder=lambda info: states.append(info.tokens))
    seconds = time.perf_counter() - began
    cum = cumulative_entropy(loaded, states)
    tokens = [cut_at_eos(row, tok.eos_id) for row in result.tokens[:, P:].tolist()]
    return {"nfe_per_token": result.nfe / cfg.length, "cum_entropy": cum / (B * cfg.length), "seconds": seconds,
            "tokens": tokens, "texts": [tok.decode(t) for t in tokens]}


@torch.no_grad()
def cumulative_entropy(loaded, states: list[torch.Tensor]) -> float:
    """Sum over steps and rows of the entropy of each committed position's marginal on the state before the step
    (exact forward passes, not counted in any NFE)."""
    banned = sorted({loaded.tokenizer.mask_id, *never_sampled(loaded.tokenizer)})
    total = 0.0
    for before, after in zip(states, states[1:]):
        logits = loaded.model(before).float()  # (B, L, V)
        logits[..., banned] = float("-inf")
        total += float(entropy(logits.softmax(-1))[before != after].sum())
    return total


def perplexity(ref, prompts: list[list[int]], tokens: list[list[int]]) -> tuple[float, float]:
    """Generative perplexity of the samples under `ref` (pooled over tokens) and its standard error (the spread of
    the per-sample NLL per token, through the exponential)."""
    per_row = [generative_nll(ref, [p], [t]) for p, t in zip(prompts, tokens)]
    ppl = math.exp(sum(n for n, _ in per_row) / max(sum(c for _, c in per_row), 1))
    means = [n / c for n, c in per_row if c]
    return ppl, ppl * statistics.stdev(means) / math.sqrt(len(means)) if len(means) > 1 else float("nan")


@torch.no_grad()
def infill(loaded, windows: torch.Tensor, kind: str, ratio: float, settings: dict) -> tuple[float, float, float]:
    """(character accuracy, its standard error over windows, share of spans restored whole) of greedy fills at
    `ratio` steps per masked token."""
    spans = span_mask(windows.shape[1], windows.shape[0], kind, torch.Generator().manual_seed(0))
    n = int(spans[0].sum())
    cfg = sampler(loaded, n, max(1, round(n * ratio)), 0, 0.0, settings)
    schedule = MaskSchedule(loaded.cfg.process.mask_schedule, loaded.cfg.process.eps)
    filled = unmask(loaded.model, windows.masked_fill(spans, loaded.tokenizer.mask_id), loaded.tokenizer.mask_id, cfg,
                    generator=torch.Generator().manual_seed(0), schedule=schedule,
                    suppress=never_sampled(loaded.tokenizer)).tokens
    right = (filled == windows) & spans
    per_window = right.sum(1).float() / spans.sum(1).float()  # (N,)
    return (float(right.sum()) / float(spans.sum()), float(per_window.std() / math.sqrt(len(per_window))),
            float((right.sum(1) == spans.sum(1)).float().mean()))


def held_out(loaded, n: int, chars: int) -> torch.Tensor:
    """(n, 1 + chars): [BOS] and the first `chars` characters of n built-in stories drawn with seed 2."""
    tok = loaded.tokenizer
    stories = generate_stories("en", n, seed=2)
    return torch.tensor([[tok.bos_id] + tok.encode(s)[:chars] for s in stories], dtype=torch.long)


def _steps(value: str) -> dict[str, int]:
    pairs = dict(item.split("=", 1) for item in value.split(",")) if "=" in value else {k: value for k in KINDS}
    return {kind: int(n) for kind, n in pairs.items()}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--diffusion", help="masked diffusion checkpoint (default: train one)")
    p.add_argument("--ar", help="causal checkpoint on the same tokenizer, the perplexity scorer (default: train one)")
    p.add_argument("--workdir", type=Path, default=Path("runs/bench-info-gain"), help="where trained models go")
    p.add_argument("--train-steps", type=_steps, default=_steps("diffusion=1200,ar=600"), help="N or kind=N,...")
    p.add_argument("--docs", type=int, default=8000, help="built-in stories to train on (default 8000)")
    p.add_argument("--width", type=int, default=96, help="d_model of the models trained here (default 96)")
    p.add_argument("--layers", type=int, default=3, help="layers of the models trained here (default 3)")
    p.add_argument("--length", type=int, default=64, help="generated tokens per prompt (default 64)")
    p.add_argument("--steps", type=int, default=64, help="denoising steps for --length tokens (default 64)")
    p.add_argument("--block-length", type=int, default=32, help="semi-autoregressive block length (default 32)")
    p.add_argument("--prompt-chars", type=int, default=24, help="characters of each prompt (default 24)")
    p.add_argument("--prompts", type=int, default=48, help="prompts (default 48)")
    p.add_argument("--candidates", type=int, default=8, help="Info-Gain candidates per step (default 8)")
    p.add_argument("--temperatures", default="0,0.8", help="sampling temperatures (default 0,0.8)")
    p.add_argument("--window", type=int, default=48, help="characters per infill window (default 48)")
    p.add_argument("--infill-windows", type=int, default=64, help="infill windows (default 64)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for torch (default 1)")
    return p


def _row(name: str, temperature: float, fig: dict, ppl: tuple[float, float], div: dict) -> str:
    return (f"| {name} | {temperature:g} | {fig['nfe_per_token']:.2f} | {ppl[0]:.2f} ± {ppl[1]:.2f} | {div['distinct_1']:.3f} | "
            f"{div['distinct_2']:.3f} | {div['distinct_3']:.3f} | {div['repetition_4']:.3f} | {fig['cum_entropy']:.3f} | "
            f"{fig['seconds']:.1f} |")


def main() -> None:
    args = _parser().parse_args()
    rt = setup_runtime("cpu", threads=args.threads)
    paths = {"diffusion": args.diffusion, "ar": args.ar}
    for kind in KINDS:
        paths[kind] = paths[kind] or trained(kind, args.workdir, args.docs, args.train_steps[kind], args.width,
                                             args.layers, args.threads)
    model, ref = load_model(paths["diffusion"], rt.device), load_model(paths["ar"], rt.device)
    check_reference(ref, model)
    need = max(1 + args.prompt_chars + args.length, args.window)
    if need > min(model.cfg.model.context, ref.cfg.model.context):
        raise SystemExit(f"prompts, generation and infill windows need a context of {need}; lower --length, "
                         "--prompt-chars or --window")
    print(f"\n{platform.processor() or platform.machine()}, {torch.get_num_threads()} thread(s), torch {torch.__version__}; "
          f"masked model {count_parameters(model.model):,} parameters, causal scorer {count_parameters(ref.model):,}")
    print(f"{args.prompts} prompts of {args.prompt_chars} characters, {args.length} tokens in {args.steps} steps, "
          f"blocks of {args.block_length}; Info-Gain heuristic confidence, position temperature "
          f"{model.cfg.sampler.info_gain_temperature:g}, w = 1 unless noted\n")
    prompts = held_out(model, args.prompts, args.prompt_chars)
    print("| policy | T | NFE/token | gen. PPL | distinct-1 | distinct-2 | distinct-3 | rep-4 | cum. H | seconds |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    samples = {}
    for temperature in (float(t) for t in args.temperatures.split(",")):
        for m in methods(args.candidates):
            cfg = sampler(model, args.length, args.steps, args.block_length, temperature, m.settings)
            fig = generate(model, prompts, cfg)
            ppl = perplexity(ref, prompts.tolist(), fig["tokens"])
            print(_row(m.name, temperature, fig, ppl, diversity(fig["texts"])), flush=True)
            samples[(m.name, temperature)] = fig["texts"][0]
    windows = held_out(model, args.infill_windows, args.window - 1)
    print(f"\nInfilling, greedy, {args.infill_windows} windows of {args.window} characters, steps per masked "
          f"character {args.steps / args.length:g} (as in generation)\n")
    print("| policy | span 16: accuracy | exact | middle third: accuracy | exact |")
    print("|---|---:|---:|---:|---:|")
    for m in methods(args.candidates):
        figures = [infill(model, windows, kind, args.steps / args.length, m.settings) for kind in ("16", "middle_third")]
        print(f"| {m.name} | " + " | ".join(f"{acc:.3f} ± {se:.3f} | {exact:.3f}" for acc, se, exact in figures) + " |",
              flush=True)
    print("\nThe first prompt's continuation per row:")
    for (name, temperature), text in samples.items():
        print(f"  {name}, T={temperature:g}: {text!r}")


if __name__ == "__main__":
    main()
