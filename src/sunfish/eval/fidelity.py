"""Corpus fidelity: how much of a sample is made of the training corpus's own word n-grams.

A model that has learned a small corpus writes its phrases; one on the unigram plateau writes its words in
random order. The figure is the fraction of the sample's word n-grams (lower-cased; words and punctuation
marks are separate tokens, so "time," gives "time" and ",") that occur anywhere in the corpus. n-grams are
taken within a sample, across line breaks; a sample shorter than n words has none and is left out.
The quickstart prints it for n = 3 beside its samples (issue 17 asks for >= 0.80).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

WORD = re.compile(r"\w+|[^\w\s]")


def words(text: str) -> list[str]:
    """Lower-cased words and punctuation marks of `text`, in order."""
    return WORD.findall(text.lower())


def ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


class CorpusNgrams:
    """The set of word n-grams (n = 1..max_n) of a corpus, for membership tests."""

    def __init__(self, texts: Iterable[str], max_n: int = 3):
        self.max_n = max_n
        self.seen: set[tuple[str, ...]] = set()
        for text in texts:
            tokens = words(text)
            for n in range(1, max_n + 1):
                self.seen.update(ngrams(tokens, n))

    def overlap(self, texts: Iterable[str], n: int = 3) -> "Overlap":
        """The fraction of the n-grams of `texts` (pooled) found in the corpus."""
        if not 1 <= n <= self.max_n:
            raise ValueError(f"n = {n} is outside 1..{self.max_n}, the n-gram orders this corpus index holds")
        grams = [g for text in texts for g in ngrams(words(text), n)]
        found = sum(g in self.seen for g in grams)
        return Overlap(n=n, found=found, total=len(grams))


@dataclass(frozen=True)
class Overlap:
    n: int
    found: int
    total: int

    @property
    def fraction(self) -> float:
        return self.found / self.total if self.total else 0.0

    def __str__(self) -> str:
        return f"{self.fraction:.2f} of {self.total} word {self.n}-grams occur in the training corpus"
