"""What the multi-seed studies share (compare_objectives.py, compare_processes.py): the seed list, the corpus
files, figures summarised across seeds, the unigram-plateau check, and rewriting a marked block of a Markdown file.

The unigram plateau. A masked (or block) diffusion model can sit for a long time at the loss of a model that
ignores its neighbours: every masked token predicted from the token frequencies alone, so its error does not
depend on the mask rate. Its NELBO is then the cross-entropy of a unigram model. The check here compares the
run's held-out bound with that of a context-free unigram model fitted on the study's training documents of the
same language (add-one smoothing over the tokenizer's vocabulary) and scored on the same held-out tokens:

    below unigram = unigram bits/byte - model bits/byte;   on the plateau  <=>  below unigram < PLATEAU_MARGIN

A model that uses its context must beat the unigram model by more than the margin; the NELBO is an upper bound,
so a model that used context but had a loose bound could be called "on the plateau" too (never the reverse).
"""

from __future__ import annotations

import gzip
import json
import math
import statistics
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable

from sunfish.eval.likelihood import LN2, HeldOut
from sunfish.tokenizer import Tokenizer

CORPORA = Path(__file__).resolve().parents[2] / "shared" / "corpora"
CORPUS_FILES = {"en": "en_tinystories/tinystories_train_head.jsonl", "ru": "ru_tinystories/tinystories_ru.jsonl.gz"}
DEFAULT_SEEDS = "0,1,2"
# bits/byte: about three Monte Carlo standard errors of the studies' bounds (rel_se 1%: ~0.03 bits/byte)
PLATEAU_MARGIN = 0.1


def parse_seeds(text: str) -> list[int]:
    """'0,1,2' -> [0, 1, 2]; a clear error for anything else."""
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise SystemExit(f"--seeds takes comma-separated integers such as 0,1,2, not {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise SystemExit(f"--seeds needs at least one seed and no repeats, not {text!r}")
    return seeds


def corpus_path(corpora: Path, lang: str) -> Path:
    return corpora / CORPUS_FILES[lang]


def read_jsonl(path: Path, limit: int) -> list[str]:
    """The "text" field of the first `limit` lines of a .jsonl or .jsonl.gz file."""
    opener = gzip.open if path.suffix == ".gz" else open
    docs = []
    with opener(path, "rt", encoding="utf-8") as f:
        for line in f:
            docs.append(json.loads(line)["text"])
            if len(docs) == limit:
                break
    return docs


def write_jsonl(path: Path, docs: Iterable[str]) -> None:
    path.write_text("".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs), encoding="utf-8")


# ---- the unigram reference and the plateau check ---------------------------------------------------------

def unigram_bits_per_byte(train_docs: list[str], data: HeldOut, tokenizer: Tokenizer) -> float:
    """Held-out bits per byte of a unigram model: token frequencies of [BOS] doc [EOS] over `train_docs`,
    add-one smoothed over the vocabulary, scoring the tokens `held_out` scores (every window position but the
    first), so the figure is comparable with the models' likelihoods on the same `data`."""
    counts: Counter[int] = Counter()
    for ids in tokenizer.encode_batch(train_docs):
        counts.update(ids)
        counts[tokenizer.bos_id] += 1
        counts[tokenizer.eos_id] += 1
    total, vocab = sum(counts.values()), tokenizer.vocab_size
    nats = 0.0
    for group in data.windows:
        for token, n in Counter(group[:, 1:].reshape(-1).tolist()).items():
            nats -= n * math.log((counts[token] + 1) / (total + vocab))
    return nats / (LN2 * data.bytes)


def below_unigram(model_bpb: float, unigram_bpb: float) -> float:
    """How far the model's held-out bits per byte are below the unigram model's (positive: better)."""
    return unigram_bpb - model_bpb


def on_plateau(model_bpb: float, unigram_bpb: float) -> bool:
    return below_unigram(model_bpb, unigram_bpb) < PLATEAU_MARGIN


# ---- figures across seeds ---------------------------------------------------------------------------------

def gather(by_seed: dict[int, dict], name: str, get: Callable[[dict], float | None]) -> list[float]:
    """The figure `get(row)` of row `name` in every seed that has it (missing or None values left out)."""
    values = []
    for rows in by_seed.values():
        if name in rows and (v := get(rows[name])) is not None and math.isfinite(v):
            values.append(v)
    return values


def spread(values: list[float], fmt: str = ".3f", unit: str = "") -> str:
    """'mean (min-max)' of the values ('2.10x (1.90x-2.30x)' with unit 'x'); one value alone; 'n/a' for none."""
    if not values:
        return "n/a"
    show = lambda v: format(v, fmt) + unit
    mean = show(statistics.fmean(values))
    if len(values) == 1:
        return mean
    return f"{mean} ({show(min(values))}–{show(max(values))})"


def plateau_cells(by_seed: dict[int, dict], name: str, get_bpb: Callable[[dict], float | None],
                  get_unigram: Callable[[dict], float | None], checked: bool) -> list[str]:
    """Two cells: the bits/byte below the unigram model per seed ('0.42 / -0.05 / ...' in seed order) and the
    seeds on the plateau ('0, 2', 'none'; '—' where the row is not checked)."""
    below, stuck = [], []
    for seed, rows in by_seed.items():
        r = rows.get(name)
        bpb, uni = (get_bpb(r), get_unigram(r)) if r else (None, None)
        if bpb is None or uni is None:
            below.append("n/a")
            continue
        below.append(f"{below_unigram(bpb, uni):+.2f}")
        if on_plateau(bpb, uni):
            stuck.append(str(seed))
    if not checked:
        return [" / ".join(below), "—"]
    return [" / ".join(below), ", ".join(stuck) if stuck else "none"]


# ---- the Markdown report ------------------------------------------------------------------------------------

def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}: begin -->", f"<!-- {name}: end -->"


def update_doc(doc: Path, name: str, block: str, title: str) -> None:
    """Put `block` between the `name` markers of `doc` (text around them is kept); without markers, add a
    `title` section holding them at the end. Written atomically."""
    begin, end = markers(name)
    text = doc.read_text(encoding="utf-8") if doc.exists() else "# Results\n"
    marked = f"{begin}\n{block.strip()}\n{end}"
    if begin in text and end in text:
        new = text[: text.index(begin)] + marked + text[text.index(end) + len(end):]
    else:
        new = text.rstrip("\n") + f"\n\n## {title}\n\n" + marked + "\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    tmp = doc.with_name(f".{doc.name}.tmp")
    tmp.write_text(new, encoding="utf-8")
    tmp.replace(doc)


def seeds_line(seeds: list[int]) -> str:
    return (f"Seeds {', '.join(map(str, seeds))} (training and evaluation); each figure is the mean over seeds with "
            "(min–max) beside it. \"below unigram\" is, per seed in that order, how many bits per byte the held-out "
            "English figure is under a context-free unigram model's on the same tokens (the unigram row); a "
            f"diffusion run less than {PLATEAU_MARGIN} bits/byte under it is counted as stuck on the unigram plateau "
            "(benchmarks/multiseed.py).")
