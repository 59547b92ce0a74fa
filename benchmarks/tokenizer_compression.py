"""Tokenizer compression: an English-only BPE, the same extended with Russian tokens, and a bilingual BPE.

    python benchmarks/tokenizer_compression.py [--base 49152] [--add 4096] [--ru-train-mb 20]

The DLLM-RU plan: a base vocabulary plus a few thousand Russian tokens (49,152 + 4,096 = the 53,248 of
the dllm-ru-300m preset). Trains, on ../shared/corpora:
- `en-bpe`: byte-level BPE of --base tokens on English books (Gutenberg classics, children's classics,
  Shakespeare);
- `en-bpe+ru`: `en-bpe` extended (`sunfish.tokenizer.extend`) with --add tokens learned from Russian
  (the first --ru-train-mb MB of Russian classics and Russian TinyStories);
- `bilingual`: for reference, a BPE of --base + --add tokens trained from scratch on both.
and measures tokens per word and characters per token on text none of them was trained on: English
TinyStories, the English and Russian sides of NTREX-128 (news) and Tatoeba, the last 2,255 Russian
TinyStories and the last 20 Russian classics. Targets (issue 3): Russian tokens per word at least 30%
below `en-bpe`, English tokens per word at most 2% above it.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import itertools
import json
import sys
import time
from pathlib import Path

from sunfish.tokenizer import train_bpe_tokenizer
from sunfish.tokenizer.extend import extend_tokenizer
from sunfish.tokenizer.stats import compression_table

CORPORA = Path(__file__).resolve().parents[2] / "shared" / "corpora"
RU_STORIES_HELD_OUT = 24000  # Russian TinyStories from this index on are never trained on (2,255 stories)
RU_CLASSICS_HELD_OUT = 202  # nor the works from this index on (the last 20)


def jsonl(path: Path, start: int = 0, stop: int | None = None) -> list[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in itertools.islice(f, start, stop)]


def tsv_column(path: Path, column: str) -> list[str]:
    with path.open(encoding="utf-8", newline="") as f:
        return [row[column] for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]


def take_mb(texts: list[str], mb: float) -> list[str]:
    out, size = [], 0
    for text in texts:
        if size >= mb * 1e6:
            break
        out.append(text)
        size += len(text.encode("utf-8"))
    return out


def corpora(ru_train_mb: float) -> tuple[list[str], list[str], dict[str, list[str]]]:
    english = (jsonl(CORPORA / "en_gutenberg_classics/en_gutenberg_classics.jsonl.gz")
               + jsonl(CORPORA / "en_children_pd/en_children_pd.jsonl")
               + [(CORPORA / "en_shakespeare/tinyshakespeare.txt").read_text(encoding="utf-8")])
    ru_classics = jsonl(CORPORA / "ru_classics/ru_classics.jsonl.gz")
    ru_stories = jsonl(CORPORA / "ru_tinystories/tinystories_ru.jsonl.gz")
    mixed = [t for pair in itertools.zip_longest(ru_classics[:RU_CLASSICS_HELD_OUT], ru_stories[:RU_STORIES_HELD_OUT])
             for t in pair if t]
    russian = take_mb(mixed, ru_train_mb)
    held_out = {
        "en: TinyStories": jsonl(CORPORA / "en_tinystories/tinystories_train_head.jsonl"),
        "en: NTREX news": tsv_column(CORPORA / "parallel_en_ru_ntrex128/ntrex128_en_ru.tsv", "en"),
        "en: Tatoeba": tsv_column(CORPORA / "parallel_en_ru_tatoeba/tatoeba_en_ru.tsv", "en"),
        "ru: TinyStories": ru_stories[RU_STORIES_HELD_OUT:],
        "ru: classics": ru_classics[RU_CLASSICS_HELD_OUT:],
        "ru: NTREX news": tsv_column(CORPORA / "parallel_en_ru_ntrex128/ntrex128_en_ru.tsv", "ru"),
        "ru: Tatoeba": tsv_column(CORPORA / "parallel_en_ru_tatoeba/tatoeba_en_ru.tsv", "ru"),
    }
    held_out["en: all"] = [t for k, v in held_out.items() if k.startswith("en:") for t in v]
    held_out["ru: all"] = [t for k, v in held_out.items() if k.startswith("ru:") and k != "ru: all" for t in v]
    return english, russian, held_out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=int, default=49152, help="English-only BPE size (tokens)")
    parser.add_argument("--add", type=int, default=4096, help="Russian tokens added by extension")
    parser.add_argument("--ru-train-mb", type=float, default=20.0, help="MB of Russian text to learn the new tokens from")
    args = parser.parse_args()
    if not CORPORA.exists():
        sys.exit("this benchmark needs ../shared/corpora")
    english, russian, held_out = corpora(args.ru_train_mb)
    mb = lambda texts: sum(len(t.encode("utf-8")) for t in texts) / 1e6
    print(f"training text: English {mb(english):.1f} MB, Russian {mb(russian):.1f} MB; held-out sets: "
          + ", ".join(f"{k} {mb(v):.2f} MB" for k, v in held_out.items() if not k.endswith("all")))
    start = time.perf_counter()
    base = train_bpe_tokenizer(english, args.base)
    print(f"en-bpe: {base.vocab_size:,} tokens in {time.perf_counter() - start:.0f} s")
    start = time.perf_counter()
    extended = extend_tokenizer(base, russian, args.add)
    print(f"en-bpe+ru: +{extended.added:,} tokens ({extended.merges_appended:,} merges) in {time.perf_counter() - start:.0f} s")
    start = time.perf_counter()
    bilingual = train_bpe_tokenizer(english + russian, args.base + args.add)
    print(f"bilingual: {bilingual.vocab_size:,} tokens in {time.perf_counter() - start:.0f} s\n")
    named = {"en-bpe": base, "en-bpe+ru": extended.tokenizer, "bilingual": bilingual}
    table, results = compression_table(named, held_out)
    print(table)
    ru, en = results["ru: all"], results["en: all"]
    ru_change = ru["en-bpe+ru"].tokens_per_word / ru["en-bpe"].tokens_per_word - 1
    en_change = en["en-bpe+ru"].tokens_per_word / en["en-bpe"].tokens_per_word - 1
    print(f"\nRussian tokens per word {100 * ru_change:+.1f}% (target <= -30%), "
          f"English {100 * en_change:+.2f}% (target <= +2%)")


if __name__ == "__main__":
    main()
