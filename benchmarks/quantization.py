"""Precision and weight-only quantization: memory, decoding speed and quality against fp32, in one run.

    python benchmarks/quantization.py [--quick] [--checkpoint CKPT] [--d-model 128] [--layers 4] [--train-steps N]
                                      [--length 64] [--batch 1] [--repeats 5] [--rounds 8]
                                      [--device auto] [--threads N] [--workdir runs/bench-quantization]

A masked diffusion model (the given checkpoint, or one trained here on Sunfish's built-in English stories,
reused from --workdir when already there) is loaded once per variant: fp32 (the baseline), bf16, int8 blocks
(sunfish/quantize.py) over fp32 and over bf16, int8 blocks and an int8 LM head (the measurement behind
leaving the head alone by default); on CUDA also fp16 and int4 blocks (bf16). For each variant:

- weights: bytes of the parameters by their real storage (`weight_bytes`), and the fraction of fp32's;
- tokens/s: greedy decoding of --batch held-out story openings, --length tokens each, one token per step
  in blocks of 32 (the LLaDA-style baseline of benchmarks/sampling.py), median of --repeats; the runs are
  interleaved (each round decodes every variant once) so a change of machine load touches all alike;
- NELBO: held-out nats per token (MDLM's bound, eval/likelihood.py), --rounds Monte Carlo passes with the
  same seed for every variant (same masks and times), with its standard error; Δ is the difference from
  fp32's, paired on the same draws, so it is far more precise than either standard error;
- KL, top-1: one forward pass over held-out windows with half their tokens masked (one fixed draw): the mean
  KL(fp32 || variant) of the predicted distributions at the masked positions, and how often the most likely
  token is fp32's (a single-pass figure, so one changed token cannot cascade as it does in decoding);
- agreement: fraction of the greedily generated tokens equal to the fp32 model's (a token changed early
  changes the context of every later step, so this falls faster than top-1).

The table is Markdown. Weight-only int8 stores int8 weights and dequantizes them at every matmul: it saves
memory; whether it also saves time depends on a fused kernel (CUDA, or torch.compile), and in eager mode on a
CPU it costs time (see the figures). `--quick`: a 1-layer x 64 model, 40 steps, a smoke run of a minute.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from sampling import corpus_file, corpus_prompts, held_out  # benchmarks/sampling.py: built-in stories
from sunfish.checkpoint.files import list_checkpoints
from sunfish.config import EvalConfig, SamplerConfig, apply_tree, load_preset
from sunfish.eval.likelihood import LikelihoodResult, evaluate_likelihood
from sunfish.eval.likelihood import held_out as windows_of
from sunfish.loading import LoadedModel, load_model
from sunfish.quantize import Quantization, QuantizeError, quantize, weight_bytes
from sunfish.runtime import setup_runtime
from sunfish.sample.bench import agreement, batch_of, decode, one_per_step, prompt_ids
from sunfish.training.loop import train


@dataclass(frozen=True)
class Variant:
    label: str
    dtype: str  # the weights' dtype at load (runtime.DTYPES)
    quant: Quantization = Quantization.NONE
    head: bool = False  # also quantize the LM head
    cuda_only: bool = False


VARIANTS = [
    Variant("fp32", "fp32"),
    Variant("bf16", "bf16"),
    Variant("fp16", "fp16", cuda_only=True),
    Variant("int8 (fp32 activations)", "fp32", Quantization.INT8),
    Variant("int8 + head (fp32 activations)", "fp32", Quantization.INT8, head=True),
    Variant("int8 (bf16 activations)", "bf16", Quantization.INT8),
    Variant("int4 (bf16 activations)", "bf16", Quantization.INT4, cuda_only=True),
]


@dataclass
class Row:
    variant: Variant
    loaded: LoadedModel
    bytes: int
    seconds: list[float]
    tokens: list[list[int]]
    nelbo: LikelihoodResult | None = None
    kl: float = 0.0  # mean KL(fp32 || variant) of the one-pass predictions at masked held-out positions, nats
    top1: float = 1.0  # fraction of those positions whose most likely token is fp32's


def trained(workdir: Path, args: argparse.Namespace) -> Path:
    """A masked model of the asked width in workdir, trained here on built-in stories unless already there."""
    out = workdir / f"masked-d{args.d_model}-l{args.layers}-s{args.train_steps}"
    if list_checkpoints(out):
        print(f"reusing {out}")
        return out
    data = corpus_file("builtin", workdir, args.docs)
    tree = {"model": {"d_model": args.d_model, "n_layers": args.layers, "n_heads": max(args.d_model // 64, 2),
                      "context": args.context},
            "train": {"steps": args.train_steps, "batch_size": 16, "log_every": 50, "val_every": 0, "threads": args.threads},
            "optim": {"lr": 2e-3, "warmup_steps": min(50, args.train_steps // 10 + 1)}}
    cfg = apply_tree(load_preset("nano"), tree)
    print(f"training a masked model ({args.d_model} x {args.layers}, {cfg.train.steps} steps, context "
          f"{cfg.model.context}) into {out}", flush=True)
    result = train(cfg, run_dir=out, data=[str(data)], progress=False, log=lambda line: None)
    print(f"  {result.parameters:,} parameters, final loss {result.final_loss:.3f}, {result.seconds:.0f} s", flush=True)
    return out


def loaded_rows(path: Path, device: torch.device) -> list[Row]:
    """The model loaded once per variant that runs on `device`; a variant the model refuses (an int8 head
    when the head is tied to the embedding, int4 on narrow layers) is left out with a note."""
    rows = []
    for v in VARIANTS:
        if v.cuda_only and device.type != "cuda":
            continue
        loaded = load_model(path, device, dtype=v.dtype)
        try:
            quantize(loaded.model, v.quant, device, head=v.head)
        except QuantizeError as err:
            print(f"{v.label}: left out ({err})")
            continue
        rows.append(Row(variant=v, loaded=loaded, bytes=weight_bytes(loaded.model), seconds=[], tokens=[]))
    return rows


def timed(rows: list[Row], prompt_rows: list[list[int]], cfg: SamplerConfig, repeats: int) -> None:
    """Decode `prompt_rows` with every variant once per round, `repeats` rounds."""
    for _ in range(repeats):
        for row in rows:
            row.seconds.append(decode(row.loaded, prompt_rows, cfg).seconds)


def generated(rows: list[Row], prompt_rows: list[list[int]], cfg: SamplerConfig) -> None:
    """Each variant's greedy output for all the prompts in one batch (untimed; also the warm-up)."""
    for row in rows:
        row.tokens = decode(row.loaded, prompt_rows, cfg).tokens


def scored(rows: list[Row], texts: list[str], rounds: int) -> None:
    """Held-out NELBO of every variant with one Monte Carlo seed (the same masks and times for all)."""
    cfg = EvalConfig(seed=0, batch_size=16, min_rounds=rounds, max_rounds=rounds)
    for row in rows:
        m = row.loaded
        data = windows_of(texts, m.tokenizer, m.cfg.model.context, cfg.max_tokens)
        row.nelbo = evaluate_likelihood(m.model, m.cfg.process, m.tokenizer.mask_id, data, cfg)


def one_pass(rows: list[Row], texts: list[str], windows: int = 32) -> None:
    """Each variant's predictions against fp32's in one forward pass over held-out windows with half their
    tokens masked (one fixed draw): unlike greedy agreement, one changed token cannot cascade here."""
    m = rows[0].loaded
    x = windows_of(texts, m.tokenizer, m.cfg.model.context).windows[0][:windows].to(m.device)  # (N, L)
    masked = torch.rand(x.shape, generator=torch.Generator().manual_seed(0)).to(m.device) < 0.5  # (N, L)
    x = torch.where(masked, torch.full_like(x, m.tokenizer.mask_id), x)
    with torch.no_grad():
        ref = rows[0].loaded.model(x)[masked].float().log_softmax(-1)  # (masked, V)
        for row in rows:
            out = row.loaded.model(x)[masked].float().log_softmax(-1)  # (masked, V)
            row.kl = float((ref.exp() * (ref - out)).sum(-1).mean())
            row.top1 = float((out.argmax(-1) == ref.argmax(-1)).float().mean())


def table(rows: list[Row], generated: int) -> str:
    base = rows[0]
    base_speed = generated / statistics.median(base.seconds)
    lines = ["| variant | weights (MB) | vs fp32 | tokens/s | vs fp32 | NELBO (nats/token) | Δ NELBO | KL (nats) | "
             "top-1 | agreement |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        speed = generated / statistics.median(row.seconds)
        nelbo, delta = row.nelbo.nats_per_token, row.nelbo.nats_per_token - base.nelbo.nats_per_token
        lines.append(f"| {row.variant.label} | {row.bytes / 1e6:.2f} | {row.bytes / base.bytes:.3f} | {speed:,.1f} | "
                     f"{speed / base_speed:.2f}x | {nelbo:.4f} ± {row.nelbo.se:.4f} | {delta:+.4f} | {row.kl:.1e} | "
                     f"{row.top1:.4f} | {agreement(row.tokens, base.tokens):.3f} |")
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a 1-layer x 64 model, 40 steps, 2 repeats, 2 rounds")
    p.add_argument("--checkpoint", type=Path, help="a masked diffusion run or checkpoint (default: train one)")
    p.add_argument("--d-model", type=int, default=128, help="width of the model trained here (default 128)")
    p.add_argument("--layers", type=int, default=4, help="layers of the model trained here (default 4)")
    p.add_argument("--train-steps", type=int, default=600, help="training steps of the model trained here (default 600)")
    p.add_argument("--context", type=int, default=192, help="context of the model trained here (default 192)")
    p.add_argument("--docs", type=int, default=20000, help="built-in stories to train on (default 20000)")
    p.add_argument("--length", type=int, default=64, help="tokens generated per prompt (default 64)")
    p.add_argument("--batch", type=int, default=1, help="prompts decoded together (default 1)")
    p.add_argument("--repeats", type=int, default=5, help="timed decodes per variant, median shown (default 5)")
    p.add_argument("--rounds", type=int, default=8, help="Monte Carlo passes of the NELBO (default 8)")
    p.add_argument("--stories", type=int, default=32, help="held-out stories scored (default 32)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0 = torch's default; on a shared "
                   "machine 1 avoids oversubscription, which made the same forward pass 10-50x slower here)")
    p.add_argument("--workdir", type=Path, default=Path("runs/bench-quantization"), help="where trained models go")
    args = p.parse_args()
    if args.quick:
        args.d_model, args.layers, args.train_steps, args.context = 64, 1, 40, 128
        args.repeats, args.rounds, args.stories, args.length = 2, 2, 8, 32
    return args


def main() -> None:
    args = parse_args()
    rt = setup_runtime(args.device, threads=args.threads)
    path = args.checkpoint or trained(args.workdir, args)
    rows = loaded_rows(path, rt.device)
    prompts = prompt_ids(rows[0].loaded, corpus_prompts("builtin"), args.length)  # 8 held-out story openings
    cfg = one_per_step(SamplerConfig(length=args.length, block_length=min(32, args.length)))
    began = time.perf_counter()
    generated(rows, prompts, cfg)
    timed(rows, batch_of(prompts, args.batch), cfg, args.repeats)
    stories = held_out("builtin", args.stories)
    scored(rows, stories, args.rounds)
    one_pass(rows, stories)
    m = rows[0].loaded
    print(f"\n{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"device {rt.device}; {path}: {m.cfg.model.d_model} x {m.cfg.model.n_layers}, "
          f"{sum(p.numel() for p in m.model.parameters()):,} parameters")
    print(f"tokens/s: greedy, {args.length} tokens x {args.batch} prompt(s), one token per step in blocks of "
          f"{cfg.block_length}, median of {args.repeats}; agreement: the {len(prompts)} prompts' outputs; NELBO: "
          f"{args.stories} held-out stories, {args.rounds} Monte Carlo rounds, seed 0\n")
    print(table(rows, args.length * args.batch))
    print(f"\n({time.perf_counter() - began:.0f} s of measuring)")


if __name__ == "__main__":
    main()
