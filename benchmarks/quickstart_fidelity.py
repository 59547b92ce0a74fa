"""Does the quickstart write sentences of its corpus? The quickstart preset trained at several settings and seeds,
each scored by the fraction of its samples' word trigrams that occur in the training corpus (eval/fidelity.py).

    python benchmarks/quickstart_fidelity.py [--seeds 0,1,2] [--variants "bpe 1024;bpe 3072"] [--out runs/qs-fidelity]
        [--steps N] [--samples 6] [--threads 2] [--docs N]

Every variant trains the `quickstart` preset on the built-in corpus the quickstart writes (4,000 English and
Russian stories, seed 0), changed only as its entry in VARIANTS says, for the preset's steps (or --steps); then
`--samples` samples per language (prompts "Once upon a time" / "Жила-была", sample seeds 0..n-1) at each of the
sampler settings in SAMPLERS. Prints one Markdown table (mean over training seeds, min..max) and writes
results.json and results.md under --out (rewritten after every run, so a cut-short study keeps what it finished). A run that stays on the unigram plateau shows as a trigram figure far below the others.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from sunfish.api import load
from sunfish.config import apply_tree, load_preset
from sunfish.data.sources import write_documents
from sunfish.data.synth import generate_stories
from sunfish.eval.fidelity import CorpusNgrams
from sunfish.training.loop import train

PLAIN = {"causal_warmup": 0.0}  # the preset's recipe off: plain masked diffusion in the same layout
# name -> (config overrides of the quickstart preset, tokens through the network per token: block diffusion runs
# the noised and the clean copy together, so it gets half the steps at equal FLOPs)
VARIANTS = {
    "bpe 1024": ({"data": {"bpe_vocab": 1024}, "process": PLAIN, "model": {"layout": "same"}}, 1),
    "bpe 3072": ({"data": {"bpe_vocab": 3072}, "process": PLAIN, "model": {"layout": "same"}}, 1),
    "bpe 3072, block B=4": ({"data": {"bpe_vocab": 3072}, "process": {**PLAIN, "block_size": 4},
                             "model": {"layout": "same", "time_cond": "none"}}, 2),
    # the preset (benchmarks/plateau_study.py's winner): next-token steps for the first 1/8 of the run, shifted layout
    "bpe 3072, causal warm-up, shifted": ({"data": {"bpe_vocab": 3072}, "process": {"causal_warmup": 0.125},
                                           "model": {"layout": "shifted"}}, 1),
}
SAMPLERS = {"t=0.8": {"temperature": 0.8}, "t=0.5": {"temperature": 0.5}, "greedy": {"temperature": 0.0}}
PROMPTS = {"en": "Once upon a time", "ru": "Жила-была"}


def run_variant(name: str, seed: int, corpus: Path, out: Path, steps: int | None, threads: int) -> tuple[Path, float]:
    """Train (or reuse) one run of the quickstart preset under variant `name` and training seed `seed`."""
    overrides, factor = VARIANTS[name]
    preset = load_preset("quickstart")
    tree = {**overrides, "train": {"seed": seed, "threads": threads, "steps": (steps or preset.train.steps) // factor}}
    cfg = apply_tree(preset, tree)
    run = out / f"{name.replace(' ', '_').replace(',', '').replace('=', '')}-seed{seed}"
    start = time.perf_counter()
    train(cfg, run_dir=run, data=[str(corpus)], resume=True, progress=False, log=lambda s: None)
    return run, time.perf_counter() - start


def score(run: Path, index: CorpusNgrams, samples: int) -> dict[str, dict[str, float]]:
    """sampler -> language -> trigram fraction over `samples` samples of the preset's length."""
    model = load(run, device="cpu")
    return {sampler: {lang: index.overlap([model.generate(prompt, seed=i, **settings).text for i in range(samples)],
                                          3).fraction
                      for lang, prompt in PROMPTS.items()}
            for sampler, settings in SAMPLERS.items()}


def spread(values: list[float]) -> str:
    return f"{statistics.mean(values):.2f} ({min(values):.2f}..{max(values):.2f})"


def table(results: dict) -> str:
    lines = ["| setting | sampler | seeds | English trigrams in corpus | Russian trigrams in corpus | train s |",
             "|---|---|---:|---:|---:|---:|"]
    for name, runs in results.items():
        for sampler in SAMPLERS:
            en = [r["scores"][sampler]["en"] for r in runs]
            ru = [r["scores"][sampler]["ru"] for r in runs]
            secs = statistics.median(r["seconds"] for r in runs)
            lines.append(f"| {name} | {sampler} | {len(runs)} | {spread(en)} | {spread(ru)} | {secs:.0f} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--variants", default="bpe 1024;bpe 3072", help=f"';'-separated names of: {'; '.join(VARIANTS)}")
    p.add_argument("--out", type=Path, default=Path("runs/qs-fidelity"))
    p.add_argument("--steps", type=int, help="training steps (default: the preset's)")
    p.add_argument("--samples", type=int, default=6)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--docs", type=int, help="stories in the corpus (default: the preset's)")
    args = p.parse_args()
    names = [v.strip() for v in args.variants.split(";") if v.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown or not names:
        print(f"--variants names {unknown or 'nothing'}; choose from: {'; '.join(VARIANTS)}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    stories = generate_stories("both", args.docs or load_preset("quickstart").data.synth_docs, 0)
    corpus = args.out / "corpus.txt"
    write_documents(corpus, stories)
    index = CorpusNgrams(stories)
    results: dict[str, list[dict]] = {}
    for name in names:
        for seed in (int(s) for s in args.seeds.split(",")):
            run, seconds = run_variant(name, seed, corpus, args.out, args.steps, args.threads)
            results.setdefault(name, []).append({"seed": seed, "seconds": seconds, "scores": score(run, index, args.samples)})
            print(f"{name} seed {seed}: {json.dumps(results[name][-1]['scores'])}", flush=True)
            (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
            (args.out / "results.md").write_text(table(results) + "\n", encoding="utf-8")  # so far
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
