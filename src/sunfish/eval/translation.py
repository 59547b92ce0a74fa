"""Translation prompts: few-shot prompts from a parallel English-Russian TSV, scored with BLEU and chrF.

The file has a header row with columns `en` and `ru` (optionally `ru_alternatives`: more Russian
references joined with ' ||| ', used as extra references for en-ru). A seeded sample of pairs is
prompted as
    English: <shot source>\nRussian: <shot target>\n\n ... English: <source>\nRussian:
with as many shots (at most MAX_SHOTS, drawn from other pairs) as fit the model's context; the
generation is cut at the first newline and scored with sacrebleu's corpus BLEU and chrF.
"""

from __future__ import annotations

import csv
import dataclasses
import random
from dataclasses import dataclass
from pathlib import Path

from typing import TYPE_CHECKING

from sunfish.config import EvalConfig

if TYPE_CHECKING:
    from sunfish.loading import LoadedModel

MAX_SHOTS = 2  # examples in front of each prompt (fewer when they do not fit the context)
NAMES = {"en": "English", "ru": "Russian"}
ALTERNATIVES = " ||| "


class TranslationError(ValueError):
    """A problem with the parallel file or the direction; the message is one sentence."""


class TranslationUnsupported(ValueError):
    """The model cannot be prompted with these pairs (context too short, script unknown to its tokenizer)."""


@dataclass(frozen=True)
class Pair:
    source: str
    references: list[str]  # first the main reference, then alternatives


@dataclass(frozen=True)
class TranslationResult:
    direction: str
    pairs: int  # pairs scored
    pairs_skipped: int  # pairs whose prompt did not fit the context or the tokenizer
    bleu: float
    chrf: float
    examples: list[dict]  # a few {source, reference, output}

    def as_json(self) -> dict:
        return dataclasses.asdict(self)


def read_pairs(path: str | Path, direction: str) -> list[Pair]:
    """Pairs from a TSV with `en` and `ru` columns, oriented by `direction` ('en-ru' or 'ru-en')."""
    src, dash, tgt = direction.partition("-")
    if not dash or {src, tgt} != {"en", "ru"}:
        raise TranslationError(f"unknown translation direction '{direction}'; use en-ru or ru-en")
    path = Path(path)
    try:
        with path.open(encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    except (OSError, UnicodeDecodeError) as err:
        raise TranslationError(f"cannot read the parallel file '{path}' ({err}); pass a UTF-8 TSV with en and ru columns") from None
    if not rows or not {"en", "ru"} <= set(rows[0]):
        raise TranslationError(f"'{path}' needs a header row with 'en' and 'ru' columns (tab-separated)")
    pairs = []
    for row in rows:
        source, target = (row.get(src) or "").strip(), (row.get(tgt) or "").strip()
        if not source or not target:
            continue
        refs = [target]
        if tgt == "ru" and row.get("ru_alternatives"):
            refs += [a.strip() for a in row["ru_alternatives"].split(ALTERNATIVES) if a.strip()]
        pairs.append(Pair(source, refs))
    if len(pairs) < 2:
        raise TranslationError(f"'{path}' holds fewer than 2 usable sentence pairs")
    return pairs


def build_prompt(shots: list[Pair], pair: Pair, direction: str) -> str:
    src, tgt = (NAMES[k] for k in direction.split("-"))
    parts = [f"{src}: {s.source}\n{tgt}: {s.references[0]}\n\n" for s in shots]
    return "".join(parts) + f"{src}: {pair.source}\n{tgt}:"


def score(outputs: list[str], references: list[list[str]]) -> tuple[float, float]:
    """Corpus BLEU and chrF (sacrebleu, 0-100) of outputs against one or more references per output."""
    import sacrebleu

    width = max(len(r) for r in references)
    streams = [[r[k] if k < len(r) else r[0] for r in references] for k in range(width)]  # sacrebleu: one list per reference set
    return sacrebleu.corpus_bleu(outputs, streams).score, sacrebleu.corpus_chrf(outputs, streams).score


def _fit_prompt(tok, context: int, pairs: list[Pair], pool: list[int], i: int, pair: Pair, direction: str):
    """(prompt with as many shots as fit, output length), or (None, 0) when even zero shots do not fit."""
    length = min(context // 2, 2 * len(tok.encode(pair.references[0])) + 8)
    for n_shots in range(MAX_SHOTS, -1, -1):
        shots = [pairs[pool[(i * MAX_SHOTS + k) % len(pool)]] for k in range(n_shots)]
        prompt = build_prompt(shots, pair, direction)
        if 1 + len(tok.encode(prompt)) + length <= context:
            return prompt, length
    return None, 0


def translation_suite(loaded: LoadedModel, parallel: str | Path, cfg: EvalConfig, log=print) -> TranslationResult:
    """Prompt `cfg.translation_pairs` seeded pairs and score the outputs."""
    from sunfish.sample.text import generate

    pairs = read_pairs(parallel, cfg.translation_direction)
    rng = random.Random(cfg.seed)
    order = rng.sample(range(len(pairs)), len(pairs))
    tests, pool = order[: cfg.translation_pairs], order[cfg.translation_pairs :] or order
    tok, context = loaded.tokenizer, loaded.cfg.model.context
    outputs, refs, examples, skipped = [], [], [], 0
    for i, index in enumerate(tests):
        pair = pairs[index]
        try:
            prompt, length = _fit_prompt(tok, context, pairs, pool, i, pair, cfg.translation_direction)
        except ValueError:  # a character tokenizer without this script
            prompt = None
        if prompt is None:
            skipped += 1
            continue
        sampler = dataclasses.replace(loaded.cfg.sampler, length=length, steps=length, temperature=0.0, block_length=0)
        text = generate(loaded, prompt, sampler, seed=cfg.seed + i).text[len(prompt):]
        output = text.strip().split("\n")[0].strip()
        outputs.append(output)
        refs.append(pair.references)
        if len(examples) < 3:
            examples.append({"source": pair.source, "reference": pair.references[0], "output": output})
    if not outputs:
        raise TranslationUnsupported(f"no translation prompt fits the model (context of {context} tokens, or text its "
                                     "tokenizer cannot encode); use a model trained on both languages with a longer context")
    bleu, chrf = score(outputs, refs)
    log(f"  {cfg.translation_direction}: BLEU {bleu:.2f}, chrF {chrf:.2f} over {len(outputs)} pairs ({skipped} too long)")
    return TranslationResult(direction=cfg.translation_direction, pairs=len(outputs), pairs_skipped=skipped, bleu=bleu,
                             chrf=chrf, examples=examples)
