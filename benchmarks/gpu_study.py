"""GPU study: training throughput of dllm-ru-300m, three objectives at equal FLOPs, and sampling speed.

    PYTHONPATH=src python benchmarks/gpu_study.py [--out runs/gpu_study/results.json] [--corpora DIR]
                                                  [--workdir runs/gpu_study] [--dry-run] [--builtin-corpus]

Sized to finish in about 4 minutes on one H200 (docs/results_gpu.md); `--dry-run` shrinks every part so the
whole script runs on a CPU in seconds (tests/test_gpu_study.py). Device and precision are chosen once, by
`study_runtime`: CUDA with bf16 autocast when there is a GPU, else the CPU in fp32. Three parts:

1. Throughput: the `dllm-ru-300m` preset (306M parameters, micro-batch 8 x 2048, 8 micro-batches per
   optimiser step) trains with Sunfish's own `train_step` (masked-diffusion loss, backward, clipping, fused
   AdamW), its blocks torch.compile'd (`apply_compile`) and attention held to the flash SDPA kernel. Token ids
   are random (the speed of a step does not depend on them; the preset's 53K BPE needs no training here).
   After warm-up steps (the first compiles), each timed optimiser step is synchronised; figures are the
   median step. Model FLOPs per token = 6 N + 12 n_layers d L (`training.observe.flops_per_token`, PaLM
   appendix B), which credits the output head on every position; the masked loss applies it to the masked
   positions only (half of them on average), so a second MFU column counts the head on that half.
2. Objectives at equal FLOPs: an autoregressive model, masked diffusion and block diffusion (BD3-LM, blocks
   of 16), each ~100M parameters (12 layers x 768, 8K byte-level BPE, context 512), trained by
   `training.loop.train` on English + Russian TinyStories from --corpora, with one tokenizer. Training FLOPs
   per step = B T (6 N + 12 n_layers d T), T = L tokens through the network (2L for block diffusion, which
   runs the noised and the clean copy together), so block diffusion gets proportionally fewer steps. Then
   held-out bits per byte on the last stories of each language (`eval.likelihood`: exact for AR, the Monte
   Carlo NELBO bound with its standard error for diffusion). Eager (not compiled): compiling three models
   would cost more time than it saves in runs this short.
3. Sampling: `sample.bench.run_bench` on the three trained models (bf16 weights on CUDA) at batch 1 and 32,
   greedy, whole canvas: tokens/s (median of repeats), forward passes per token, speed-up over the
   one-token-per-step masked sampler, agreement and generative perplexity under the AR model.

The tables are printed as Markdown and written after each part to --out (JSON) and beside it (.md), so a
run cut short keeps what it finished. Models are trained into --workdir/{ar,masked,block}, replaced each run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from sunfish.config import EvalConfig, RunConfig, apply_tree, load_preset
from sunfish.data.sources import DataError, read_documents
from sunfish.data.synth import generate_stories
from sunfish.eval.likelihood import evaluate_likelihood, held_out
from sunfish.eval.report import markdown_table
from sunfish.loading import load_model
from sunfish.model.transformer import build_model, count_parameters
from sunfish.registry import SPECS
from sunfish.runtime import Runtime, inference_dtype, setup_runtime
from sunfish.sample.bench import HEADER, BenchError, BenchRow, format_row, run_bench
from sunfish.tokenizer import SPECIAL_TOKENS
from sunfish.training.corpus import Corpus, build_corpus
from sunfish.training.estimate import MASKED_FRACTION
from sunfish.training.loop import train, train_step
from sunfish.training.observe import flops_per_token, peak_flops, peak_memory_gib
from sunfish.training.optim import build_optimizer
from sunfish.training.parallel import apply_compile

CORPORA = Path(__file__).resolve().parents[2] / "shared" / "corpora"
CORPUS_FILES = {"en": "en_tinystories/tinystories_train_head.jsonl", "ru": "ru_tinystories/tinystories_ru.jsonl.gz"}
KINDS = ("ar", "masked", "block")  # registry names (sunfish/registry.py), the first is the FLOP reference
NETWORK_TOKENS = {"ar": 1, "masked": 1, "block": 2}  # tokens through the network per training token (BD3-LM: x_t, x_0)


class StudyError(ValueError):
    """An input a person can fix (a missing corpus, a kernel this GPU lacks); the message is one sentence."""


@dataclass(frozen=True)
class Sizes:
    """Everything the full study and its dry run differ in."""

    shrink: dict  # overrides of the dllm-ru-300m preset's model and train sections (empty: the preset itself)
    compile: bool  # torch.compile the preset's blocks (part 1)
    warmup_steps: int  # optimiser steps before timing (part 1; the first compiles)
    timed_steps: int  # timed optimiser steps, the median is reported (part 1)
    model: dict  # the ~100M backbone of part 2 (model section)
    bpe_vocab: int  # tokens of the shared BPE (part 2)
    batch: int  # sequences per training step (part 2)
    ar_steps: int  # optimiser steps of the AR model; the others match its FLOPs
    docs: int  # stories read per language (0 = all)
    held_docs: int  # the last stories of each language, held out
    held_tokens: int  # held-out tokens scored per language
    max_rounds: int  # Monte Carlo rounds of the NELBO at most
    log_every: int  # trainer log interval: tokens/s is the median of its lines after the first
    sample_length: int  # tokens generated per row (part 3)
    batches: tuple[int, ...]  # sampling batch sizes (part 3)
    repeats: int  # timed decodes per sampling row, median shown (part 3)


FULL = Sizes(shrink={}, compile=True, warmup_steps=2, timed_steps=5,
             model={"d_model": 768, "n_layers": 12, "n_heads": 12, "context": 512}, bpe_vocab=8192, batch=64,
             ar_steps=256, docs=0, held_docs=128, held_tokens=32768, max_rounds=16, log_every=16,
             sample_length=128, batches=(1, 32), repeats=3)
DRY = Sizes(shrink={"model": {"d_model": 64, "n_layers": 2, "n_heads": 4, "d_ff": 128, "context": 32,
                              "vocab_size": 512},
                    "train": {"batch_size": 2, "grad_accum": 2}},
            compile=False, warmup_steps=1, timed_steps=3,
            model={"d_model": 32, "n_layers": 1, "n_heads": 2, "context": 96}, bpe_vocab=320, batch=4,
            ar_steps=6, docs=80, held_docs=6, held_tokens=512, max_rounds=4, log_every=2,
            sample_length=16, batches=(1, 32), repeats=1)


def study_runtime(dry_run: bool, threads: int) -> Runtime:
    """The one place device and precision are chosen: CUDA with bf16 autocast when available, else CPU fp32;
    the dry run stays on the CPU."""
    return setup_runtime("cpu" if dry_run else "auto", "auto", threads)


def dtype_name(rt: Runtime) -> str:
    return "bf16" if rt.autocast_dtype is torch.bfloat16 else "fp32"


def synchronize(rt: Runtime) -> None:
    if rt.device.type == "cuda":
        torch.cuda.synchronize(rt.device)


# ---- part 1: throughput of the dllm-ru-300m preset ---------------------------------------------------

def check_flash(rt: Runtime, head_dim: int) -> None:
    """Refuse early, in one sentence, when the flash SDPA kernel cannot run this attention here."""
    q = torch.randn(1, 1, 16, head_dim, device=rt.device, dtype=rt.autocast_dtype or torch.float32)  # (B, H, L, d)
    try:
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            F.scaled_dot_product_attention(q, q, q)
    except RuntimeError:
        raise StudyError(f"the flash SDPA kernel does not run on {rt.device} for head size {head_dim} in "
                         f"{dtype_name(rt)}; run on a GPU that has it (Ampere or newer)") from None


def attention_ops(step: Callable[[], None]) -> str:
    """The SDPA kernels (aten ops) that one call of `step` ran, read from the profiler."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        step()
    names = {e.key.removeprefix("aten::") for e in prof.key_averages() if e.key.startswith("aten::_scaled_dot_product")}
    return ", ".join(sorted(n for n in names if not n.endswith("_backward"))) or "none seen"


def time_calls(step: Callable[[], None], rt: Runtime, warmup: int, timed: int) -> list[float]:
    """Seconds of each of `timed` synchronised calls of `step`, after `warmup` untimed ones."""
    for _ in range(warmup):
        step()
    synchronize(rt)
    if rt.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(rt.device)
    seconds = []
    for _ in range(timed):
        began = time.perf_counter()
        step()
        synchronize(rt)
        seconds.append(time.perf_counter() - began)
    return seconds


def throughput(rt: Runtime, sizes: Sizes, peak: float | None, seed: int) -> dict:
    """Part 1: median optimiser-step time of dllm-ru-300m, as tokens/s, model TFLOP/s, MFU and peak memory."""
    cfg = apply_tree(load_preset("dllm-ru-300m"), sizes.shrink)
    m, t = cfg.model, cfg.train
    check_flash(rt, m.d_model // m.n_heads)
    torch.manual_seed(seed)
    model = build_model(m, rt.device)
    params = count_parameters(model)
    compiled = sizes.compile and apply_compile(model)
    optimizer = build_optimizer(model, cfg.optim, fused=rt.device.type == "cuda")
    gen = rt.generator(seed)
    mask_id = SPECIAL_TOKENS.index("[MASK]")  # the id every Sunfish tokenizer gives [MASK]
    low = len(SPECIAL_TOKENS)  # random ordinary token ids
    batches = [torch.randint(low, m.vocab_size, (t.batch_size, m.context), generator=gen, device=rt.device)
               for _ in range(t.grad_accum)]  # A x (B, L)

    def step() -> None:
        train_step(model, optimizer, batches, cfg, mask_id, gen, rt)

    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        seconds = time_calls(step, rt, sizes.warmup_steps, sizes.timed_steps)
        memory = peak_memory_gib(rt.device)
        ops = attention_ops(step)
    tokens = t.batch_size * t.grad_accum * m.context
    step_s = statistics.median(seconds)
    model_flops = flops_per_token(params, m.n_layers, m.d_model, m.context) * tokens / step_s
    head_unused = 6 * m.vocab_size * m.d_model * (1 - MASKED_FRACTION) * tokens / step_s  # the unmasked half's head
    return {"preset": "dllm-ru-300m" + (" (shrunk: dry run)" if sizes.shrink else ""), "parameters": params,
            "batch": t.batch_size, "seq_len": m.context, "grad_accum": t.grad_accum, "compiled": bool(compiled),
            "attention": ops, "step_s": step_s, "step_s_all": seconds, "tokens_per_s": tokens / step_s,
            "model_tflops": model_flops / 1e12, "mfu": model_flops / peak if peak else None,
            "mfu_masked_head": (model_flops - head_unused) / peak if peak else None, "peak_memory_gib": memory,
            "memory_kind": "max allocated" if rt.device.type == "cuda" else "process peak RSS"}


def throughput_table(r: dict) -> str:
    pct = lambda v: "-" if v is None else f"{v:.1%}"
    header = ["preset", "parameters", "batch x length x accum", "compiled", "attention kernel",
              "step s (median)", "tokens/s", "model TFLOP/s", "MFU", "MFU, head on masked half", "peak memory GiB"]
    row = [r["preset"], f"{r['parameters']:,}", f"{r['batch']} x {r['seq_len']} x {r['grad_accum']}",
           "yes" if r["compiled"] else "no", r["attention"], f"{r['step_s']:.3f}", f"{r['tokens_per_s']:,.0f}",
           f"{r['model_tflops']:.1f}", pct(r["mfu"]), pct(r["mfu_masked_head"]),
           f"{r['peak_memory_gib']:.1f} ({r['memory_kind']})"]
    return markdown_table(header, [row])


# ---- part 2: AR, masked and block diffusion at equal FLOPs ------------------------------------------

def read_stories(corpora: Path | None, sizes: Sizes) -> dict[str, list[str]]:
    """Stories per language: TinyStories (en) and TinyStories-ru from `corpora`, or Sunfish's built-in
    stories when `corpora` is None."""
    if corpora is None:
        n = sizes.docs or 2000
        return {lang: generate_stories(lang, n, seed=1) for lang in CORPUS_FILES}
    out = {}
    for lang, relative in CORPUS_FILES.items():
        path = corpora / relative
        if not path.is_file():
            raise StudyError(f"{path} is absent; pass --corpora with a copy of ../shared/corpora, or --builtin-corpus")
        docs = read_documents([path])
        out[lang] = docs[: sizes.docs] if sizes.docs else docs
    return out


def compare_config(sizes: Sizes, rt: Runtime, kind: str, steps: int, seed: int, threads: int) -> RunConfig:
    """The ~100M backbone with the process `kind` (its registry entry's flags), on the study's runtime."""
    base = apply_tree(RunConfig(), {
        "model": sizes.model,
        "data": {"tokenizer": "bpe", "bpe_vocab": sizes.bpe_vocab, "val_fraction": 0.01},
        "optim": {"lr": 1e-3, "warmup_steps": max(1, steps // 10)},
        "train": {"steps": steps, "batch_size": sizes.batch, "val_every": 0, "log_every": sizes.log_every,
                  "seed": seed, "device": str(rt.device), "dtype": dtype_name(rt), "threads": threads},
    })
    return apply_tree(base, SPECS[kind].train_flags)


def step_flops(cfg: RunConfig, params: int, kind: str) -> float:
    """Training FLOPs of one optimiser step: B T (6 N + 12 n_layers d T), T the tokens through the network."""
    T = NETWORK_TOKENS[kind] * cfg.model.context
    return cfg.train.batch_size * T * flops_per_token(params, cfg.model.n_layers, cfg.model.d_model, T)


def logged_tokens_per_s(run: Path) -> float:
    """Median tokens/s of the trainer's metric lines, leaving out the first (it holds the warm-up)."""
    lines = [json.loads(l) for l in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines() if l]
    rates = [l["tokens_per_s"] for l in lines if "tokens_per_s" in l]
    return statistics.median(rates[1:] or rates)


def show_notes(line: str) -> None:
    """The trainer's warnings and notes (a skipped step, an uncompiled model), not its other lines."""
    if line.startswith(("warning", "note")):
        print(line, flush=True)


def train_kind(kind: str, cfg: RunConfig, corpus: Corpus, run: Path) -> dict:
    """Train one model of the comparison into `run` (replacing what is there); its training figures."""
    shutil.rmtree(run, ignore_errors=True)
    result = train(cfg, run_dir=run, progress=False, log=show_notes, corpus=corpus)
    tokens = cfg.train.steps * cfg.train.batch_size * cfg.model.context
    return {"process": SPECS[kind].label, "parameters": result.parameters, "steps": cfg.train.steps,
            "train_tokens": tokens, "epochs": tokens / len(corpus.train), "train_s": result.seconds,
            "tokens_per_s": logged_tokens_per_s(run), "final_loss": result.final_loss}


def held_out_bpb(run: Path, held: dict[str, list[str]], rt: Runtime, sizes: Sizes, seed: int) -> dict:
    """Held-out bits per byte per language (fp32 weights under the study's autocast)."""
    loaded = load_model(run, rt.device)
    ecfg = EvalConfig(seed=seed, max_tokens=sizes.held_tokens, batch_size=32, rel_se=0.01, min_rounds=4,
                      max_rounds=sizes.max_rounds)
    out = {}
    for lang, docs in held.items():
        data = held_out(docs, loaded.tokenizer, loaded.cfg.model.context, sizes.held_tokens)
        lik = evaluate_likelihood(loaded.model, loaded.cfg.process, loaded.tokenizer.mask_id, data, ecfg,
                                  autocast=rt.autocast)
        out[lang] = lik.as_json()
    return out


def compare(rt: Runtime, sizes: Sizes, stories: dict[str, list[str]], workdir: Path, peak: float | None,
            seed: int, threads: int, log: Callable[[str], None]) -> list[dict]:
    """Part 2: train the three processes at the AR model's training FLOPs and score held-out bits per byte."""
    held = {lang: docs[-sizes.held_docs:] for lang, docs in stories.items()}
    train_docs = [d for docs in stories.values() for d in docs[: -sizes.held_docs]]
    reference = compare_config(sizes, rt, KINDS[0], sizes.ar_steps, seed, threads)
    corpus = build_corpus(reference, train_docs, None)  # one tokenizer for all three
    rows: list[dict] = []
    budget = 0.0  # training FLOPs of every model: the AR model's (KINDS[0]) after `sizes.ar_steps` steps
    for kind in KINDS:
        cfg = compare_config(sizes, rt, kind, 1, seed, threads)
        shape = dataclasses.replace(cfg.model, vocab_size=corpus.tokenizer.vocab_size)
        per_step = step_flops(cfg, count_parameters(build_model(shape, "meta")), kind)
        budget = budget or per_step * sizes.ar_steps
        cfg = compare_config(sizes, rt, kind, max(1, round(budget / per_step)), seed, threads)
        log(f"training {SPECS[kind].label}: {cfg.train.steps} steps, {per_step * cfg.train.steps / 1e15:.3f} PFLOP")
        row = train_kind(kind, cfg, corpus, workdir / kind)
        row["train_flops"] = per_step * cfg.train.steps
        achieved = row["tokens_per_s"] * per_step / (cfg.train.batch_size * cfg.model.context)
        row["mfu"] = achieved / peak if peak else None
        row["bits_per_byte"] = held_out_bpb(workdir / kind, held, rt, sizes, seed)
        row["run"] = str(workdir / kind)
        rows.append(row)
    return rows


def compare_table(rows: list[dict]) -> str:
    langs = list(rows[0]["bits_per_byte"])
    header = ["process", "parameters", "steps", "train tokens", "epochs", "train PFLOP", "train wall s", "tokens/s",
              "MFU"]
    header += [f"{lang} bits/byte" for lang in langs]
    body = []
    for r in rows:
        cells = [r["process"], f"{r['parameters']:,}", str(r["steps"]), f"{r['train_tokens']:,}", f"{r['epochs']:.2f}",
                 f"{r['train_flops'] / 1e15:.3f}", f"{r['train_s']:.1f}", f"{r['tokens_per_s']:,.0f}",
                 "-" if r["mfu"] is None else f"{r['mfu']:.1%}"]
        for lang in langs:
            b = r["bits_per_byte"][lang]
            cells.append(f"{b['bits_per_byte']:.3f}" + ("" if b["exact"] else f" ± {b['bits_per_byte_se']:.3f}"))
        body.append(cells)
    return markdown_table(header, body)


# ---- part 3: sampling speed of the trained models ----------------------------------------------------

def openings(stories: dict[str, list[str]], per_lang: int = 4, words: int = 6) -> list[str]:
    """Prompts: the first `words` words of the last `per_lang` stories of each language (held out)."""
    return [" ".join(doc.split()[:words]) for docs in stories.values() for doc in docs[-per_lang:]]


def sampling(rt: Runtime, sizes: Sizes, runs: dict[str, str], prompts: list[str],
             log: Callable[[str], None]) -> list[dict]:
    """Part 3: `run_bench` on the trained models, weights in the inference dtype of the study's device."""
    dtype = inference_dtype(rt.device)
    names = {"masked": "diffusion", "block": "block", "ar": "ar"}  # run_bench's names for the three models
    models = {names[kind]: load_model(path, rt.device, dtype=dtype) for kind, path in runs.items()}
    rows = run_bench(models, prompts, [sizes.sample_length], list(sizes.batches), sizes.repeats, log=log)
    return [dataclasses.asdict(r) for r in rows]


def sampling_table(rows: list[dict]) -> str:
    return "\n".join([HEADER] + [format_row(BenchRow(**r)) for r in rows])


# ---- the report ---------------------------------------------------------------------------------------

def markdown(results: dict) -> str:
    parts = [f"# GPU study\n\n{results['machine']}\n"]
    if "throughput" in results:
        parts.append("## Training throughput\n\n" + throughput_table(results["throughput"]) + "\n")
    if "objectives" in results:
        parts.append("## Objectives at equal training FLOPs\n\n" + compare_table(results["objectives"]) + "\n")
    if "sampling" in results:
        parts.append("## Sampling speed\n\n" + sampling_table(results["sampling"]) + "\n")
    return "\n".join(parts)


def write_results(out: Path, results: dict) -> None:
    """The figures as JSON at `out` and the tables as Markdown beside it (same name, .md)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    out.with_suffix(".md").write_text(markdown(results), encoding="utf-8")


def machine_line(rt: Runtime, peak: float | None) -> str:
    if rt.device.type == "cuda":
        name = torch.cuda.get_device_name(rt.device)
    else:
        name = platform.processor() or platform.machine()
    peak_text = f"peak {peak / 1e12:g} TFLOP/s for MFU" if peak else "no peak known, so no MFU"
    return (f"Device {rt.device} ({name}), {dtype_name(rt)}, torch {torch.__version__}, "
            f"{torch.get_num_threads()} CPU threads; {peak_text}.")


def run_study(args: argparse.Namespace) -> dict:
    sizes = DRY if args.dry_run else FULL
    rt = study_runtime(args.dry_run, args.threads)
    peak = peak_flops(rt.device, args.peak_tflops)
    stories = read_stories(None if args.builtin_corpus else args.corpora, sizes)
    log = lambda line: print(line, flush=True)
    results = {"machine": machine_line(rt, peak), "dry_run": args.dry_run}
    log(results["machine"])
    began = time.perf_counter()
    results["throughput"] = throughput(rt, sizes, peak, args.seed)
    write_results(args.out, results)
    log("\n" + throughput_table(results["throughput"]) + f"\n\n({time.perf_counter() - began:.0f} s)\n")
    began = time.perf_counter()
    results["objectives"] = compare(rt, sizes, stories, args.workdir, peak, args.seed, args.threads, log)
    write_results(args.out, results)
    log("\n" + compare_table(results["objectives"]) + f"\n\n({time.perf_counter() - began:.0f} s)\n")
    began = time.perf_counter()
    runs = {kind: r["run"] for kind, r in zip(KINDS, results["objectives"])}
    results["sampling"] = sampling(rt, sizes, runs, openings(stories), lambda line: None)
    write_results(args.out, results)
    log("\n" + sampling_table(results["sampling"]) + f"\n\n({time.perf_counter() - began:.0f} s)")
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/gpu_study/results.json"),
                   help="JSON results; the Markdown tables go beside it with the suffix .md")
    p.add_argument("--workdir", type=Path, default=Path("runs/gpu_study"), help="where part 2's models are trained")
    p.add_argument("--corpora", type=Path, default=CORPORA,
                   help="a copy of ../shared/corpora (default: the one beside the checkout)")
    p.add_argument("--builtin-corpus", action="store_true", help="train on Sunfish's built-in stories instead")
    p.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU: a smoke run of seconds")
    p.add_argument("--peak-tflops", type=float, default=0.0,
                   help="peak TFLOP/s for MFU; 0 = the GPU's data-sheet figure (none on a CPU)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run_study(args)
    except (StudyError, DataError, BenchError) as err:
        print(f"gpu_study: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
