"""Generative processes at equal compute: masked diffusion vs embedding diffusion vs simplex flow (and AR).

    python benchmarks/compare_processes.py [--quick] [--steps 500] [--out runs/processes] [--doc docs/results_processes.md]

Every process trains the same backbone (sunfish.training.loop.train) with the same tokenizer, optimiser,
batch and number of steps on English TinyStories from ../shared/corpora (the same tokens per step, so
about the same training FLOPs: the processes differ only in their input/output layers). Then per model:
- held-out likelihood: bits per byte from an upper bound (masked: MDLM NELBO; embedding diffusion: the
  continuous-time VDM NELBO with the rounding decoder; AR: exact NLL), by sunfish.eval.likelihood. Simplex
  flow has no known bound: its column shows the time-averaged denoising cross-entropy in nats per token,
  which is NOT a likelihood and is not comparable with the bits per byte of the others;
- generative perplexity of unprompted samples at 16/64/256 steps, scored by the AR model this script
  trains (its exact NLL on the sample's tokens), with distinct-1/2 of the same samples (a model that
  repeats itself can have a low generative perplexity);
- sampling speed: generated tokens per second at 64 steps (batch of `samples`, on this machine).
The masked sampler takes at most one step per token, so its "256 steps" row runs length-many steps.
Prints the table; writes results.json under --out and, with --doc, the Markdown report.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

import torch

from sunfish.config import EvalConfig, RunConfig, apply_tree, load_preset
from sunfish.eval.generative import SunfishReference, diversity, generative_perplexity, sample_texts
from sunfish.eval.likelihood import LN2, evaluate_likelihood, held_out
from sunfish.model.transformer import count_parameters
from sunfish.process.flow import denoising_ce_per_token
from sunfish.runtime import setup_runtime
from sunfish.loading import load_model
from sunfish.training.loop import train

EN = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "en_tinystories" / "tinystories_train_head.jsonl"

TIMED = {"model": {"time_cond": "sinusoidal"}}
PROCESSES = {  # name -> config overrides on the shared base
    "AR": {"process": {"kind": "ar"}, "model": {"attention": "causal", "time_cond": "none"}},
    "masked (MDLM NELBO)": {"process": {"kind": "masked"}},
    "embedding, softmax x0 (CDCD)": {"process": {"kind": "continuous", "param": "softmax", "noise_schedule": "cosine"}, **TIMED},
    "simplex flow, CE": {"process": {"kind": "flow", "flow_loss": "ce"}, **TIMED},
    "embedding, x0 + rounding (Diffusion-LM)": {"process": {"kind": "continuous", "param": "x0", "noise_schedule": "sqrt"}, **TIMED},
    "simplex flow, velocity MSE": {"process": {"kind": "flow", "flow_loss": "velocity"}, **TIMED},
    "simplex flow, CE + learned time warp": {"process": {"kind": "flow", "flow_loss": "ce", "time_warp": True,
                                                        "time_warp_after": -1}, **TIMED},  # -1: half the steps
}
FULL = dict(d_model=64, n_layers=2, n_heads=2, context=64, batch=16, vocab=512, docs=1000, held_docs=60,
            held_tokens=4096, samples=8, length=63, gen_steps=(16, 64, 256), rounds=8)
QUICK = dict(d_model=32, n_layers=1, n_heads=2, context=48, batch=4, vocab=300, docs=80, held_docs=6,
             held_tokens=512, samples=2, length=24, gen_steps=(4, 16), rounds=3)


def read_docs(limit: int) -> list[str]:
    with EN.open(encoding="utf-8") as f:
        return [json.loads(line)["text"] for _, line in zip(range(limit), f)]


def base_config(size: dict, steps: int, seed: int) -> RunConfig:
    return apply_tree(load_preset("quickstart"), {
        "model": {k: size[k] for k in ("d_model", "n_layers", "n_heads", "context")} | {"time_cond": "none"},
        "data": {"tokenizer": "bpe", "bpe_vocab": size["vocab"], "val_fraction": 0.02},
        "train": {"steps": steps, "batch_size": size["batch"], "val_every": 0, "log_every": 50, "seed": seed, "save_every": 0},
        "optim": {"warmup_steps": max(1, min(100, steps // 10))},
    })


def config_for(name: str, base: RunConfig, steps: int) -> RunConfig:
    overrides = json.loads(json.dumps(PROCESSES[name]))
    if overrides["process"].get("time_warp_after") == -1:
        overrides["process"]["time_warp_after"] = steps // 2
    return apply_tree(base, overrides)


def flow_denoising_ce(loaded, data, seed: int) -> float:
    """Denoising cross-entropy of simplex flow on the held-out windows, nats per token (not a bound)."""
    gen = torch.Generator(device=next(loaded.model.parameters()).device).manual_seed(seed)
    total, count = 0.0, 0
    for group in data.windows:
        for batch in group.split(16):
            x = batch.to(gen.device)
            total += float(denoising_ce_per_token(loaded.model, x, loaded.cfg.process, gen).sum()) * x.shape[1]
            count += x.numel()
    return total / count


def evaluate(run: Path, held: list[str], ref, size: dict, ecfg: EvalConfig) -> dict:
    loaded = load_model(run, setup_runtime("auto").device)
    data = held_out(held, loaded.tokenizer, size["context"], size["held_tokens"])
    out: dict = {"parameters": count_parameters(loaded.model)}
    if loaded.spec.likelihood is None:  # simplex flow: no bound is known
        nats = flow_denoising_ce(loaded, data, ecfg.seed)
        out["likelihood"] = {"method": "denoising CE (flow; not a bound)", "nats_per_token": nats}
        print(f"    denoising CE {nats:.3f} nats/token (not a likelihood bound)")
    else:
        lik = evaluate_likelihood(loaded.model, loaded.cfg.process, loaded.tokenizer.mask_id, data, ecfg)
        out["likelihood"] = {"method": lik.method, "exact": lik.exact, "nats_per_token": lik.nats_per_token,
                             "bits_per_byte": lik.bits_per_byte, "bits_per_byte_se": lik.bits_per_byte_se, "rounds": lik.rounds}
        print(f"    {lik.method}: {lik.bits_per_byte:.3f} ± {lik.bits_per_byte_se:.3f} bits/byte")
    out["generation"] = []
    for steps in [size["length"]] if loaded.spec.causal else size["gen_steps"]:
        if loaded.spec.infill and loaded.spec.parallel:  # unmasking: at most one step per token
            steps = min(steps, size["length"])
        texts, seconds, nfe = sample_texts(loaded, size["samples"], size["length"], steps, 1.0, ecfg.seed,
                                           batch_size=size["samples"])
        ppl = generative_perplexity(ref, texts)[0]
        div = diversity(texts)
        tps = size["samples"] * size["length"] / max(seconds, 1e-9)
        out["generation"].append({"steps": steps, "gen_perplexity": ppl, "tokens_per_s": tps, "nfe": nfe,
                                  "example": texts[0][:240], **div})
        print(f"    {steps} steps: gen. ppl {ppl:.1f}, distinct-1/2 {div['distinct_1']:.2f}/{div['distinct_2']:.2f}, "
              f"{tps:.0f} tokens/s")
    return out


def table(results: dict, gen_steps: tuple[int, ...]) -> str:
    head = ["process", "params", "train min", "held-out (what)"]
    head += [f"gen. ppl / d-1 / d-2 @{s}" for s in gen_steps] + ["tokens/s @64"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in results.items():
        lik = r["likelihood"]
        held = (f"{lik['nats_per_token']:.3f} nats/token (denoising CE, not a bound)" if "bits_per_byte" not in lik else
                f"{lik['bits_per_byte']:.3f} ± {lik['bits_per_byte_se']:.3f} bits/byte ({'exact' if lik['exact'] else 'bound'})")
        gens = r["generation"]
        cells = [name, f"{r['parameters']:,}", f"{r['train_seconds'] / 60:.1f}", held]
        for k, s in enumerate(gen_steps):
            g = gens[0] if name == "AR" else gens[k] if k < len(gens) else None
            shown = name != "AR" or k == len(gen_steps) - 1
            cells.append(f"{g['gen_perplexity']:.1f} / {g['distinct_1']:.2f} / {g['distinct_2']:.2f}"
                         + (f" ({g['steps']} steps)" if g['steps'] != s else "") if g and shown else "—")
        at64 = next((g for g in gens if g["steps"] == 64), gens[0])
        cells.append(f"{at64['tokens_per_s']:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny models and a few steps: a smoke run")
    p.add_argument("--steps", type=int, help="training steps of every model (default 300; quick 10)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0 = its default)")
    p.add_argument("--out", type=Path, default=Path("runs/processes"))
    p.add_argument("--doc", type=Path, help="write the Markdown report here (e.g. docs/results_processes.md)")
    p.add_argument("--only", help="comma-separated process names to (re)run; AR always runs first")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if not EN.exists():
        print(f"needs ../shared/corpora ({EN}); not found beside this checkout", file=sys.stderr)
        return 2
    size = QUICK if args.quick else FULL
    steps = args.steps or (10 if args.quick else 300)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = list(PROCESSES) if not args.only else ["AR"] + [n for n in PROCESSES if n in args.only.split(",") and n != "AR"]
    args.out.mkdir(parents=True, exist_ok=True)
    docs = read_docs(size["docs"] + size["held_docs"])
    corpus = args.out / "train.jsonl"
    corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs[: size["docs"]]), encoding="utf-8")
    held = docs[size["docs"]:]
    base = apply_tree(base_config(size, steps, args.seed), {"train": {"threads": args.threads}})
    ecfg = EvalConfig(seed=args.seed, seq_len=size["context"], max_tokens=size["held_tokens"], min_rounds=2,
                      max_rounds=size["rounds"], rel_se=0.01)
    results_path = args.out / "results.json"
    results: dict = json.loads(results_path.read_text(encoding="utf-8")) if results_path.exists() else {}
    ref = None
    for name in names:
        run = args.out / "".join(c if c.isalnum() else "_" for c in name)
        if name not in results or results[name]["steps"] != steps or args.only:
            print(f"== {name}: {steps} steps")
            shutil.rmtree(run, ignore_errors=True)
            began = time.perf_counter()
            train(config_for(name, base, steps), run_dir=run, data=[str(corpus)], progress=False, log=lambda _: None)
            seconds = time.perf_counter() - began
            if name == "AR":
                ref = SunfishReference(load_model(run, setup_runtime("auto").device))
            print(f"  trained in {seconds / 60:.1f} min; evaluating")
            results[name] = {"steps": steps, "train_seconds": seconds, **evaluate(run, held, ref, size, ecfg)}
            results_path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
            report(results, size, steps, args)
        elif name == "AR":
            ref = SunfishReference(load_model(run, setup_runtime("auto").device))
    print()
    print(report(results, size, steps, args))
    return 0


def report(results: dict, size: dict, steps: int, args: argparse.Namespace) -> str:
    """The table of the models finished so far; written to --doc (atomically) when given."""
    results = {n: results[n] for n in PROCESSES if n in results}
    md = table(results, size["gen_steps"])
    if args.doc:
        command = ("python benchmarks/compare_processes.py" + (" --quick" if args.quick else "")
                   + (f" --steps {args.steps}" if args.steps else "") + (f" --threads {args.threads}" if args.threads else ""))
        n_tok = size["batch"] * size["context"] * steps
        text = "\n".join([
            "# Generative processes at equal compute", "",
            f"Command: `{command} --doc {args.doc}`", "",
            f"Backbone: {size['n_layers']} layers x {size['d_model']}, {size['n_heads']} heads, context {size['context']}, "
            f"byte-level BPE {size['vocab']}; each model {steps} steps of {size['batch']} x {size['context']} tokens "
            f"({n_tok:,} training tokens), AdamW, same seed, on the first {size['docs']} English TinyStories; the next "
            f"{size['held_docs']} stories held out. Generation: {size['samples']} unprompted samples of {size['length']} "
            "tokens per step count, scored by the AR row's model; d-1/d-2 = distinct uni/bigrams.", "",
            md, ""])
        args.doc.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.doc.with_name(f".{args.doc.name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(args.doc)
    return md


if __name__ == "__main__":
    sys.exit(main())
