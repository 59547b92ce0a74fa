"""Leaving the unigram plateau: training recipes for masked diffusion at equal FLOPs, over several seeds.

    python benchmarks/plateau_study.py [--size study|quickstart|quick] [--steps 800] [--seeds 0,1,2]
        [--corpora stories,tinystories] [--only "NAME;NAME"] [--threads 1] [--out runs/plateau] [--doc docs/results.md]

Every recipe trains compare_objectives.py's backbone (--size study: 2 layers x 64, context 128, byte-level BPE
1024, batch 8 x 128; quickstart: the quickstart preset's 4 layers x 128, batch 16; quick: a smoke run) with
sunfish.training.loop.train for the same training FLOPs as `--steps` AR steps
(6 N + 12 n_layers d_model T per token; block diffusion runs 2L tokens, so it gets about half the steps).
Recipes: the autoregressive reference, plain masked NELBO, masked cross-entropy, the mask-rate curriculum,
block diffusion B = 16 with and without the block-size curriculum, the causal warm-up (same and shifted layout),
the shifted layout alone and a learning-rate warm-up 3/8 of the run long instead of 1/10 (process/curriculum.py;
curricula and warm-ups are sized as fractions of a run: warm-up 1/8, curricula 3/8).
The trainer's plateau probe (training/plateau.py) runs at every validation pass (every --val-every steps):
a run's plateau exit is the first of two passes in a row whose ctx_gain exceeds plateau.EXIT_GAIN. Then the held-out bits per
byte (exact for AR, the Monte Carlo NELBO bound for diffusion) and the perplexity ratio to the AR run of the
same seed (same tokenizer and split).
Corpora: `stories`, the built-in English + Russian stories (held out: stories of another seed), and
`tinystories`, 1000 English + 1000 Russian TinyStories from ../shared/corpora with the next 40 of each held
out (skipped, with the reason, when that folder is absent). Prints one Markdown table per corpus; writes
results.json (runs already there are reused) and results.md under --out; with --doc, rewrites the marked
block of this budget in that file's "Leaving the unigram plateau" section.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_objectives import FULL, QUICK, base_config, flops_per_step, params, read_jsonl  # noqa: E402

from sunfish.config import EvalConfig, RunConfig, apply_tree  # noqa: E402
from sunfish.data.synth import generate_stories  # noqa: E402
from sunfish.eval.likelihood import evaluate_likelihood, held_out  # noqa: E402
from sunfish.eval.report import markdown_table  # noqa: E402
from sunfish.loading import load_model  # noqa: E402
from sunfish.training.corpus import build_corpus  # noqa: E402
from sunfish.training.loop import train  # noqa: E402
from sunfish.training.plateau import EXIT_GAIN, EXIT_PASSES  # noqa: E402

CORPORA = Path(__file__).resolve().parents[2] / "shared" / "corpora"
SIZES = {"study": FULL, "quick": QUICK, "quickstart": {**FULL, "d_model": 128, "n_layers": 4, "n_heads": 4, "batch": 16}}
TINY_FILES = {"en": "en_tinystories/tinystories_train_head.jsonl", "ru": "ru_tinystories/tinystories_ru.jsonl.gz"}
AR = {"process": {"kind": "ar"}, "model": {"attention": "causal", "time_cond": "none"}}
BLOCK = {"process": {"block_size": 16}, "model": {"time_cond": "none"}}
SHIFTED = {"model": {"layout": "shifted"}}
PLAIN = {"process": {"causal_warmup": 0}, "model": {"layout": "same"}}  # the recipes start here, whatever the preset says

# name -> (config overrides for a run of n steps, tokens-through-network factor)
RECIPES = {
    "AR": (lambda n: AR, 1),
    "masked NELBO": (lambda n: {}, 1),
    "masked CE": (lambda n: {"process": {"loss": "masked_ce"}}, 1),
    "mask curriculum": (lambda n: {"process": {"mask_curriculum": 0.375}}, 1),
    "block B=16": (lambda n: BLOCK, 2),
    "block B=16 + block curriculum": (lambda n: {**BLOCK, "process": {**BLOCK["process"], "block_curriculum": 0.375}}, 2),
    "causal warm-up": (lambda n: {"process": {"causal_warmup": 0.125}}, 1),
    "causal warm-up, shifted": (lambda n: {**SHIFTED, "process": {"causal_warmup": 0.125}}, 1),
    "shifted layout": (lambda n: SHIFTED, 1),
    "long LR warm-up": (lambda n: {"optim": {"warmup_steps": max(1, 3 * n // 8)}}, 1),
}


@dataclasses.dataclass
class Study:
    size: dict
    steps: int  # AR steps; every recipe gets the same FLOPs
    seeds: list[int]
    val_every: int
    threads: int
    out: Path


def corpus_docs(name: str, size: dict) -> tuple[list[str], list[str]] | str:
    """(training documents, held-out documents) of a corpus, or the reason it is skipped."""
    if name == "stories":
        n = 2 * size["docs"]
        return generate_stories("both", n, 0), generate_stories("both", 2 * size["held_docs"], 1)
    paths = {lang: CORPORA / f for lang, f in TINY_FILES.items()}
    if not all(p.exists() for p in paths.values()):
        return f"skipped: needs ../shared/corpora ({', '.join(f for f in TINY_FILES.values())}), not found beside this checkout"
    docs = {lang: read_jsonl(p, size["docs"] + size["held_docs"]) for lang, p in paths.items()}
    mix = lambda part: [d for pair in zip(docs["en"][part], docs["ru"][part]) for d in pair]
    return mix(slice(0, size["docs"])), mix(slice(size["docs"], None))


def run_config(study: Study, name: str, seed: int, n_params: int) -> RunConfig:
    """The recipe's config for one seed, with its step count at the study's FLOPs."""
    base = base_config(study.size, study.steps, seed, study.threads)
    base = apply_tree(base, {"train": {"val_every": study.val_every, "val_batches": 4}, **PLAIN})
    tree_of, factor = RECIPES[name]
    budget = flops_per_step(base, n_params, 1) * study.steps
    n_steps = max(2, round(budget / flops_per_step(base, n_params, factor)))
    cfg = apply_tree(base, {"train": {"steps": n_steps}, "optim": {"warmup_steps": max(1, min(100, n_steps // 10))}})
    return apply_tree(cfg, tree_of(n_steps))


def train_and_score(study: Study, cfg: RunConfig, corpus, held: list[str], run: Path, ecfg: EvalConfig) -> dict:
    """Train one run, then its held-out likelihood; the figures the tables need."""
    shutil.rmtree(run, ignore_errors=True)
    began = time.perf_counter()
    result = train(cfg, run_dir=run, corpus=corpus, progress=False, log=lambda _: None)
    seconds = time.perf_counter() - began
    loaded = load_model(run, "cpu")
    data = held_out(held, loaded.tokenizer, study.size["context"], study.size["held_tokens"])
    lik = evaluate_likelihood(loaded.model, loaded.cfg.process, loaded.tokenizer.mask_id, data, ecfg)
    curve = [(m["step"], m["ctx_gain"]) for m in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
             if "ctx_gain" in m]
    return {"steps": cfg.train.steps, "train_seconds": seconds, "plateau_exit": result.plateau_exit,
            "ctx_gain": result.ctx_gain, "curve": curve, "nats_per_token": lik.nats_per_token,
            "bits_per_byte": lik.bits_per_byte, "bits_per_byte_se": lik.bits_per_byte_se}


def run_corpus(study: Study, corpus_name: str, names: list[str], results: dict, save) -> str | None:
    """Train and score every (recipe, seed) of one corpus not yet in `results`; the skip reason, if any."""
    docs = corpus_docs(corpus_name, study.size)
    if isinstance(docs, str):
        return docs
    train_docs, held = docs
    ecfg = EvalConfig(seed=0, seq_len=study.size["context"], max_tokens=study.size["held_tokens"], rel_se=0.01,
                      min_rounds=4, max_rounds=12)
    n_params = params(base_config(study.size, study.steps, 0), study.size["vocab"])  # BPE: vocab_size = bpe_vocab
    for seed in study.seeds:
        corpus = None  # one tokenizer and split per seed, shared by the recipes (as AR's own would be), made when needed
        for name in names:
            key = f"{corpus_name}/{name}/{seed}"
            cfg = run_config(study, name, seed, n_params)
            if key in results and results[key]["steps"] == cfg.train.steps:
                continue
            print(f"== {corpus_name} / {name} / seed {seed}: {cfg.train.steps} steps", flush=True)
            corpus = corpus or build_corpus(cfg, train_docs, None)
            run = study.out / corpus_name / name.replace(" ", "_").replace("=", "").replace(",", "").replace("+", "and") / f"seed{seed}"
            results[key] = r = train_and_score(study, cfg, corpus, held, run, ecfg)
            print(f"   {r['train_seconds']:.0f} s; plateau exit {r['plateau_exit']}; {r['bits_per_byte']:.4f} bits/byte",
                  flush=True)
            save(results)
    return None


def mean_sd(values: list[float], fmt: str = ".3f") -> str:
    """'mean ± sd' over seeds (the sample standard deviation), or the one value."""
    if not values:
        return "n/a"
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{statistics.mean(values):{fmt}} ± {statistics.stdev(values):{fmt}}"


def exits(rows: list[dict]) -> tuple[str, str]:
    """(each seed's plateau exit, 'k/n left')."""
    cells = [str(r["plateau_exit"]) if r["plateau_exit"] is not None else "never" for r in rows]
    return " / ".join(cells), f"{sum(r['plateau_exit'] is not None for r in rows)}/{len(rows)}"


def ppl_ratios(results: dict, corpus: str, name: str, seeds: list[int]) -> list[float]:
    """exp(nats - AR's nats) per seed that has both runs (same tokenizer and split)."""
    pairs = [(results.get(f"{corpus}/{name}/{s}"), results.get(f"{corpus}/AR/{s}")) for s in seeds]
    return [math.exp(r["nats_per_token"] - a["nats_per_token"]) for r, a in pairs if r and a]


def corpus_table(results: dict, corpus: str, names: list[str], seeds: list[int]) -> str:
    header = ["recipe", "steps", "plateau exit (seed " + "/".join(map(str, seeds)) + ")", "left", "final ctx_gain",
              "held-out bits/byte", "ppl vs AR", "train min"]
    lines = []
    for name in names:
        rows = [results[k] for s in seeds if (k := f"{corpus}/{name}/{s}") in results]
        if not rows:
            continue
        causal = rows[0]["ctx_gain"] is None
        per_seed, left = ("— (no mask rate)", "—") if causal else exits(rows)
        gain = "—" if causal else mean_sd([r["ctx_gain"] for r in rows])
        ratio = "1" if name == "AR" else mean_sd(ppl_ratios(results, corpus, name, seeds), ".2f")
        lines.append([name, str(rows[0]["steps"]), per_seed, left, gain, mean_sd([r["bits_per_byte"] for r in rows]),
                      ratio, f"{statistics.mean(r['train_seconds'] for r in rows) / 60:.1f}"])
    return markdown_table(header, lines)


def verdict(results: dict, corpus: str, names: list[str], seeds: list[int]) -> str:
    """The diffusion recipe with the lowest mean bits per byte, and its paired gain over plain NELBO."""
    def bpb(name: str, s: int) -> float | None:
        r = results.get(f"{corpus}/{name}/{s}")
        return r["bits_per_byte"] if r else None

    scored = {n: [b for s in seeds if (b := bpb(n, s)) is not None] for n in names if n != "AR"}
    scored = {n: v for n, v in scored.items() if v}
    if not scored:
        return ""
    best = min(scored, key=lambda n: statistics.mean(scored[n]))
    gains = [bpb("masked NELBO", s) - bpb(best, s) for s in seeds if bpb("masked NELBO", s) is not None and bpb(best, s) is not None]
    ratio = mean_sd(ppl_ratios(results, corpus, best, seeds), ".2f")
    versus = f", {mean_sd(gains)} bits/byte below plain masked NELBO (paired by seed)" if gains and best != "masked NELBO" else ""
    return f"Best diffusion recipe on {corpus}: **{best}**{versus}, perplexity {ratio}x AR's."


PLATEAU_NOTE = (f"plateau exit: the first of {EXIT_PASSES} validation passes in a row whose ctx_gain (1 - CE at mask rate "
                f"0.1 / CE at 0.9, on the same tokens) exceeds {EXIT_GAIN}; never = still on the plateau at the end. ± is "
                "the standard deviation over seeds; ppl vs AR is exp(nats per token - AR's) with the AR run of the same seed.")
SECTION = "## Leaving the unigram plateau"


def update_doc(doc: Path, block: str, key: str) -> None:
    """Put `block` between the markers of this size and budget (`key`) in `doc`, keeping the notes around them;
    without them, add the marked block at the end of the plateau section (made at the end of `doc` when absent)."""
    begin, end = f"<!-- plateau_study {key}: begin -->", f"<!-- plateau_study {key}: end -->"
    text = doc.read_text(encoding="utf-8") if doc.exists() else "# Results\n"
    marked = f"{begin}\n{block.strip()}\n{end}\n"
    if begin in text and end in text:
        new = text[: text.index(begin)] + marked.rstrip("\n") + text[text.index(end) + len(end):]
    elif SECTION in text:
        after = text.index(SECTION) + len(SECTION)
        cut = text.find("\n## ", after)
        cut = len(text) if cut < 0 else cut + 1
        new = text[:cut].rstrip("\n") + "\n\n" + marked + ("\n" + text[cut:] if cut < len(text) else "")
    else:
        new = text.rstrip("\n") + f"\n\n{SECTION}\n\n" + marked
    tmp = doc.with_name(f".{doc.name}.tmp")
    tmp.write_text(new, encoding="utf-8")
    tmp.replace(doc)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=list(SIZES), default="study", help="model and batch (default study; quick: a smoke run)")
    p.add_argument("--steps", type=int, help="AR steps (default 800, quick 40); every recipe gets the same FLOPs")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    p.add_argument("--corpora", default="stories,tinystories", help="stories, tinystories or both (default both)")
    p.add_argument("--only", help="';'-separated recipes to run (default all; AR always runs)")
    p.add_argument("--val-every", type=int, help="steps between validation passes, where the probe runs (default 50, quick 10)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default; 1 on a shared CPU)")
    p.add_argument("--out", type=Path, default=Path("runs/plateau"))
    p.add_argument("--doc", type=Path, help="Markdown file whose marked plateau block is (re)written")
    return p.parse_args(argv)


def command_line(args: argparse.Namespace) -> str:
    parts = ["python benchmarks/plateau_study.py"] + ([f"--size {args.size}"] if args.size != "study" else [])
    parts += [f"--steps {args.steps}"] if args.steps else []
    parts += [f"--seeds {args.seeds}"] if args.seeds != "0,1,2" else []
    parts += [f"--corpora {args.corpora}"] if args.corpora != "stories,tinystories" else []
    parts += [f'--only "{args.only}"'] if args.only else []
    parts += [f"--val-every {args.val_every}"] if args.val_every else []
    return " ".join(parts + ([f"--threads {args.threads}"] if args.threads else []))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    size, quick = SIZES[args.size], args.size == "quick"
    study = Study(size=size, steps=args.steps or (40 if quick else 800), seeds=[int(s) for s in args.seeds.split(",")],
                  val_every=args.val_every or (10 if quick else 50), threads=args.threads, out=args.out)
    wanted = [n.strip() for n in args.only.split(";")] if args.only else list(RECIPES)
    unknown = [n for n in wanted if n not in RECIPES]
    if unknown:
        print(f"unknown recipe(s) {', '.join(unknown)}; recipes are: {'; '.join(RECIPES)}", file=sys.stderr)
        return 2
    names = ["AR"] + [n for n in wanted if n != "AR"]
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "results.json"
    results = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    save = lambda r: path.write_text(json.dumps(r, indent=1) + "\n", encoding="utf-8")
    sections = [f"Command: `{command_line(args)}` (model: {size['n_layers']} layers x {size['d_model']}, context "
                f"{size['context']}, byte-level BPE {size['vocab']}, batch {size['batch']}; {study.steps} AR steps' "
                f"training FLOPs per run; seeds {args.seeds}; probe every {study.val_every} steps). {PLATEAU_NOTE}", ""]
    for corpus in [c.strip() for c in args.corpora.split(",")]:
        skipped = run_corpus(study, corpus, names, results, save)
        sections += [f"**{corpus}**" + (f": {skipped}" if skipped else ""), ""]
        if not skipped:
            sections += [corpus_table(results, corpus, names, study.seeds), "", verdict(results, corpus, names, study.seeds), ""]
    block = "\n".join(sections)
    print("\n" + block)
    (args.out / "results.md").write_text(block, encoding="utf-8")
    if args.doc:
        update_doc(args.doc, block, f"{args.size} {study.steps}")
        print(f"updated {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
