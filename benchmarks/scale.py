"""Scaling: tokens/s and model FLOP utilisation of `sunfish train` in 1 vs 2 processes, and on a GPU.

    python benchmarks/scale.py [--quick] [--repeats 3] [--steps 30] [--presets nano,tiny]
    python benchmarks/scale.py --gpu [--presets small,dllm-ru-300m]     # on a CUDA machine
    python benchmarks/scale.py --memory [--presets nano,quickstart,tiny,micro]

CPU (default): each preset trains the same global batch (2 x 8 sequences) as one process (2 micro-batches
of 8, all threads, and one thread) and as two torchrun processes (gloo; DDP and FSDP2, one thread each, 8 sequences
per rank). tokens/s is the median over logged steps after the first (warm-up) of each run, then the
median over --repeats runs; MFU divides 6 N + 12 layers d L FLOPs per token by the machine's measured
peak fp32 matmul rate (all cores). Runs are interleaved; the ratio is against the 1-process run of the
same preset measured in the same invocation.

GPU (--gpu): each preset at bf16 with and without torch.compile and activation checkpointing (one
process, batch from the preset, its context), MFU against the GPU's data-sheet peak (training/observe.py),
and the peak allocated memory against `sunfish estimate`'s prediction for the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from sunfish.config import ParallelKind, load_preset
from sunfish.data.synth import generate_stories
from sunfish.data.sources import write_documents
from sunfish.training.estimate import EstimateInput, estimate, preset_model
from sunfish.training.observe import flops_per_token

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import peak_matmul_gflops  # noqa: E402  (the same peak measurement as the throughput benchmark)

MICRO_BATCH = 8


def run_train(cmd: list[str], env: dict) -> list[dict]:
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{done.stderr[-2000:]}")
    out = Path(cmd[cmd.index("--out") + 1])
    return [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]


def trained_model(out: Path):
    """The ModelConfig a run trained (its vocabulary comes from the tokenizer trained on the corpus)."""
    from sunfish.checkpoint.files import list_checkpoints, read_config

    return read_config(list_checkpoints(out)[-1]).model


def model_flops(model, seq: int) -> float:
    params = estimate(EstimateInput(model=model, batch=1, seq_len=seq)).parameters
    return flops_per_token(params, model.n_layers, model.d_model, seq)


def median_tps(lines: list[dict]) -> float:
    figures = [l["tokens_per_s"] for l in lines[1:] if "tokens_per_s" in l and "val_loss" not in l]
    return statistics.median(figures)


def cpu_cases(preset: str, corpus: Path, work: Path, steps: int) -> dict[str, list[str]]:
    seq = min(load_preset(preset).model.context, 256)
    common = ["train", "--preset", preset, "--data", str(corpus), "--steps", str(steps), "--no-progress",
              f"--train.seq_len={seq}", f"--train.batch_size={MICRO_BATCH}", "--train.log_every=1",
              "--train.val_every=0", "--train.save_every=0", "--data.tokenizer=char"]
    one = [sys.executable, "-m", "sunfish", *common, "--train.grad_accum=2"]
    two = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "sunfish", *common]
    return {
        "1 process": one + ["--out", str(work / f"{preset}-1")],
        "1 process, 1 thread": one + ["--train.threads=1", "--out", str(work / f"{preset}-1t")],
        "2 x DDP": two + ["--train.parallel=ddp", "--out", str(work / f"{preset}-ddp")],
        "2 x FSDP": two + ["--train.parallel=fsdp", "--out", str(work / f"{preset}-fsdp")],
    }


def cpu_table(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="sunfish-scale-"))
    corpus = work / "corpus.txt"
    write_documents(corpus, generate_stories("both", 600, 0))
    peak = (peak_matmul_gflops() + peak_matmul_gflops()) / 2 * 1e9
    print(f"peak fp32 matmul: {peak / 1e9:.1f} GFLOP/s ({torch.get_num_threads()} threads, {os.cpu_count()} CPUs); "
          f"global batch 2 x {MICRO_BATCH} sequences; median of {args.repeats} runs x {args.steps} steps\n")
    rows = []
    for preset in args.presets.split(","):
        seq = min(load_preset(preset).model.context, 256)
        cases = cpu_cases(preset, corpus, work, args.steps)
        results: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.repeats):  # interleaved, so load changes hit every case alike
            for name, cmd in cases.items():
                shutil.rmtree(cmd[cmd.index("--out") + 1], ignore_errors=True)
                env = {**os.environ, "OMP_NUM_THREADS": "1"} if "torch.distributed.run" in cmd else dict(os.environ)
                results[name].append(median_tps(run_train(cmd, env)))
        fpt = model_flops(trained_model(Path(cases["1 process"][-1])), seq)
        base = statistics.median(results["1 process"])
        for name, figures in results.items():
            tps = statistics.median(figures)
            rows.append((preset, name, f"{tps:,.0f}", f"{tps * fpt / peak:.1%}", f"{tps / base:.2f}x"))
    print_table(("preset", "case", "tokens/s", "MFU", "vs 1 process"), rows)
    shutil.rmtree(work, ignore_errors=True)


def gpu_table(args: argparse.Namespace) -> None:
    if not torch.cuda.is_available():
        raise SystemExit("--gpu needs a CUDA device")
    work = Path(tempfile.mkdtemp(prefix="sunfish-scale-gpu-"))
    corpus = work / "corpus.txt"
    write_documents(corpus, generate_stories("both", 4000, 0))
    rows = []
    for preset in args.presets.split(","):
        run = load_preset(preset)
        model = preset_model(preset)
        batch, seq = args.batch or run.train.batch_size, model.context
        for compile_, ckpt in ((False, 0), (True, 0), (False, 1), (True, 1)):
            out = work / f"{preset}-{int(compile_)}-{ckpt}"
            cmd = [sys.executable, "-m", "sunfish", "train", "--preset", preset, "--data", str(corpus), "--out", str(out),
                   "--steps", str(args.steps), "--no-progress", f"--train.batch_size={batch}", "--train.log_every=1",
                   "--train.val_every=0", "--train.dtype=bf16", f"--train.compile={str(compile_).lower()}",
                   f"--train.act_ckpt={ckpt}", "--data.tokenizer=bpe", f"--data.bpe_vocab={model.vocab_size}"]
            lines = run_train(cmd, dict(os.environ))
            tps = median_tps(lines[len(lines) // 3:])  # after compilation and warm-up
            mfu = statistics.median(l["mfu"] for l in lines[len(lines) // 3:] if "mfu" in l)
            measured = max(l["memory_gib"] for l in lines)
            predicted = estimate(EstimateInput(model=trained_model(out), batch=batch, seq_len=seq, act_ckpt=ckpt,
                                               parallel=ParallelKind.NONE)).total / 2**30
            rows.append((preset, "yes" if compile_ else "no", "yes" if ckpt else "no", f"{tps:,.0f}", f"{mfu:.1%}",
                         f"{measured:.2f}", f"{predicted:.2f}", f"{predicted / measured - 1:+.1%}"))
    print(f"{torch.cuda.get_device_name()}; bf16; {args.steps} steps per case\n")
    print_table(("preset", "compile", "act. ckpt", "tokens/s", "MFU", "peak GiB", "estimate GiB", "error"), rows)
    shutil.rmtree(work, ignore_errors=True)


def memory_table(args: argparse.Namespace) -> None:
    """The estimator against the measured peak of one fp32 CPU training step (PyTorch's MemTracker)."""
    from sunfish.training.estimate import measure_step_peak

    rows = []
    for preset in args.presets.split(","):
        model = preset_model(preset)
        batch, seq = (8, 128) if model.d_model <= 128 else (4, 256)
        seq = min(seq, model.context)
        for ckpt in (0, 1):
            predicted = estimate(EstimateInput(model=model, batch=batch, seq_len=seq, dtype="fp32", act_ckpt=ckpt)).total
            measured = measure_step_peak(model, batch, seq, ckpt)
            rows.append((preset, f"{batch} x {seq}", "yes" if ckpt else "no", f"{measured / 2**20:,.1f}",
                         f"{predicted / 2**20:,.1f}", f"{predicted / measured - 1:+.1%}"))
    print("one fp32 training step on the CPU (AdamW state present), peak tensor memory\n")
    print_table(("preset", "batch", "act. ckpt", "measured MiB", "estimate MiB", "error"), rows)


def print_table(header: tuple, rows: list[tuple]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(str(c).rjust(w) if i >= 2 else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths))) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: nano, 8 steps, one repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--presets", default="")
    parser.add_argument("--gpu", action="store_true", help="the GPU table (small, dllm-ru-300m by default)")
    parser.add_argument("--memory", action="store_true", help="the estimator against measured CPU peaks (nano, quickstart, tiny, micro)")
    parser.add_argument("--batch", type=int, default=0, help="--gpu: sequences per batch (default: the preset's)")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.steps = 1, 8
        args.presets = args.presets or ("small" if args.gpu else "nano")
    if args.memory:
        args.presets = args.presets or "nano,quickstart,tiny,micro"
        return memory_table(args)
    args.presets = args.presets or ("small,dllm-ru-300m" if args.gpu else "nano,tiny")
    (gpu_table if args.gpu else cpu_table)(args)


if __name__ == "__main__":
    main()
