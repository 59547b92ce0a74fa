"""Generative processes at equal compute: masked diffusion vs embedding diffusion vs simplex flow (and AR).

    python benchmarks/compare_processes.py [--quick] [--steps 500] [--seeds 0,1,2] [--out runs/processes]
                                           [--doc docs/results_processes.md]

Every process trains the same backbone (sunfish.training.loop.train) with the same tokenizer, optimiser,
batch and number of steps on English TinyStories from ../shared/corpora (the same tokens per step, so
about the same training FLOPs: the processes differ only in their input/output layers). Then per model:
- held-out likelihood: bits per byte from an upper bound (masked: MDLM NELBO; embedding diffusion: the
  continuous-time VDM NELBO with the rounding decoder; AR: exact NLL), by sunfish.eval.likelihood. Simplex
  flow has no known bound: its column shows the time-averaged denoising cross-entropy in nats per token,
  which is NOT a likelihood and is not comparable with the bits per byte of the others;
- generative perplexity of unprompted samples at 16/64/256 steps, scored by the AR model of the same seed
  (its exact NLL on the sample's tokens), with distinct-1/2 of the same samples (a model that
  repeats itself can have a low generative perplexity);
- sampling speed: generated tokens per second at 64 steps (batch of `samples`, on this machine);
- how far the held-out bits per byte are under a unigram model's, and whether masked diffusion stayed on
  the unigram plateau (benchmarks/multiseed.py).
Every process runs once per seed (--seeds; runs and results.json under --out/seed<N>); the table gives each
figure's mean over seeds and (min-max).
The masked sampler takes at most one step per token, so its "256 steps" row runs length-many steps.
Prints the table; writes results.md under --out and, with --doc, the marked block of that Markdown file.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from multiseed import (CORPORA, DEFAULT_SEEDS, corpus_path, gather, parse_seeds, plateau_cells, read_jsonl,  # noqa: E402
                       seeds_line, spread, unigram_bits_per_byte, update_doc, write_jsonl)

from sunfish.config import EvalConfig, RunConfig, apply_tree, load_preset  # noqa: E402
from sunfish.eval.generative import SunfishReference, diversity, generative_perplexity, sample_texts  # noqa: E402
from sunfish.eval.likelihood import evaluate_likelihood, held_out, reconstruction_suite  # noqa: E402
from sunfish.eval.report import markdown_table  # noqa: E402
from sunfish.model.transformer import count_parameters  # noqa: E402
from sunfish.process.flow import denoising_ce_per_token  # noqa: E402
from sunfish.runtime import setup_runtime  # noqa: E402
from sunfish.adapt.latent import latent_train  # noqa: E402
from sunfish.checkpoint.files import read_config, resolve_checkpoint  # noqa: E402
from sunfish.loading import load_model  # noqa: E402
from sunfish.registry import spec_of  # noqa: E402
from sunfish.tokenizer import Tokenizer  # noqa: E402
from train_flops import step_flops  # noqa: E402
from sunfish.training.loop import train  # noqa: E402

TIMED = {"model": {"time_cond": "sinusoidal"}}
# LDLM and Cola: 64-token texts into 32 latents of width 32 (16 latents learned reconstruction far slower in a pilot:
# 0.35-0.47 token accuracy after 600 steps against 0.90), v-prediction, the diffusion-to-encoder warm-up over a third
# of the steps
LATENT = {"param": "v", "latents": 32, "latent_dim": 32, "diffusion_warmup": -1, "decoder_noise": 0.1}
PROCESSES = {  # name -> config overrides on the shared base
    "AR": {"process": {"kind": "ar"}, "model": {"attention": "causal", "time_cond": "none"}},
    "masked (MDLM NELBO)": {"process": {"kind": "masked"}},
    "embedding, softmax x0 (CDCD)": {"process": {"kind": "continuous", "param": "softmax", "noise_schedule": "cosine"}, **TIMED},
    "simplex flow, CE": {"process": {"kind": "flow", "flow_loss": "ce"}, **TIMED},
    "embedding, x0 + rounding (Diffusion-LM)": {"process": {"kind": "continuous", "param": "x0", "noise_schedule": "sqrt"}, **TIMED},
    "simplex flow, velocity MSE": {"process": {"kind": "flow", "flow_loss": "velocity"}, **TIMED},
    "simplex flow, CE + learned time warp": {"process": {"kind": "flow", "flow_loss": "ce", "time_warp": True,
                                                        "time_warp_after": -1}, **TIMED},  # -1: half the steps
    "block diffusion (blocks of 16)": {"process": {"kind": "masked", "block_size": 16}},
    # around the same seed's AR model, frozen (process.base is set per seed); -1: a third of the steps
    # LDLM at the decoder-input noise first tried (0.1) and at the largest (1.0), the better (docs/results_processes.md)
    "LDLM (noise 0.1, 32 latents of the frozen AR)": {"process": {"kind": "ldlm", **LATENT}, "model": {"time_cond": "adaln"}},
    "LDLM (noise 1.0, 32 latents of the frozen AR)": {"process": {"kind": "ldlm", **LATENT, "decoder_noise": 1.0},
                                                      "model": {"time_cond": "adaln"}},
    # Cola at the KL weight first tried (1e-3) and at the best of 1e-3, 1e-2, 0.1 and 1 (docs/results_processes.md)
    "Cola (KL 1e-3, 32 VAE latents of the frozen AR)": {"process": {"kind": "cola", **LATENT, "kl_weight": 1e-3},
                                                        "model": {"time_cond": "adaln"}},
    "Cola (KL 0.1, 32 VAE latents of the frozen AR)": {"process": {"kind": "cola", **LATENT, "kl_weight": 0.1},
                                                       "model": {"time_cond": "adaln"}},
    "VFM (noise adapter on the frozen AR)": {"process": {"kind": "vfm", "prompt_prob": 0.5, "adapter_layers": 2}},
}
# The unigram-plateau check is for absorbing-state (masked) diffusion; embedding diffusion's bound is loose near
# t = 0 (rounding), so a figure above the unigram model's says nothing about whether it uses its context.
PLATEAU_CHECKED = {"masked (MDLM NELBO)", "block diffusion (blocks of 16)"}
FROZEN_BASE = {"ldlm", "cola", "vfm"}  # process kinds trained around the frozen AR model (adapt/latent.py)
REFERENCE = "masked (MDLM NELBO)"  # every process trains as many FLOPs as this one does in --steps steps


FULL = dict(d_model=64, n_layers=2, n_heads=2, context=64, batch=16, vocab=512, docs=1000, held_docs=60,
            held_tokens=4096, samples=8, length=63, gen_steps=(16, 64, 256), rounds=8)
QUICK = dict(d_model=32, n_layers=1, n_heads=2, context=48, batch=4, vocab=300, docs=80, held_docs=6,
             held_tokens=512, samples=2, length=24, gen_steps=(4, 16), rounds=3)


def base_config(size: dict, steps: int, seed: int, threads: int = 0) -> RunConfig:
    return apply_tree(load_preset("quickstart"), {
        "model": {k: size[k] for k in ("d_model", "n_layers", "n_heads", "context")} | {"time_cond": "none", "layout": "same"},
        "process": {"causal_warmup": 0},  # the processes as they are, not the quickstart preset's recipe
        "data": {"tokenizer": "bpe", "bpe_vocab": size["vocab"], "val_fraction": 0.02},
        "train": {"steps": steps, "batch_size": size["batch"], "val_every": 0, "log_every": 50, "seed": seed, "save_every": 0,
                  "threads": threads},
        "optim": {"warmup_steps": max(1, min(100, steps // 10))},
    })


def config_for(name: str, base: RunConfig, steps: int, ar_run: Path | None = None) -> RunConfig:
    """The config of process `name` for `steps` steps; a latent process trains around the AR run `ar_run`."""
    overrides = json.loads(json.dumps(PROCESSES[name]))
    process = overrides["process"]
    if process.get("time_warp_after") == -1:
        process["time_warp_after"] = steps // 2
    if process.get("diffusion_warmup") == -1:
        process["diffusion_warmup"] = max(1, steps // 3)
    if process["kind"] in FROZEN_BASE:
        process["base"] = str(Path(ar_run).resolve())
        overrides["train"] = {"seq_len": base.model.context}
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


def vfm_data_ce(loaded, data, seed: int) -> float:
    """VFM's data term on the held-out windows, nats per token: the frozen flow map's cross-entropy of every
    token from the adapter's noise, no prompt (not a bound)."""
    from sunfish.process.vfm import vfm_loss

    gen = torch.Generator(device=next(loaded.model.parameters()).device).manual_seed(seed)
    cfg = dataclasses.replace(loaded.cfg.process, prompt_prob=0.0)
    nats, count = 0.0, 0
    with torch.no_grad():
        for group in data.windows:
            for batch in group.split(16):
                out = vfm_loss(loaded.model, batch.to(gen.device), cfg, gen)
                nats, count = nats + float(out.nll_sum), count + out.masked_tokens
    return nats / count


def held_out_figures(loaded, data, ecfg: EvalConfig) -> dict:
    """The held-out column: a bound or exact NLL where one exists, else what the process offers instead."""
    spec = loaded.spec
    if spec.reconstruction is not None:  # LDLM, Cola: no bound; read every window back from its own latents
        acc = reconstruction_suite(loaded.model, loaded.cfg.process, data, 16)["reconstruction_accuracy"]
        print(f"    reconstruction token accuracy {acc:.3f} (no likelihood bound exists)")
        return {"method": "reconstruction accuracy (no bound exists)", "reconstruction_accuracy": acc}
    if spec.likelihood is None:  # simplex flow, VFM: no bound is known
        vfm = spec.name == "vfm"
        nats = vfm_data_ce(loaded, data, ecfg.seed) if vfm else flow_denoising_ce(loaded, data, ecfg.seed)
        what = "data CE from the adapter's noise, not a bound" if vfm else "denoising CE, not a bound"
        print(f"    {what}: {nats:.3f} nats/token")
        return {"method": what, "nats_per_token": nats}
    lik = evaluate_likelihood(loaded.model, loaded.cfg.process, loaded.tokenizer.mask_id, data, ecfg)
    print(f"    {lik.method}: {lik.bits_per_byte:.3f} ± {lik.bits_per_byte_se:.3f} bits/byte")
    return {"method": lik.method, "exact": lik.exact, "nats_per_token": lik.nats_per_token,
            "bits_per_byte": lik.bits_per_byte, "bits_per_byte_se": lik.bits_per_byte_se, "rounds": lik.rounds}


def step_counts(loaded, size: dict) -> list[int]:
    """The sampling step counts of a model: its one left-to-right pass per token (AR), one pass (VFM), at most one
    step per token (unmasking), else the study's counts."""
    if loaded.spec.causal:
        return [size["length"]]
    if not loaded.spec.supports("steps"):
        return [1]
    if loaded.spec.infill and loaded.spec.parallel or loaded.spec.fixed_blocks:  # the table keeps a column per count
        return [min(s, size["length"]) for s in size["gen_steps"]]
    return list(size["gen_steps"])


def generation_figures(loaded, ref, size: dict, seed: int) -> list[dict]:
    """Unprompted samples at each step count: generative perplexity under `ref`, distinct n-grams, speed. Every
    sample fills its whole canvas (no cut at EOS), so each row is scored on the same number of generated tokens."""
    out = []
    for steps in step_counts(loaded, size):
        texts, seconds, nfe = sample_texts(loaded, size["samples"], size["length"], steps, 1.0, seed,
                                           batch_size=size["samples"], whole=True)
        ppl = generative_perplexity(ref, texts)[0]
        div = diversity(texts)
        tps = size["samples"] * size["length"] / max(seconds, 1e-9)
        scored = sum(len(ref.loaded.tokenizer.encode(t)) for t in texts) / len(texts)
        out.append({"steps": steps, "gen_perplexity": ppl, "tokens_per_s": tps, "nfe": nfe, "scored_tokens": scored,
                    "example": texts[0][:240], **div})
        print(f"    {steps} steps: gen. ppl {ppl:.1f}, distinct-1/2 {div['distinct_1']:.2f}/{div['distinct_2']:.2f}, "
              f"{tps:.0f} tokens/s, {scored:.1f} tokens scored per sample")
    return out


def evaluate(run: Path, held: list[str], train_docs: list[str], ref, size: dict, ecfg: EvalConfig) -> dict:
    """Held-out figures (with the unigram model's bits/byte on the same tokens), samples and their speed."""
    loaded = load_model(run, setup_runtime("auto").device)
    data = held_out(held, loaded.tokenizer, size["context"], size["held_tokens"])
    return {"parameters": count_parameters(loaded.model),
            "unigram_bits_per_byte": unigram_bits_per_byte(train_docs, data, loaded.tokenizer),
            "likelihood": held_out_figures(loaded, data, ecfg),
            "generation": generation_figures(loaded, ref, size, ecfg.seed)}


# ---- one seed -----------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Study:
    """What every seed of the study shares."""
    size: dict
    steps: int
    names: list[str]  # processes to (re)run, AR first
    rerun: bool  # --only: train the named processes again even when their results exist
    corpus: Path
    train_docs: list[str]
    held: list[str]
    out: Path
    threads: int
    resample: bool = False  # --resample: sample and score the finished runs again, train nothing


def run_name(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)


class Budget:
    """Equal training FLOPs: each process's steps so that steps x its counted FLOPs per step (train_flops.py) equal
    the REFERENCE process's in `steps` steps; measured on a real batch of the seed's AR run's tokenizer."""

    def __init__(self, study: Study, base: RunConfig, ar_run: Path):
        ckpt = resolve_checkpoint(ar_run)
        tok = Tokenizer.load(ckpt / "tokenizer.json")
        self.vocab, self.mask_id = read_config(ckpt).model.vocab_size, tok.mask_id
        size, ids = study.size, []
        for doc in study.train_docs:
            ids += tok.encode(doc)
            if len(ids) >= size["batch"] * size["context"]:
                break
        self.tokens = torch.tensor(ids[: size["batch"] * size["context"]]).view(size["batch"], size["context"])
        self.study, self.base, self.ar_run, self.known = study, base, ar_run, {}

    def flops(self, name: str) -> int:
        if name not in self.known:
            cfg = config_for(name, self.base, self.study.steps, self.ar_run)
            self.known[name] = step_flops(cfg, self.tokens, self.mask_id, self.vocab)
        return self.known[name]

    def steps(self, name: str) -> int:
        return self.study.steps if name == "AR" else max(1, round(self.study.steps * self.flops(REFERENCE) / self.flops(name)))


def train_run(cfg: RunConfig, run: Path, corpus: Path) -> None:
    """Train a run of `cfg` (a latent process through adapt/latent.py, around its frozen base)."""
    if spec_of(cfg.process).frozen_base:
        latent_train(cfg, run_dir=run, data=[str(corpus)], progress=False, log=lambda _: None)
    else:
        train(cfg, run_dir=run, data=[str(corpus)], progress=False, log=lambda _: None)


def run_seed(study: Study, seed: int, on_result) -> dict:
    """Train and evaluate the processes with `seed` (reusing finished ones in out/seed<N>/results.json);
    `on_result(results)` after each model. AR trains first: it scores the samples and is the latent processes'
    frozen base."""
    out = study.out / f"seed{seed}"
    out.mkdir(parents=True, exist_ok=True)
    size = study.size
    base = base_config(size, study.steps, seed, study.threads)
    ecfg = EvalConfig(seed=seed, seq_len=size["context"], max_tokens=size["held_tokens"], min_rounds=2,
                      max_rounds=size["rounds"], rel_se=0.01)
    results_path = out / "results.json"
    results: dict = json.loads(results_path.read_text(encoding="utf-8")) if results_path.exists() else {}
    ar_run, ref, budget = out / run_name("AR"), None, None
    for name in study.names:
        run = out / run_name(name)
        if name in results and results[name].get("budget_steps") == study.steps and not study.rerun:
            if study.resample:  # the trained runs as they are, sampled and scored again
                ref = ref or SunfishReference(load_model(ar_run, setup_runtime("auto").device))
                print(f"== seed {seed}, {name}: sampling again")
                loaded = load_model(run, setup_runtime("auto").device)
                results[name]["generation"] = generation_figures(loaded, ref, size, seed)
                results_path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
                on_result(results)
            continue
        if study.resample:  # nothing is trained: a process without results stays without
            continue
        budget = budget or (Budget(study, base, ar_run) if name != "AR" else None)
        steps = budget.steps(name) if budget else study.steps
        print(f"== seed {seed}, {name}: {steps} steps")
        shutil.rmtree(run, ignore_errors=True)
        began = time.perf_counter()
        train_run(config_for(name, base_config(size, steps, seed, study.threads), steps, ar_run), run, study.corpus)
        seconds = time.perf_counter() - began
        ref = ref or SunfishReference(load_model(ar_run, setup_runtime("auto").device))
        budget = budget or Budget(study, base, ar_run)
        flops = budget.flops(name)
        print(f"  trained in {seconds / 60:.1f} min ({flops * steps / 1e12:.2f} TFLOP); evaluating")
        results[name] = {"budget_steps": study.steps, "steps": steps, "flops_per_step": flops, "train_seconds": seconds,
                         **evaluate(run, study.held, study.train_docs, ref, size, ecfg)}
        results_path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        on_result(results)
    return results


# ---- across seeds ---------------------------------------------------------------------------------------------

def bpb(r: dict) -> float | None:
    return r["likelihood"].get("bits_per_byte")


def held_cell(by_seed: dict[int, dict], name: str) -> str:
    first = next(rows[name] for rows in by_seed.values() if name in rows)
    lik = first["likelihood"]
    if "reconstruction_accuracy" in lik:
        return (spread(gather(by_seed, name, lambda r: r["likelihood"]["reconstruction_accuracy"]))
                + " token accuracy reading the text back from its latents (no bound exists)")
    if "bits_per_byte" not in lik:
        return spread(gather(by_seed, name, lambda r: r["likelihood"]["nats_per_token"])) + f" nats/token ({lik['method']})"
    return spread(gather(by_seed, name, bpb)) + f" bits/byte ({'exact' if lik['exact'] else 'bound'})"


def generation_cell(by_seed: dict[int, dict], name: str, k: int, s: int, last: bool) -> str:
    """'gen. ppl / d-1 / d-2' at the k-th step count `s` (a model with one setting, AR or VFM: in the last column only)."""
    single = all(len(rows[name]["generation"]) == 1 for rows in by_seed.values() if name in rows)
    if single and not last:
        return "—"
    pick = lambda r: r["generation"][0] if single else r["generation"][k] if k < len(r["generation"]) else None
    figures = [spread(gather(by_seed, name, lambda r, key=key: (pick(r) or {}).get(key)), fmt)
               for key, fmt in (("gen_perplexity", ".1f"), ("distinct_1", ".2f"), ("distinct_2", ".2f"))]
    ran = {g["steps"] for rows in by_seed.values() if name in rows for g in [pick(rows[name])] if g}
    steps = "one pass" if ran == {1} else f"{', '.join(map(str, sorted(ran)))} steps"
    return " / ".join(figures) + (f" ({steps})" if ran and ran != {s} else "")


def same_or_spread(values: list[float], fmt: str) -> str:
    """One figure when every seed has the same (to the shown precision), else the spread."""
    shown = {format(v, fmt) for v in values}
    return shown.pop() if len(shown) == 1 else spread(values, fmt)


def at_64(r: dict) -> float:
    """Sampling tokens/s at the step count nearest 64 (AR: its 63 passes; VFM: its one pass)."""
    return min(r["generation"], key=lambda g: abs(g["steps"] - 64))["tokens_per_s"]


def table(by_seed: dict[int, dict], gen_steps: tuple[int, ...]) -> str:
    head = ["process", "params (trained)", "steps", "train TFLOP", "train min", "held-out (what)"]
    head += [f"gen. ppl / d-1 / d-2 @{s}" for s in gen_steps] + ["tokens/s @64", "below unigram, per seed", "plateau seeds"]
    uni = gather(by_seed, "AR", lambda r: r.get("unigram_bits_per_byte"))
    rows = [["unigram (no context)", "—", "—", "—", "—", spread(uni) + " bits/byte (exact)"] + ["—"] * (len(head) - 6)]
    for name in [n for n in PROCESSES if any(n in r for r in by_seed.values())]:
        first = next(rows[name] for rows in by_seed.values() if name in rows)
        tflop = same_or_spread(gather(by_seed, name, lambda r: r["steps"] * r["flops_per_step"] / 1e12 if "flops_per_step" in r else None), ".2f")
        cells = [name, f"{first['parameters']:,}", same_or_spread(gather(by_seed, name, lambda r: r["steps"]), ".0f"), tflop,
                 spread(gather(by_seed, name, lambda r: r["train_seconds"] / 60), ".1f"), held_cell(by_seed, name)]
        cells += [generation_cell(by_seed, name, k, s, k == len(gen_steps) - 1) for k, s in enumerate(gen_steps)]
        cells.append(spread(gather(by_seed, name, at_64), ".0f"))
        cells += plateau_cells(by_seed, name, bpb, lambda r: r.get("unigram_bits_per_byte"), name in PLATEAU_CHECKED)
        rows.append(cells)
    return markdown_table(head, rows)


# ---- the command --------------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny models and a few steps: a smoke run")
    p.add_argument("--steps", type=int, help="training steps of every model (default 300; quick 10)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0 = its default)")
    p.add_argument("--out", type=Path, default=Path("runs/processes"))
    p.add_argument("--doc", type=Path, help="rewrite the marked block of this Markdown file (e.g. docs/results_processes.md)")
    p.add_argument("--only", help="semicolon-separated process names to (re)run (the names hold commas); AR always runs first")
    p.add_argument("--resample", action="store_true", help="train nothing new: sample and score the finished runs under "
                   "--out again (after a change to the generation figures)")
    p.add_argument("--table-only", action="store_true", help="train nothing: the table of the results already under --out "
                   "(e.g. after seeds ran as separate processes)")
    p.add_argument("--seeds", default=DEFAULT_SEEDS, help=f"comma-separated seeds (default {DEFAULT_SEEDS})")
    p.add_argument("--corpora", type=Path, default=CORPORA, help="a copy of ../shared/corpora (default: beside the checkout)")
    return p.parse_args(argv)


def prepare(args: argparse.Namespace) -> Study:
    """Read the stories, write the training file and fix what every seed shares."""
    size = QUICK if args.quick else FULL
    only = [n.strip() for n in args.only.split(";")] if args.only else []
    unknown = [n for n in only if n not in PROCESSES]
    if unknown:
        raise SystemExit(f"unknown process(es) {', '.join(unknown)}; choose from {', '.join(PROCESSES)}")
    names = list(PROCESSES) if not only else ["AR"] + [n for n in PROCESSES if n in only and n != "AR"]
    docs = read_jsonl(corpus_path(args.corpora, "en"), size["docs"] + size["held_docs"])
    args.out.mkdir(parents=True, exist_ok=True)
    corpus = args.out / "train.jsonl"
    if not corpus.exists():  # (seeds may run as separate processes on one --out: the first one writes it)
        write_jsonl(corpus, docs[: size["docs"]])
    return Study(size=size, steps=args.steps or (10 if args.quick else 300), names=names, rerun=bool(only), corpus=corpus,
                 train_docs=docs[: size["docs"]], held=docs[size["docs"]:], out=args.out, threads=args.threads,
                 resample=args.resample)


def report(study: Study, by_seed: dict[int, dict], args: argparse.Namespace) -> str:
    """The Markdown block of the models finished so far; written to --doc (atomically) when given."""
    size, steps = study.size, study.steps
    md = table(by_seed, size["gen_steps"])
    command = ("python benchmarks/compare_processes.py" + (" --quick" if args.quick else "")
               + (f" --steps {args.steps}" if args.steps else "") + (f" --only \"{args.only}\"" if args.only else "")
               + (f" --seeds {args.seeds}" if args.seeds != DEFAULT_SEEDS else "")
               + (f" --threads {args.threads}" if args.threads else "") + (f" --doc {args.doc}" if args.doc else ""))
    n_tok = size["batch"] * size["context"] * steps
    text = "\n".join([
        f"Command: `{command}`", "",
        f"Backbone: {size['n_layers']} layers x {size['d_model']}, {size['n_heads']} heads, context {size['context']}, "
        f"byte-level BPE {size['vocab']}, batches of {size['batch']} x {size['context']} tokens, AdamW, on the first "
        f"{size['docs']} English TinyStories; the next {size['held_docs']} stories held out. Equal training FLOPs: "
        f"every model trains the FLOPs that {REFERENCE} spends in {steps} steps ({n_tok:,} tokens), counted per step "
        "by torch's FlopCounterMode on a real batch (benchmarks/train_flops.py; a frozen base's forward passes "
        "inside the step are counted, its own pre-training is not: LDLM, Cola and VFM train around the same seed's "
        "AR row, frozen, whose whole budget comes on top of theirs); AR trains the same steps as the reference. "
        f"Generation: {size['samples']} unprompted samples of {size['length']} tokens per step count, scored by the "
        "same seed's AR model; d-1/d-2 = distinct uni/bigrams. The plateau check is made for masked and block "
        "diffusion only (embedding diffusion's bound is too loose for it; flow, LDLM, Cola and VFM have none).", "",
        seeds_line(sorted(by_seed)), "",
        md, ""])
    if args.doc:
        update_doc(args.doc, "compare_processes", text, "Generative processes at equal compute")
    return text


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    seeds = parse_seeds(args.seeds)
    if not corpus_path(args.corpora, "en").exists():
        print(f"needs {corpus_path(args.corpora, 'en')}; pass --corpora with a copy of ../shared/corpora", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    study = prepare(args)
    by_seed: dict[int, dict] = {}
    for seed in seeds:
        if args.table_only:
            path = study.out / f"seed{seed}" / "results.json"
            by_seed[seed] = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
            continue
        by_seed[seed] = run_seed(study, seed, lambda results, seed=seed: report(study, {**by_seed, seed: results}, args))
    text = report(study, by_seed, args)
    (args.out / "results.md").write_text(text, encoding="utf-8")
    print()
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
