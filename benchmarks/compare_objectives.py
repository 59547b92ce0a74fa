"""Objectives at equal compute: AR baseline, masked diffusion (NELBO and masked CE), block diffusion B = 4, 16.

    python benchmarks/compare_objectives.py [--quick] [--steps 800] [--seeds 0,1,2] [--out runs/objectives]
                                            [--doc docs/results.md]

On English (TinyStories) and Russian (TinyStories-ru) text from ../shared/corpora, every objective trains
the same backbone (sunfish.training.loop.train) on the same mixed corpus, tokenizer and optimiser, for the
same training FLOPs:
    FLOPs per sequence = T (6 N + 12 n_layers d_model T_attn),
with N the parameters, T the tokens through the network and T_attn the attention length: T = T_attn = L
for AR and masked diffusion, 2L for block diffusion (it runs the noised and the clean copy together), so
block diffusion gets proportionally fewer steps. Then, per model: held-out bits per byte on English and
Russian separately (exact for AR, the Monte Carlo NELBO bound with its standard error for diffusion),
generative perplexity of unprompted samples at 16/64/256 steps scored by the same seed's AR model, and
distinct-n of those samples. Every objective runs once per seed (--seeds; each seed's runs and results.json
under --out/seed<N>, reused when their step count matches); the table gives each figure's mean over seeds
and (min-max), the bits per byte under a unigram model per seed, and which seeds' diffusion runs stayed on
the unigram plateau (see benchmarks/multiseed.py). Writes results.md and objectives.png under --out; with
--doc, rewrites the marked block of that Markdown file's "## Objectives" section (notes outside the markers
are kept) and copies the plot beside it.
Timings are not the point here (the CPU may be shared); the figures are.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from multiseed import (CORPORA, DEFAULT_SEEDS, corpus_path, gather, on_plateau, parse_seeds, plateau_cells,  # noqa: E402
                       read_jsonl, seeds_line, spread, unigram_bits_per_byte, update_doc, write_jsonl)

from sunfish.config import EvalConfig, RunConfig, apply_tree, load_preset  # noqa: E402
from sunfish.eval.generative import SunfishReference, diversity, generative_perplexity, sample_texts  # noqa: E402
from sunfish.eval.likelihood import evaluate_likelihood, held_out  # noqa: E402
from sunfish.eval.report import markdown_table  # noqa: E402
from sunfish.runtime import setup_runtime  # noqa: E402
from sunfish.loading import load_model  # noqa: E402
from sunfish.training.loop import train  # noqa: E402

LANGS = ("en", "ru")

# name -> (config overrides, tokens-through-network factor)
OBJECTIVES = {
    "AR": ({"process": {"kind": "ar"}, "model": {"attention": "causal", "time_cond": "none"}}, 1),
    "masked NELBO": ({"process": {"loss": "nelbo"}}, 1),
    "masked CE": ({"process": {"loss": "masked_ce"}}, 1),
    "block B=4": ({"process": {"block_size": 4}, "model": {"time_cond": "none"}}, 2),
    "block B=16": ({"process": {"block_size": 16}, "model": {"time_cond": "none"}}, 2),
}

# Sized for a shared 2-core CPU (~3-4 minutes of training per model); sample length = context, so the
# 256-step setting is capped at one token per step.
FULL = dict(d_model=64, n_layers=2, n_heads=2, context=128, batch=8, vocab=1024, docs=1000, held_docs=40,
            held_tokens=2048, samples=8, gen_steps="16,64,256", length=127, log_every=10)
QUICK = dict(d_model=32, n_layers=1, n_heads=2, context=64, batch=4, vocab=300, docs=120, held_docs=8,
             held_tokens=1024, samples=2, gen_steps="4,16", length=32, log_every=5)


def flops_per_step(cfg: RunConfig, n_params: int, factor: int) -> float:
    T = factor * cfg.model.context
    return cfg.train.batch_size * T * (6 * n_params + 12 * cfg.model.n_layers * cfg.model.d_model * T)


def params(cfg: RunConfig, vocab: int) -> int:
    from sunfish.model.transformer import build_model, count_parameters

    return count_parameters(build_model(dataclasses.replace(cfg.model, vocab_size=vocab), "meta"))


def base_config(size: dict, steps: int, seed: int, threads: int = 0) -> RunConfig:
    cfg = load_preset("quickstart")
    return apply_tree(cfg, {
        "model": {"d_model": size["d_model"], "n_layers": size["n_layers"], "n_heads": size["n_heads"],
                  "context": size["context"], "layout": "same"},  # plain objectives, not the preset's recipe
        "data": {"tokenizer": "bpe", "bpe_vocab": size["vocab"], "val_fraction": 0.02},
        "train": {"steps": steps, "batch_size": size["batch"], "val_every": 0, "log_every": size["log_every"],
                  "seed": seed, "save_every": 0, "threads": threads},
        "optim": {"warmup_steps": max(1, min(100, steps // 10))},
        "process": {"causal_warmup": 0},
    })


def evaluate(run: Path, held: dict[str, list[str]], train_docs: dict[str, list[str]], ref: SunfishReference | None,
             size: dict, ecfg: EvalConfig) -> dict:
    """Held-out likelihood per language (with the unigram model's figure on the same tokens) and generation."""
    loaded = load_model(run, setup_runtime("auto").device)
    out: dict = {}
    for lang, docs in held.items():
        data = held_out(docs, loaded.tokenizer, size["context"], size["held_tokens"])
        lik = evaluate_likelihood(loaded.model, loaded.cfg.process, loaded.tokenizer.mask_id, data, ecfg)
        out[f"likelihood_{lang}"] = lik.as_json()
        out[f"unigram_{lang}"] = unigram_bits_per_byte(train_docs[lang], data, loaded.tokenizer)
        print(f"    {lang}: {lik.line()}; unigram model {out[f'unigram_{lang}']:.4f} bits/byte")
    out["generation"] = generate(loaded, ref, size, ecfg.seed)
    return out


def generate(loaded, ref: SunfishReference | None, size: dict, seed: int) -> list[dict]:
    """Unprompted samples at each step count (one pass for AR): generative perplexity and distinct-n."""
    steps_list = [size["length"]] if loaded.spec.causal else [int(s) for s in size["gen_steps"].split(",")]
    rows: list[dict] = []
    for steps in steps_list:
        try:
            texts, seconds, nfe = sample_texts(loaded, size["samples"], size["length"], min(steps, size["length"]),
                                               1.0, seed, batch_size=size["samples"])
        except ValueError as err:
            print(f"    {steps} steps: not possible ({err})")
            rows.append({"steps": steps, "error": str(err)})
            continue
        ppl = generative_perplexity(ref, texts)[0] if ref is not None else None
        div = diversity(texts)
        rows.append({"steps": steps, "gen_perplexity": ppl, "seconds": seconds, "example": texts[0][:300], **div})
        print(f"    {steps} steps: gen. ppl {ppl:.2f}, distinct-1/2/3 {div['distinct_1']:.3f}/{div['distinct_2']:.3f}/"
              f"{div['distinct_3']:.3f}, {seconds:.1f} s")
    return rows


# ---- one seed ---------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Study:
    """What every seed of the study shares."""
    size: dict
    steps: int  # AR / masked steps; block diffusion gets fewer (same FLOPs)
    names: list[str]  # objectives, AR first
    corpus: Path  # the mixed training file
    train_docs: dict[str, list[str]]  # per language, for the unigram model
    held: dict[str, list[str]]  # held-out documents per language
    out: Path
    threads: int
    quick: bool


def run_seed(study: Study, seed: int) -> dict:
    """Train and evaluate every objective with `seed` (reusing finished ones in out/seed<N>/results.json)."""
    out = study.out / f"seed{seed}"
    out.mkdir(parents=True, exist_ok=True)
    size = study.size
    base = base_config(size, study.steps, seed, study.threads)
    n_params = params(base, size["vocab"])
    ref_flops = flops_per_step(base, n_params, 1) * study.steps
    ecfg = EvalConfig(seed=seed, seq_len=size["context"], max_tokens=size["held_tokens"], rel_se=0.01,
                      min_rounds=4, max_rounds=8 if study.quick else 16)
    results_path = out / "results.json"
    results: dict = json.loads(results_path.read_text(encoding="utf-8")) if results_path.exists() else {}
    ref = None
    for name in study.names:
        overrides, factor = OBJECTIVES[name]
        cfg = apply_tree(base, overrides)
        n_steps = max(1, round(ref_flops / flops_per_step(cfg, n_params, factor)))
        cfg = apply_tree(cfg, {"train": {"steps": n_steps}})
        run = out / name.replace(" ", "_").replace("=", "")
        if name not in results or results[name].get("steps") != n_steps:
            flops = flops_per_step(cfg, n_params, factor) * n_steps
            print(f"== seed {seed}, {name}: {n_steps} steps, {flops / 1e15:.3f} PFLOP")
            shutil.rmtree(run, ignore_errors=True)
            began = time.perf_counter()
            train(cfg, run_dir=run, data=[str(study.corpus)], progress=False, log=lambda _: None)
            seconds = time.perf_counter() - began
            if name == "AR":
                ref = SunfishReference(load_model(run, setup_runtime("auto").device))
            print(f"  trained in {seconds / 60:.1f} min; evaluating")
            results[name] = {"steps": n_steps, "flops": flops, "train_seconds": seconds, "parameters": n_params,
                             **evaluate(run, study.held, study.train_docs, ref, size, ecfg)}
            results_path.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        elif name == "AR":
            ref = SunfishReference(load_model(run, setup_runtime("auto").device))
    return {n: results[n] for n in study.names if n in results}


# ---- across seeds -------------------------------------------------------------------------------------------

def bpb(r: dict, lang: str = "en") -> float:
    return r[f"likelihood_{lang}"]["bits_per_byte"]


def ppl_ratio(model_bpb: float, ar: dict) -> float:
    """Perplexity of a model with `model_bpb` English bits/byte over the AR model's, on the same held-out tokens."""
    lik = ar["likelihood_en"]
    return math.exp((model_bpb - lik["bits_per_byte"]) * math.log(2) * lik["bytes"] / lik["tokens"])


def generation_at(name: str, r: dict, steps: int, steps_list: list[int]) -> dict | None:
    """The sample row shown under `steps` (AR: its one row, under the largest step count only)."""
    gens = {g["steps"]: g for g in r["generation"]}
    if name == "AR":
        return next(iter(gens.values()), None) if steps == steps_list[-1] else None
    return gens.get(steps)


def unigram_row(by_seed: dict[int, dict], n_cols: int) -> list[str]:
    """The context-free reference: the unigram model's bits/byte (on the AR runs' tokens) and its ratio to AR."""
    en = gather(by_seed, "AR", lambda r: r.get("unigram_en"))
    ru = gather(by_seed, "AR", lambda r: r.get("unigram_ru"))
    ratio = gather(by_seed, "AR", lambda r: ppl_ratio(r["unigram_en"], r) if "unigram_en" in r else None)
    cells = ["unigram (no context)", "—", "—", "—", spread(en), spread(ru), spread(ratio, ".2f", "x")]
    return cells + ["—"] * (n_cols - len(cells))


def objective_row(by_seed: dict[int, dict], name: str, steps_list: list[int]) -> list[str]:
    first = next(rows[name] for rows in by_seed.values() if name in rows)
    ratios = [ppl_ratio(bpb(rows[name]), rows["AR"]) for rows in by_seed.values() if name in rows and "AR" in rows]
    cells = [name, str(first["steps"]), f"{first['flops']:.2e}",
             spread(gather(by_seed, name, lambda r: r["train_seconds"] / 60), ".1f"),
             spread(gather(by_seed, name, bpb)), spread(gather(by_seed, name, lambda r: bpb(r, "ru"))),
             spread(ratios, ".2f", "x")]
    for s in steps_list:
        get = lambda r, s=s: (generation_at(name, r, s, steps_list) or {}).get("gen_perplexity")
        shown = name != "AR" or s == steps_list[-1]
        cells.append(spread(gather(by_seed, name, get), ".1f") if shown else "—")
    distinct = [spread(gather(by_seed, name, lambda r, k=k: (generation_at(name, r, steps_list[-1], steps_list) or {})
                                     .get(f"distinct_{k}")), ".2f") for k in (1, 2, 3)]
    cells.append(" / ".join(distinct))
    return cells + plateau_cells(by_seed, name, bpb, lambda r: r.get("unigram_en"), checked=name != "AR")


def table(by_seed: dict[int, dict], names: list[str], steps_list: list[int]) -> str:
    header = ["objective", "steps", "train FLOPs", "train min", "en bits/byte", "ru bits/byte", "en ppl vs AR"]
    header += [f"gen. ppl @{s}" for s in steps_list] + [f"distinct-1/2/3 @{steps_list[-1]}"]
    header += ["en below unigram, per seed", "plateau seeds"]
    rows = [objective_row(by_seed, n, steps_list) for n in names if any(n in r for r in by_seed.values())]
    return markdown_table(header, [unigram_row(by_seed, len(header))] + rows)


def plot(by_seed: dict[int, dict], names: list[str], path: Path, length: int) -> None:
    """Held-out bits per byte (mean over seeds, min-max bars; dashed: the English unigram model) and generative
    perplexity (mean over seeds) against sampling steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for k, lang in enumerate(LANGS):
        values = [gather(by_seed, n, lambda r: bpb(r, lang)) for n in names]
        means = [sum(v) / len(v) for v in values]
        errs = [[m - min(v) for m, v in zip(means, values)], [max(v) - m for m, v in zip(means, values)]]
        a.bar([i + 0.4 * k for i in range(len(names))], means, 0.4, yerr=errs, label=lang)
    unigram = gather(by_seed, "AR", lambda r: r.get("unigram_en"))
    if unigram:
        a.axhline(sum(unigram) / len(unigram), color="gray", linestyle="--", linewidth=1, label="en unigram")
    a.set_xticks([i + 0.2 for i in range(len(names))], names, rotation=20, fontsize=8)
    a.set_ylabel("held-out bits/byte (min-max bars)")
    a.legend(fontsize=8)
    ticks = set()
    for n in names:
        steps = sorted({g["steps"] for rows in by_seed.values() if n in rows for g in rows[n]["generation"]
                        if g.get("gen_perplexity") is not None})
        means = [sum(v) / len(v) for v in (gather(by_seed, n, lambda r, s=s: next(
            (g.get("gen_perplexity") for g in r["generation"] if g["steps"] == s), None)) for s in steps)]
        actual = [min(s, length) for s in steps]  # the steps actually run (capped at the sample length)
        ticks |= set(actual)
        if steps:
            b.plot(actual, means, "o-", label=n)
    b.set_xscale("log")
    b.set_yscale("log")
    b.set_xticks(sorted(ticks), [str(t) for t in sorted(ticks)])
    b.minorticks_off()
    b.set_xlabel("sampling steps")
    b.set_ylabel("generative perplexity (AR-scored)")
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---- the command ----------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny models and a few steps: a smoke run")
    p.add_argument("--steps", type=int, help="AR / masked training steps (block diffusion: fewer, same FLOPs)")
    p.add_argument("--out", type=Path, default=Path("runs/objectives"))
    p.add_argument("--doc", type=Path, help="Markdown file whose marked '## Objectives' block is (re)written")
    p.add_argument("--only", help="comma-separated objectives to run (default all)")
    p.add_argument("--seeds", default=DEFAULT_SEEDS, help=f"comma-separated seeds (default {DEFAULT_SEEDS})")
    p.add_argument("--corpora", type=Path, default=CORPORA, help="a copy of ../shared/corpora (default: beside the checkout)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default; 1 helps on a crowded CPU)")
    return p.parse_args(argv)


def prepare(args: argparse.Namespace) -> Study:
    """Read the corpora, write the mixed training file and fix what every seed shares."""
    size = QUICK if args.quick else FULL
    names = [n.strip() for n in args.only.split(",")] if args.only else list(OBJECTIVES)
    unknown = [n for n in names if n not in OBJECTIVES]
    if unknown:
        raise SystemExit(f"unknown objective(s) {', '.join(unknown)}; choose from {', '.join(OBJECTIVES)}")
    docs = {lang: read_jsonl(corpus_path(args.corpora, lang), size["docs"] + size["held_docs"]) for lang in LANGS}
    args.out.mkdir(parents=True, exist_ok=True)
    corpus = args.out / "train.jsonl"
    write_jsonl(corpus, [d for pair in zip(docs["en"][: size["docs"]], docs["ru"][: size["docs"]]) for d in pair])
    return Study(size=size, steps=args.steps or (10 if args.quick else 150), names=["AR"] + [n for n in names if n != "AR"],
                 corpus=corpus, train_docs={lang: d[: size["docs"]] for lang, d in docs.items()},
                 held={lang: d[size["docs"]:] for lang, d in docs.items()}, out=args.out, threads=args.threads,
                 quick=args.quick)


def report(study: Study, by_seed: dict[int, dict], args: argparse.Namespace) -> str:
    """The Markdown section: command, model, seeds, the table and the plot."""
    size = study.size
    md = table(by_seed, study.names, [int(s) for s in size["gen_steps"].split(",")])
    plot(by_seed, study.names, study.out / "objectives.png", size["length"])
    command = " ".join(["python benchmarks/compare_objectives.py"] + (["--quick"] if args.quick else [])
                       + ([f"--steps {args.steps}"] if args.steps else []) + ([f"--only \"{args.only}\""] if args.only else [])
                       + ([f"--seeds {args.seeds}"] if args.seeds != DEFAULT_SEEDS else [])
                       + ([f"--threads {args.threads}"] if args.threads else []))
    n_params = next(iter(by_seed.values()))["AR"]["parameters"]
    model = (f"{size['n_layers']} layers x {size['d_model']}, context {size['context']}, byte-level BPE {size['vocab']}, "
             f"{n_params:,} parameters, batch {size['batch']} x {size['context']}")
    return "\n".join([
        f"Command: `{command}` (model: {model}; {size['docs']} English + {size['docs']} Russian TinyStories for "
        f"training, the next {size['held_docs']} of each held out; equal training FLOPs, 6N + 12 n_layers d T per "
        "token with block diffusion's 2L tokens counted).", "",
        seeds_line(sorted(by_seed)), "",
        md, "", "![objectives](objectives.png)", ""])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    seeds = parse_seeds(args.seeds)
    missing = [corpus_path(args.corpora, lang) for lang in LANGS if not corpus_path(args.corpora, lang).exists()]
    if missing:
        print(f"needs {', '.join(map(str, missing))}; pass --corpora with a copy of ../shared/corpora", file=sys.stderr)
        return 2
    study = prepare(args)
    by_seed = {seed: run_seed(study, seed) for seed in seeds}
    section = report(study, by_seed, args)
    print()
    print(section)
    (args.out / "results.md").write_text(section, encoding="utf-8")
    if args.doc:
        update_doc(args.doc, "compare_objectives", section, "Objectives")
        shutil.copyfile(args.out / "objectives.png", args.doc.parent / "objectives.png")
        print(f"\nupdated {args.doc}")
    stuck = {n: [str(s) for s in seeds if n in by_seed[s] and on_plateau(bpb(by_seed[s][n]), by_seed[s][n]["unigram_en"])]
             for n in study.names if n != "AR"}
    print("on the unigram plateau: " + "; ".join(f"{n}: seeds {', '.join(v) or 'none'}" for n, v in stuck.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
