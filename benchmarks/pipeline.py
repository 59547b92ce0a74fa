"""Pipelined block decoding (D2F, sample/pipeline.py): forward passes, speed and quality against plain block decoding.

    python benchmarks/pipeline.py --block CKPT [CKPT ...] [--ar CKPT] [--lengths 64,128] [--batch 1,8]
                                  [--starts 1,0.5,0.25] [--repeats 3] [--threads N]

For each block-diffusion checkpoint (e.g. one trained with BD3-LM's loss alone and one with --process.block_forcing),
each length and batch size: plain block decoding (block_generate, a separate pass appends each finished block to the
cache) and the pipeline at each start ratio (1 = one block at a time, the appends riding on the steps), under two
rules: one token per step at the active block (the fixed rule, steps = length) and threshold 0.9. Figures: forward
passes per generated token, tokens/s (median of --repeats, every row of a batch counted), agreement with plain block
decoding's output under the same rule, generative perplexity under the causal model --ar (when given) and the
output's unigram entropy. Decoding is greedy over the whole canvas (no EOS stop). Prints a markdown table.

    python benchmarks/pipeline.py --counting [--train-steps 300]

trains two tiny block models (2 layers x 32, blocks of 4) on sequences that count up modulo 12 from a random phase,
one with BD3-LM's loss alone and one with half the rows under diffusion forcing (--process.block_forcing 0.5), and
prints the same figures with the fraction of correct transitions (token i + 1 follows token i) as the quality: a
task on which a tiny model becomes confident in seconds, standing in for a large model on text it knows.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
from pathlib import Path

import torch

from sunfish.config import CommitRule, SamplerConfig
from sunfish.loading import load_model
from sunfish.sample.bench import agreement, batch_of, decode, generative_ppl, prompt_ids, unigram_entropy

PROMPTS = ["Once upon a time", "The little girl", "One day, a boy", "The dog ran to", "Tom and Lily were",
           "The sun was warm", "A big cat sat", "Маша нашла"]
RULES = {"1 token/step": dict(rule=CommitRule.FIXED), "threshold 0.9": dict(rule=CommitRule.THRESHOLD, threshold=0.9)}


def settings(length: int, rule: dict, starts: list[float]) -> list[tuple[str, SamplerConfig]]:
    """(label, sampler) rows for one rule: plain block decoding, then the pipeline at each start ratio."""
    base = SamplerConfig(length=length, steps=length, **rule)
    rows = [("block_generate", base)]
    for start in starts:
        # start 1 routes to block_generate through the registry; pipeline_threshold below 1 makes it the pipeline
        # itself (the threshold acts only on not-yet-activated blocks, which start 1 never has)
        rows.append((f"pipeline start {start:g}", dataclasses.replace(base, pipeline_start=min(start, 1 - 1e-6))))
    return rows


def measure(loaded, rows: list[list[int]], cfg: SamplerConfig, repeats: int):
    runs = [decode(loaded, rows, cfg) for _ in range(max(repeats, 1))]
    speed = statistics.median(len(rows) * cfg.length / max(r.seconds, 1e-9) for r in runs)
    return runs[0], speed


def counting(steps: int) -> None:
    """The counting task (see the module docstring): forcing 0 and 0.5, 4 prompts, 24 tokens."""
    from sunfish.config import MaskScheduleKind, ModelConfig, ProcessConfig
    from sunfish.model.transformer import build_model
    from sunfish.process.schedules import MaskSchedule
    from sunfish.registry import training_loss
    from sunfish.sample.block import block_generate
    from sunfish.sample.pipeline import pipeline_generate

    def cycle(g, rows=16):
        return (torch.randint(0, 12, (rows, 1), generator=g) + torch.arange(32)) % 12 + 4

    schedule, prompt = MaskSchedule(MaskScheduleKind.LINEAR), cycle(torch.Generator().manual_seed(9), 4)[:, :5]
    print("| forcing | rule | decoder | passes/token | correct transitions |")
    print("|---|---|---|---|---|")
    for forcing in (0.0, 0.5):
        torch.manual_seed(0)
        model = build_model(ModelConfig(vocab_size=32, d_model=32, n_layers=2, n_heads=2, context=64))
        process, g = ProcessConfig(block_size=4, block_forcing=forcing), torch.Generator().manual_seed(0)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        for _ in range(steps):
            loss = training_loss(model, cycle(g), process, 3, g).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        for rule_name, rule in RULES.items():
            for label, cfg in settings(24, rule, [1.0, 0.5, 0.25]):
                decoder = block_generate if label == "block_generate" else pipeline_generate
                out = decoder(model, prompt, 24, 3, 4, cfg, generator=torch.Generator(), schedule=schedule)
                right = ((out.tokens[:, 1:] - 4) % 12 == (out.tokens[:, :-1] - 3) % 12).float().mean()
                print(f"| {forcing:g} | {rule_name} | {label} | {out.nfe / 24:.3f} | {float(right):.3f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--block", nargs="+", default=[], help="block-diffusion checkpoints or run folders")
    ap.add_argument("--counting", action="store_true", help="the counting task instead of checkpoints")
    ap.add_argument("--train-steps", type=int, default=300, help="--counting: training steps per model")
    ap.add_argument("--ar", default=None, help="causal model for generative perplexity")
    ap.add_argument("--lengths", default="64,128")
    ap.add_argument("--batch", default="1,8")
    ap.add_argument("--starts", default="1,0.5,0.25")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.counting:
        return counting(args.train_steps)
    if not args.block:
        ap.error("give --block CKPT [CKPT ...] or --counting")
    lengths, batches = [int(v) for v in args.lengths.split(",")], [int(v) for v in args.batch.split(",")]
    starts = [float(v) for v in args.starts.split(",")]
    ar = load_model(args.ar, "cpu") if args.ar else None
    print("| model | length | batch | rule | decoder | passes/token | tokens/s | agreement | gen. ppl | entropy |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for path in args.block:
        loaded = load_model(path, "cpu")
        name = Path(path).name
        for length in lengths:
            ids = prompt_ids(loaded, PROMPTS, length)
            for batch in batches:
                rows = batch_of(ids, batch)
                for rule_name, rule in RULES.items():
                    reference = None
                    for label, cfg in settings(length, rule, starts):
                        out, speed = measure(loaded, rows, cfg, args.repeats)
                        reference = reference or out.tokens
                        ppl = f"{generative_ppl(ar, rows, out.tokens):.2f}" if ar is not None else "-"
                        print(f"| {name} | {length} | {batch} | {rule_name} | {label} | {out.nfe_per_token:.3f} | "
                              f"{speed:,.0f} | {agreement(out.tokens, reference):.3f} | {ppl} | "
                              f"{unigram_entropy(out.tokens):.3f} |", flush=True)


if __name__ == "__main__":
    main()
