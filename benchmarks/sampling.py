"""Sampling speed and quality: the fast samplers against the plain one-token-per-step baseline.

    python benchmarks/sampling.py [--quick] [--lengths 64,256,1024] [--batch 1,8] [--repeats 3]
                                  [--diffusion CKPT] [--block CKPT] [--ar CKPT] [--reference CKPT] [--distilled CKPT]
                                  [--no-block] [--commit-model FILE] [--refresh-bound B] [--draft-len K]
                                  [--workdir runs/bench-sampling] [--threads N]
                                  [--corpus tinystories|builtin] [--train-steps N|kind=N,...] [--train-batch N] [--context N]

For each generation length and batch size, in one run: the plain LLaDA-style sampler (one token per step
in confidence order, semi-autoregressive blocks of 32, no cache: the baseline), + threshold decoding,
+ the prefix cache, + the dual cache, block diffusion (BD3-LM) with its exact cache, and the causal model
of the same size decoding with a key/value cache. Figures: tokens/s (median of --repeats; a batch counts
all its rows), forward passes per generated token, speed-up over the baseline, agreement with the
reference output (the baseline's for the diffusion rows, the block model's own one-token-per-step output
for the threshold block row), generative perplexity of the output under the causal model, and the
output's distinct-2 and unigram entropy (diversity figures to read beside the perplexity). The scorer is a
causal model larger than those compared (--reference; 6 x 192 when trained here), so no row is scored by
itself. With --distilled, the rows of a student distilled from the masked model (`sunfish distill`), each
against the student's own one-token-per-step output. Then the targets (sample/bench_targets.py): >= 8x
the baseline at length 256 and >= 20x at 1024 within 2% quality; >= 4 tokens per forward pass (TPF) within
5% of the row's own one-token-per-step perplexity; a diffusion row as fast as the causal model with its
KV cache at perplexity no worse than its. Decoding is greedy over the whole canvas (no EOS stop), so every row generates the same
number of tokens. Batches hold distinct prompts, right-aligned with hidden left padding (sample/batch.py).

Models: pass checkpoints, or let the script train the three models itself (same character vocabulary,
same backbone: 4 layers x 128, context 1,056 >= 1,024 + prompt; `--quick`: 1 layer x 32, context 320,
30 steps, lengths 16 and 32 unless --lengths asks for up to 256) into --workdir, reusing models already
trained there. `--corpus tinystories` (default) trains on the ~1 MB of TinyStories in ../shared/corpora,
prompts are the openings of its last 8 stories; `--corpus builtin` trains on --docs English stories of
Sunfish's own generator (seed 1), prompts are openings of stories drawn with another seed. The built-in
stories are templated, so a small model becomes confident on them within minutes: the stand-in, on a
CPU, for a large model on text it knows, which is the regime the fast samplers are built for. The same
table comes from `sunfish bench sample CKPT --ar A --block B [--held-out FILE]`.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from sunfish.config import apply_tree, load_preset
from sunfish.data.synth import generate_stories
from sunfish.model.transformer import count_parameters
from sunfish.runtime import setup_runtime
from sunfish.sample.bench import HEADER, check_reference, confidence_profile, format_confidence, run_bench
from sunfish.sample.bench_targets import target_report
from sunfish.checkpoint.files import list_checkpoints
from sunfish.loading import load_model
from sunfish.registry import SPECS
from sunfish.training.loop import train

SHARED = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "en_tinystories" / "tinystories_train_head.jsonl"
FULL = {"model": {"d_model": 128, "n_layers": 4, "n_heads": 4, "context": 1056},
        "train": {"steps": 600, "batch_size": 8, "log_every": 50, "val_every": 0},
        "optim": {"lr": 2e-3, "warmup_steps": 50}}
QUICK = {"model": {"d_model": 32, "n_layers": 1, "n_heads": 2, "context": 320},
         "train": {"steps": 30, "batch_size": 8, "log_every": 10, "val_every": 0},
         "optim": {"lr": 2e-3, "warmup_steps": 5}}
CAUSAL = {"process": {"kind": "ar"}, "model": {"attention": "causal", "time_cond": "none"}}
KINDS = {"diffusion": {}, "block": {"process": {"block_size": 16}}, "ar": CAUSAL,
         # the generative-perplexity scorer: causal, larger than the models compared (6 x 192; quick 2 x 48)
         "reference": {"process": CAUSAL["process"], "model": {**CAUSAL["model"], "d_model": 192, "n_layers": 6, "n_heads": 6}}}
QUICK_REFERENCE = {"d_model": 48, "n_layers": 2, "n_heads": 2}


def _csv(value: str) -> list[int]:
    return [int(v) for v in value.split(",") if v.strip()]


def _steps(value: str) -> dict[str, int]:
    """`N` (every model) or `kind=N,...` (e.g. block=900: block diffusion's two-copy attention costs more)."""
    if "=" not in value:
        return {kind: int(value) for kind in KINDS}
    pairs = dict(item.split("=", 1) for item in value.split(",") if item.strip())
    unknown = set(pairs) - set(KINDS)
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown model kind(s) {sorted(unknown)}; use {', '.join(KINDS)}")
    return {kind: int(n) for kind, n in pairs.items()}


def _opening(text: str, chars: int = 40) -> str:
    return text[:chars].rsplit(" ", 1)[0]


def held_out(corpus: str, n: int = 8) -> list[str]:
    """Held-out stories: the TinyStories file's last `n` (its validation end), or `n` built-in stories drawn
    with a seed the training stories do not use."""
    if corpus == "builtin":
        return generate_stories("en", n, seed=2)
    if not SHARED.exists():
        return ["the cat sat on the mat.", "a little girl had a red ball."]
    return [json.loads(line)["text"] for line in SHARED.read_text(encoding="utf-8").splitlines()[-n:]]


def corpus_prompts(corpus: str, n: int = 8, chars: int = 40) -> list[str]:
    """The openings (at most `chars` characters, cut at a word) of the held-out stories."""
    return [_opening(text, chars) for text in held_out(corpus, n)]


def corpus_file(corpus: str, workdir: Path, docs: int) -> Path:
    """The training text: the shared TinyStories file, or `docs` built-in stories written once into workdir."""
    if corpus != "builtin":
        if not SHARED.exists():
            sys.exit(f"{SHARED} is absent; pass --diffusion/--block/--ar checkpoints or --corpus builtin instead")
        return SHARED
    path = workdir / f"builtin-en-{docs}.jsonl"
    if not path.exists():
        workdir.mkdir(parents=True, exist_ok=True)
        part = path.with_suffix(".part")
        part.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in generate_stories("en", docs, seed=1)),
                        encoding="utf-8")
        part.replace(path)
    return path


def trained(kind: str, workdir: Path, data: Path, quick: bool, steps: int | None, threads: int,
            context: int | None = None, batch: int | None = None) -> Path:
    """A checkpoint of `kind` in workdir/kind, trained on `data` here unless one is already there."""
    out = workdir / kind
    if list_checkpoints(out):
        print(f"reusing {out}")
        return out
    tree = json.loads(json.dumps(QUICK if quick else FULL))
    for section, values in KINDS[kind].items():
        tree.setdefault(section, {}).update(values)
    if quick and kind == "reference":
        tree["model"].update(QUICK_REFERENCE)
    if steps:
        tree["train"]["steps"] = steps
    if context:
        tree["model"]["context"] = context
    if batch:
        tree["train"]["batch_size"] = batch
    tree["train"]["threads"] = threads
    cfg = apply_tree(load_preset("nano"), tree)
    print(f"training the {kind} model ({cfg.train.steps} steps, context {cfg.model.context}) into {out}", flush=True)
    result = train(cfg, run_dir=out, data=[str(data)], progress=False, log=lambda line: None)
    print(f"  {result.parameters:,} parameters, final loss {result.final_loss:.3f}, {result.seconds:.0f} s", flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny models, short lengths: a smoke run of a minute or two")
    p.add_argument("--lengths", type=_csv, help="generation lengths (default 64,256,1024; quick 16,32)")
    p.add_argument("--batch", type=_csv, default=[1, 8], help="batch sizes (default 1,8)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per row, median shown (default 3)")
    p.add_argument("--diffusion", help="masked diffusion checkpoint (default: train one)")
    p.add_argument("--block", help="block-diffusion checkpoint (default: train one)")
    p.add_argument("--ar", help="causal checkpoint of the same size (default: train one)")
    p.add_argument("--reference", help="larger causal checkpoint that scores generative perplexity (default: train one)")
    p.add_argument("--distilled", help="masked student distilled from --diffusion (sunfish distill): rows against its "
                   "own one-token-per-step output (default: none)")
    p.add_argument("--no-block", action="store_true", help="leave the block-diffusion model and its rows out")
    p.add_argument("--commit-model", default="", help="a learned commit rule's filter (sunfish tune-commit) for the "
                   "masked model: the learned rule's rows")
    p.add_argument("--refresh-bound", type=float, default=-1.0, help="a dual-cache row with adaptive refresh at this "
                   "bound (default: none)")
    p.add_argument("--draft-len", type=int, default=2, help="commits drafted per verification in the speculative rows (default 2)")
    p.add_argument("--corpus", choices=["tinystories", "builtin"], default="tinystories",
                   help="training text and prompts of the models trained here (default tinystories)")
    p.add_argument("--docs", type=int, default=40000, help="built-in stories to train on (--corpus builtin; default 40000)")
    p.add_argument("--workdir", type=Path, default=Path("runs/bench-sampling"), help="where trained models go")
    p.add_argument("--train-steps", type=_steps, default={}, help="training steps of the models trained here: N, "
                   "or per kind, e.g. diffusion=2400,block=900,ar=2400 (default 600)")
    p.add_argument("--train-batch", type=int, help="sequences per training step of the models trained here (default 8)")
    p.add_argument("--context", type=int, help="context of the models trained here (default 1056; quick 320); "
                   "a shorter one trains faster when the longest length is 256")
    p.add_argument("--block-length", type=int, default=32, help="block length of the diffusion rows (default 32)")
    p.add_argument("--threshold", type=float, default=0.9, help="threshold of the threshold rows (default 0.9)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0 = torch's default; on a shared "
                   "machine 1 avoids oversubscription, which slowed a 2-thread forward pass 50x here)")
    args = p.parse_args()
    lengths = args.lengths or ([16, 32] if args.quick else [64, 256, 1024])
    workdir = args.workdir / ("quick" if args.quick else "full")
    if args.corpus == "builtin":
        workdir = workdir.with_name(workdir.name + "-builtin")
    paths = {"diffusion": args.diffusion, "block": args.block, "ar": args.ar, "reference": args.reference}
    if args.no_block:
        del paths["block"]
    if not all(paths.values()):
        data = corpus_file(args.corpus, workdir, args.docs)
        paths = {k: v or trained(k, workdir, data, args.quick, args.train_steps.get(k), args.threads, args.context,
                                 args.train_batch)
                 for k, v in paths.items()}
    rt = setup_runtime(args.device, threads=args.threads)
    if args.distilled:
        paths["distilled"] = args.distilled
    models = {k: load_model(v, rt.device) for k, v in paths.items()}
    for name, expected in (("diffusion", "masked"), ("block", "block"), ("ar", "ar"), ("reference", "ar"),
                           ("distilled", "masked")):
        if name in models and models[name].spec.name != expected:
            sys.exit(f"--{name} {paths[name]} is a {models[name].spec.label} model, not {SPECS[expected].label}")
    for name in models:
        if name != "reference":
            check_reference(models["reference"], models[name])
    context = min(m.cfg.model.context for m in models.values())
    room = context - 1 - max(lengths)  # [BOS] + prompt + generation
    if room < 1:
        sys.exit(f"--lengths up to {max(lengths)} need models with a context of at least {max(lengths) + 2}, and these have "
                 f"{context}; lower --lengths or train with a larger --context")
    prompts = corpus_prompts(args.corpus, chars=min(40, room))  # characters: at least one token each
    sizes = ", ".join(f"{k} {count_parameters(m.model):,}" for k, m in models.items())
    print(f"\n{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"device {rt.device}; parameters: {sizes}")
    print(f"median of {args.repeats} runs; greedy, whole canvas; diffusion block length {args.block_length}, "
          f"threshold {args.threshold}; {len(prompts)} prompts\n")
    stories = held_out(args.corpus, 32)
    profile = confidence_profile(models["diffusion"], stories, args.threshold, args.block_length)
    if profile:
        print(f"The masked model on {len(stories)} held-out stories (how often threshold decoding may commit):\n")
        print(format_confidence(profile, args.threshold) + "\n", flush=True)
    print(HEADER, flush=True)
    began = time.perf_counter()
    rows = run_bench(models, prompts, lengths, args.batch, args.repeats, block_length=args.block_length,
                     threshold=args.threshold, log=lambda line: print(line, flush=True), draft_len=args.draft_len,
                     commit_model=args.commit_model, refresh_bound=args.refresh_bound)
    print("\n" + "\n".join(target_report(rows)))
    print(f"\n({time.perf_counter() - began:.0f} s of measuring)")


if __name__ == "__main__":
    main()
