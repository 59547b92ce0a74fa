"""The embedded default job: make the built-in corpus, train a small model, show what it learned."""

from __future__ import annotations

from pathlib import Path

from sunfish.api import load, train
from sunfish.checkpoint.files import list_checkpoints, read_state
from sunfish.config import RunConfig, apply_tree, load_preset
from sunfish.data.sources import write_documents
from sunfish.data.synth import generate_stories
from sunfish.eval.fidelity import CorpusNgrams, Overlap

PRESET = "quickstart"
# (language, prompt): two samples each; the trigram figure is over the printed samples of each language
PROMPTS = [("English", "Once upon a time"), ("English", "One day"), ("Russian", "Жила-была"), ("Russian", "Однажды")]
INFILL = "Once upon a time, there was a little [MASK:2] named Max. He loved to [MASK:4] in the park."


def _train_or_reuse(cfg: RunConfig, run_dir: Path, corpus: Path, log) -> Path:
    """Train (continuing an interrupted quickstart), or reuse a run that already reached its steps."""
    found = list_checkpoints(run_dir)
    if found and read_state(found[-1]).step >= cfg.train.steps:
        log(f"'{run_dir}' is already trained ({found[-1].name}); sampling from it")
        return found[-1]
    result = train(cfg, out=run_dir, data=[str(corpus)], resume=True, log=log)
    val = f"; val loss {result.final_val_loss:.3f}" if result.final_val_loss is not None else ""
    log(f"trained {result.parameters:,} parameters in {result.seconds:.0f} s{val}")
    return result.checkpoint


def show_samples(model, index: CorpusNgrams, trace: Path, log) -> dict[str, Overlap]:
    """Print a sample for each of PROMPTS (the first one traced into `trace`); per language, how many of the
    samples' word trigrams occur in the training corpus (eval/fidelity.py)."""
    texts: dict[str, list[str]] = {}
    for i, (language, prompt) in enumerate(PROMPTS):
        g = model.generate(prompt, seed=i, trace=trace if i == 0 else None)
        texts.setdefault(language, []).append(g.text)
        log(f"\n--- {language} (seed {i}, {g.steps} steps, {g.tokens_per_s:.0f} tokens/s) ---\n{g.text}")
    log("")
    return {language: index.overlap(samples, 3) for language, samples in texts.items()}


def run_quickstart(out: Path, steps: int | None = None, log=print) -> None:
    """Write corpus.txt, train into out/run, then print samples, an infill and write out/trace.gif."""
    cfg = load_preset(PRESET)
    if steps is not None:
        cfg = apply_tree(cfg, {"train": {"steps": steps}})
    corpus = out / "corpus.txt"
    stories = generate_stories(cfg.data.synth_lang, cfg.data.synth_docs, cfg.train.seed)
    n = write_documents(corpus, stories)
    log(f"built-in corpus: {n} English and Russian stories in {corpus}")
    checkpoint = _train_or_reuse(cfg, out / "run", corpus, log)
    model = load(checkpoint, device=cfg.train.device)
    for language, overlap in show_samples(model, CorpusNgrams(stories), out / "trace.gif", log).items():
        log(f"{language}: {overlap}")
    filled = model.infill(INFILL, steps=6, temperature=0.0, seed=0)  # greedy, one token per step
    log(f"\n--- infill ---\n{INFILL}\n-> {filled.text}")
    log(f"\ndenoising trace: {out / 'trace.gif'}; checkpoint: {checkpoint}")
    log(f"try: sunfish sample {out / 'run'} --prompt \"Once upon a time\" --temperature 0.5")
