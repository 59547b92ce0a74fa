"""The normalised word view of a document, computed once and shared by deduplication and quality rules.

Normalisation (what makes two documents "the same text"): Unicode NFKC, lower case, every run of
characters that are neither word characters (`\\w`: letters, digits, '_') nor whitespace replaced by a
space, then split on whitespace. Two documents that differ only in case, punctuation, spacing or Unicode
compatibility forms get the same words, hence the same exact-dedup key.

Word hashes are 64-bit xxh3 values, stable across processes and runs (Python's `hash` is salted per
process, so it cannot be used for keys that workers compute independently).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass

import numpy as np
import xxhash

# Everything that is not a word character or ASCII whitespace becomes a space (Unicode spaces included),
# so str.split() and bytes.split() cut the normalised text at the same places.
_NON_WORD = re.compile(r"[^\w \t\n\r\f\v]+")
_NGRAM_BASE = np.uint64(0x9E3779B97F4A7C15)  # odd multiplier of the polynomial n-gram hash (golden-ratio constant)


def normalise(text: str) -> str:
    """NFKC, lower case, punctuation, symbols and non-ASCII spaces replaced by spaces (not collapsed)."""
    if not unicodedata.is_normalized("NFKC", text):
        text = unicodedata.normalize("NFKC", text)
    return _NON_WORD.sub(" ", text.lower())


@dataclass(frozen=True)
class Words:
    """A document as normalised words with per-word hashes and lengths."""

    words: list[str]  # normalised words, in order
    hashes: np.ndarray  # (W,) uint64, xxh3-64 of each word's UTF-8 bytes
    lengths: np.ndarray  # (W,) int64, characters per word

    @classmethod
    def of(cls, text: str) -> "Words":
        norm = normalise(text)
        words = norm.split()
        hashes = np.fromiter(map(xxhash.xxh3_64_intdigest, norm.encode("utf-8").split()), np.uint64)
        assert len(hashes) == len(words), "str.split and bytes.split disagree on the normalised text"
        lengths = np.fromiter(map(len, words), np.int64, len(words))
        return cls(words=words, hashes=hashes, lengths=lengths)

    def __len__(self) -> int:
        return len(self.words)

    def exact_key(self) -> bytes:
        """16-byte BLAKE2b digest of the normalised text: equal keys mean equal documents up to normalisation."""
        return hashlib.blake2b(" ".join(self.words).encode("utf-8"), digest_size=16).digest()

    def ngram_hashes(self, n: int) -> np.ndarray:
        """(W - n + 1,) uint64 hashes of the word n-grams: h = sum_k hash(w_{i+k}) * B^(n-1-k) mod 2^64."""
        count = len(self.words) - n + 1
        if count <= 0:
            return np.zeros(0, np.uint64)
        acc = self.hashes[:count].copy()
        for k in range(1, n):
            acc *= _NGRAM_BASE  # uint64 arrays wrap around: the arithmetic is mod 2^64 by design
            acc += self.hashes[k : k + count]
        return acc

    def ngram_lengths(self, n: int) -> np.ndarray:
        """(W - n + 1,) characters in each word n-gram (spaces between words not counted)."""
        count = len(self.words) - n + 1
        if count <= 0:
            return np.zeros(0, np.int64)
        csum = np.concatenate([[0], np.cumsum(self.lengths)])
        return csum[n : n + count] - csum[:count]
