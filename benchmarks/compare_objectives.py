"""Objectives at equal compute: AR baseline, masked diffusion (NELBO and masked CE), block diffusion B = 4, 16.

    python benchmarks/compare_objectives.py [--quick] [--steps 800] [--out runs/objectives] [--doc docs/results.md]

On English (TinyStories) and Russian (TinyStories-ru) text from ../shared/corpora, every objective trains
the same backbone (sunfish.training.loop.train) on the same mixed corpus, tokenizer and optimiser, for the
same training FLOPs:
    FLOPs per sequence = T (6 N + 12 n_layers d_model T_attn),
with N the parameters, T the tokens through the network and T_attn the attention length: T = T_attn = L
for AR and masked diffusion, 2L for block diffusion (it runs the noised and the clean copy together), so
block diffusion gets proportionally fewer steps. Then, per model: held-out bits per byte on English and
Russian separately (exact for AR, the Monte Carlo NELBO bound with its standard error for diffusion),
generative perplexity of unprompted samples at 16/64/256 steps scored by this study's AR model, and
distinct-n of those samples. Prints a table; writes results.json, results.md and objectives.png under --out;
with --doc, rewrites the marked block of that Markdown file's "## Objectives" section (notes outside the
markers are kept) and copies the plot beside it.
Timings are not the point here (the CPU may be shared); the figures are.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import math
import shutil
import sys
import time
from pathlib import Path

from sunfish.config import EvalConfig, RunConfig, apply_tree, load_preset
from sunfish.eval.generative import SunfishReference, diversity, generative_perplexity, sample_texts
from sunfish.eval.likelihood import evaluate_likelihood, held_out
from sunfish.eval.report import markdown_table
from sunfish.runtime import setup_runtime
from sunfish.loading import load_model
from sunfish.training.loop import train

CORPORA = Path(__file__).resolve().parents[2] / "shared" / "corpora"
EN = CORPORA / "en_tinystories" / "tinystories_train_head.jsonl"
RU = CORPORA / "ru_tinystories" / "tinystories_ru.jsonl.gz"

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


def read_jsonl(path: Path, limit: int) -> list[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    docs = []
    with opener(path, "rt", encoding="utf-8") as f:
        for line in f:
            docs.append(json.loads(line)["text"])
            if len(docs) == limit:
                break
    return docs


def write_jsonl(path: Path, docs: list[str]) -> None:
    path.write_text("".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs), encoding="utf-8")


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
                  "context": size["context"]},
        "data": {"tokenizer": "bpe", "bpe_vocab": size["vocab"], "val_fraction": 0.02},
        "train": {"steps": steps, "batch_size": size["batch"], "val_every": 0, "log_every": size["log_every"],
                  "seed": seed, "save_every": 0, "threads": threads},
        "optim": {"warmup_steps": max(1, min(100, steps // 10))},
    })


def evaluate(run: Path, held: dict[str, list[str]], ref: SunfishReference | None, size: dict, ecfg: EvalConfig) -> dict:
    rt = setup_runtime("auto")
    loaded = load_model(run, rt.device)
    out: dict = {}
    for lang, docs in held.items():
        data = held_out(docs, loaded.tokenizer, size["context"], size["held_tokens"])
        lik = evaluate_likelihood(loaded.model, loaded.cfg.process, loaded.tokenizer.mask_id, data, ecfg)
        print(f"    {lang}: {lik.line()}")
        out[f"likelihood_{lang}"] = lik.as_json()
    steps_list = [size["length"]] if loaded.spec.causal else [int(s) for s in size["gen_steps"].split(",")]
    out["generation"] = []
    for steps in steps_list:
        try:
            texts, seconds, nfe = sample_texts(loaded, size["samples"], size["length"], min(steps, size["length"]),
                                               1.0, ecfg.seed, batch_size=size["samples"])
        except ValueError as err:
            print(f"    {steps} steps: not possible ({err})")
            out["generation"].append({"steps": steps, "error": str(err)})
            continue
        ppl = generative_perplexity(ref, texts)[0] if ref is not None else None
        div = diversity(texts)
        out["generation"].append({"steps": steps, "gen_perplexity": ppl, "seconds": seconds, "example": texts[0][:300], **div})
        print(f"    {steps} steps: gen. ppl {ppl:.2f}, distinct-1/2/3 {div['distinct_1']:.3f}/{div['distinct_2']:.3f}/"
              f"{div['distinct_3']:.3f}, {seconds:.1f} s")
    return out


def table(results: dict, steps_list: list[int]) -> str:
    header = ["objective", "steps", "train FLOPs", "train min", "en bits/byte", "ru bits/byte", "en ppl vs AR"]
    header += [f"gen. ppl @{s}" for s in steps_list] + [f"distinct-1/2/3 @{steps_list[-1]}"]
    ar_en = results.get("AR", {}).get("likelihood_en", {}).get("nats_per_token")
    rows = []
    for name, r in results.items():
        cells = [name, str(r["steps"]), f"{r['flops']:.2e}", f"{r['train_seconds'] / 60:.1f}"]
        for lang in ("en", "ru"):
            lik = r[f"likelihood_{lang}"]
            cells.append(f"{lik['bits_per_byte']:.3f}" + ("" if lik["exact"] else f" ± {lik['bits_per_byte_se']:.3f}"))
        en = r["likelihood_en"]["nats_per_token"]
        cells.append(f"{math.exp(en) / math.exp(ar_en):.2f}x" if ar_en else "")
        gens = {g["steps"]: g for g in r["generation"]}
        for s in steps_list:
            if name == "AR":  # one token per step: a single figure, under the largest step count
                g = next(iter(gens.values()), None) if s == steps_list[-1] else None
                cells.append(f"{g['gen_perplexity']:.1f}" if g and g.get("gen_perplexity") is not None else "—")
                continue
            g = gens.get(s)
            cells.append(f"{g['gen_perplexity']:.1f}" if g and g.get("gen_perplexity") is not None else "n/a")
        last = next(iter(gens.values()), None) if name == "AR" else gens.get(steps_list[-1])
        cells.append(f"{last['distinct_1']:.2f}/{last['distinct_2']:.2f}/{last['distinct_3']:.2f}" if last and "distinct_1" in last else "n/a")
        rows.append(cells)
    return markdown_table(header, rows)


def plot(results: dict, path: Path, length: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    names = list(results)
    for k, lang in enumerate(("en", "ru")):
        vals = [results[n][f"likelihood_{lang}"]["bits_per_byte"] for n in names]
        errs = [results[n][f"likelihood_{lang}"]["bits_per_byte_se"] for n in names]
        a.bar([i + 0.4 * k for i in range(len(names))], vals, 0.4, yerr=errs, label=lang)
    a.set_xticks([i + 0.2 for i in range(len(names))], names, rotation=20, fontsize=8)
    a.set_ylabel("held-out bits per byte (lower is better)")
    a.legend()
    ticks = set()
    for n in names:
        gens = [g for g in results[n]["generation"] if g.get("gen_perplexity") is not None]
        steps = [min(g["steps"], length) for g in gens]  # the steps actually run (capped at the sample length)
        ticks |= set(steps)
        if gens:
            b.plot(steps, [g["gen_perplexity"] for g in gens], "o-", label=n)
    b.set_xscale("log")
    b.set_yscale("log")
    b.set_xticks(sorted(ticks), [str(t) for t in sorted(ticks)])
    b.minorticks_off()
    b.set_xlabel("sampling steps")
    b.set_ylabel("generative perplexity (AR reference)")
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


BEGIN, END = "<!-- compare_objectives: begin -->", "<!-- compare_objectives: end -->"


def update_doc(doc: Path, block: str) -> None:
    """Put `block` between the BEGIN/END markers of `doc` (notes around them are kept); without markers,
    add a '## Objectives' section holding them at the end."""
    text = doc.read_text(encoding="utf-8") if doc.exists() else "# Results\n"
    marked = f"{BEGIN}\n{block.strip()}\n{END}"
    if BEGIN in text and END in text:
        new = text[: text.index(BEGIN)] + marked + text[text.index(END) + len(END):]
    else:
        new = text.rstrip("\n") + "\n\n## Objectives\n\n" + marked + "\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    tmp = doc.with_name(f".{doc.name}.tmp")
    tmp.write_text(new, encoding="utf-8")
    tmp.replace(doc)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny models and a few steps: a smoke run")
    p.add_argument("--steps", type=int, help="AR / masked training steps (block diffusion: fewer, same FLOPs)")
    p.add_argument("--out", type=Path, default=Path("runs/objectives"))
    p.add_argument("--doc", type=Path, help="Markdown file whose marked '## Objectives' block is (re)written")
    p.add_argument("--only", help="comma-separated objectives to run (default all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default; 1 helps on a crowded CPU)")
    args = p.parse_args()
    if not EN.exists() or not RU.exists():
        print(f"needs ../shared/corpora ({EN.parent.name}, {RU.parent.name}); not found beside this checkout", file=sys.stderr)
        return 2
    size = QUICK if args.quick else FULL
    steps = args.steps or (10 if args.quick else 150)
    names = [n.strip() for n in args.only.split(",")] if args.only else list(OBJECTIVES)
    args.out.mkdir(parents=True, exist_ok=True)

    en, ru = read_jsonl(EN, size["docs"] + size["held_docs"]), read_jsonl(RU, size["docs"] + size["held_docs"])
    held = {"en": en[size["docs"]:], "ru": ru[size["docs"]:]}
    corpus = args.out / "train.jsonl"
    write_jsonl(corpus, [d for pair in zip(en[: size["docs"]], ru[: size["docs"]]) for d in pair])
    base = base_config(size, steps, args.seed, args.threads)
    n_params = params(base, size["vocab"])
    ref_flops = flops_per_step(base, n_params, 1) * steps
    ecfg = EvalConfig(seed=args.seed, seq_len=size["context"], max_tokens=size["held_tokens"], rel_se=0.01,
                      min_rounds=4, max_rounds=8 if args.quick else 16)
    results_path = args.out / "results.json"
    results: dict = json.loads(results_path.read_text(encoding="utf-8")) if results_path.exists() else {}
    ref = None
    for name in ["AR"] + [n for n in names if n != "AR"]:
        overrides, factor = OBJECTIVES[name]
        cfg = apply_tree(base, overrides)
        n_steps = max(1, round(ref_flops / flops_per_step(cfg, n_params, factor)))
        cfg = apply_tree(cfg, {"train": {"steps": n_steps}})
        run = args.out / name.replace(" ", "_").replace("=", "")
        if name not in results or results[name].get("steps") != n_steps:
            print(f"== {name}: {n_steps} steps, {flops_per_step(cfg, n_params, factor) * n_steps / 1e15:.3f} PFLOP")
            shutil.rmtree(run, ignore_errors=True)
            began = time.perf_counter()
            train(cfg, run_dir=run, data=[str(corpus)], progress=False, log=lambda _: None)
            seconds = time.perf_counter() - began
            if name == "AR":
                ref = SunfishReference(load_model(run, setup_runtime("auto").device))
            print(f"  trained in {seconds / 60:.1f} min; evaluating")
            results[name] = {"steps": n_steps, "flops": flops_per_step(cfg, n_params, factor) * n_steps,
                             "train_seconds": seconds, "parameters": n_params, **evaluate(run, held, ref, size, ecfg)}
            results_path.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        elif name == "AR":
            ref = SunfishReference(load_model(run, setup_runtime("auto").device))
    results = {n: results[n] for n in ["AR"] + [n for n in names if n != "AR"] if n in results}
    steps_list = [int(s) for s in size["gen_steps"].split(",")]
    md = table(results, steps_list)
    print()
    print(md)
    plot(results, args.out / "objectives.png", size["length"])
    command = " ".join(["python benchmarks/compare_objectives.py"] + (["--quick"] if args.quick else [])
                       + ([f"--steps {args.steps}"] if args.steps else []) + ([f"--threads {args.threads}"] if args.threads else []))
    model = (f"{size['n_layers']} layers x {size['d_model']}, context {size['context']}, byte-level BPE {size['vocab']}, "
             f"{n_params:,} parameters, batch {size['batch']} x {size['context']}")
    section = "\n".join([
        f"Command: `{command}` (model: {model}; {size['docs']} English + {size['docs']} Russian TinyStories for "
        f"training, the next {size['held_docs']} of each held out; equal training FLOPs, 6N + 12 n_layers d T per "
        "token with block diffusion's 2L tokens counted).", "",
        md, "", "![objectives](objectives.png)", ""])
    (args.out / "results.md").write_text(section, encoding="utf-8")
    if args.doc:
        update_doc(args.doc, section)
        shutil.copyfile(args.out / "objectives.png", args.doc.parent / "objectives.png")
        print(f"\nupdated {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
