"""Exact and near-duplicate detection.

Exact: a 16-byte BLAKE2b digest of the normalised text (`Words.exact_key`) in a set; the first document
with a key is kept, later ones are duplicates.

Near: MinHash over the set of word n-grams (shingles; 5 words by default, as in Gopher/FineWeb) estimates
the Jaccard similarity J(A, B) = |A & B| / |A | B| of two documents' shingle sets (Broder 1997). The
signatures go into a `datasketch.MinHashLSH` index with b bands of r rows chosen by datasketch for the
threshold t, so a pair with similarity s collides in at least one band with probability
1 - (1 - s^r)^b (Leskovec, Rajaraman & Ullman, Mining of Massive Datasets, ch. 3). A document that
collides with an earlier kept document is a near-duplicate. Workers compute signatures (numpy, per
document); the single index lives in the main process, so decisions follow the input order exactly.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from sunfish.config import Section, knob
from sunfish.data.words import Words

_SCHEME = "affine32"  # datasketch >= 2.0: bijective 32-bit permutations, uint32 signatures
_BLOCK_ROWS = 1024  # shingles per block: a (rows, num_perm) uint32 temporary of 512 KB, cache-sized


@dataclass(frozen=True, kw_only=True)
class DedupConfig(Section):
    SECTION = "dedup"

    exact: bool = knob(True, "drop documents whose normalised text was seen before")
    minhash: bool = knob(True, "drop near-duplicates found by MinHash LSH")
    threshold: float = knob(0.8, "Jaccard similarity of shingle sets at which documents count as near-duplicates, (0, 1)", lo=0.05, hi=0.99)
    num_perm: int = knob(128, "MinHash permutations (signature length); more is more precise and slower", lo=16, hi=1024)
    shingle_words: int = knob(5, "words per shingle", lo=1, hi=32)
    seed: int = knob(1, "seed of the MinHash permutations")


@functools.lru_cache(maxsize=4)
def _permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(a, b): (num_perm,) uint32 each, datasketch's affine32 permutations h -> a * h + b mod 2^32 for `seed`."""
    from datasketch import MinHash

    a, b = MinHash(num_perm=num_perm, seed=seed, scheme=_SCHEME).permutations
    return a.astype(np.uint32), b.astype(np.uint32)


def _fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finalizer, the bijection datasketch's affine32 scheme applies to each input first."""
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)  # uint32 arrays wrap around: the arithmetic is mod 2^32 by design
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def minhash_signature(words: Words, cfg: DedupConfig) -> np.ndarray | None:
    """(num_perm,) uint32 MinHash of the document's word-shingle set; None for a document without words.

    A document shorter than one shingle is hashed as the single shingle of all its words. Shingle hashes
    are 64-bit polynomial hashes of word hashes folded to 32 bits, the input width of the affine32 scheme.
    The signature is datasketch's `MinHash(scheme="affine32").update_batch(shingles)`, value for value
    (a test checks it): signature_k = min over shingles s of a_k * fmix32(s) + b_k mod 2^32, computed
    here in blocks of shingles without datasketch's per-value Python conversions (2x faster).
    """
    if len(words) == 0:
        return None
    shingles = words.ngram_hashes(min(cfg.shingle_words, len(words)))  # (S,) uint64
    mixed = _fmix32((((shingles >> np.uint64(32)) ^ shingles) & np.uint64(0xFFFFFFFF)).astype(np.uint32))  # (S,)
    a, b = _permutations(cfg.num_perm, cfg.seed)  # (P,) each
    signature = np.full(cfg.num_perm, np.iinfo(np.uint32).max, np.uint32)  # (P,)
    block = np.empty((min(_BLOCK_ROWS, len(mixed)), cfg.num_perm), np.uint32)  # (rows, P), reused
    for start in range(0, len(mixed), _BLOCK_ROWS):
        values = mixed[start : start + _BLOCK_ROWS, None]  # (rows, 1)
        rows = block[: len(values)]
        np.multiply(values, a, out=rows)
        rows += b
        np.minimum(signature, rows.min(axis=0), out=signature)
    return signature


class ExactIndex:
    """The set of exact-dedup keys seen so far (about 80 bytes of memory per distinct document)."""

    def __init__(self) -> None:
        self._seen: set[bytes] = set()

    def check_and_add(self, key: bytes) -> bool:
        """True if `key` was seen before; otherwise remember it and return False."""
        if key in self._seen:
            return True
        self._seen.add(key)
        return False

    def __len__(self) -> int:
        return len(self._seen)


class NearDuplicateIndex:
    """A MinHash LSH index of the kept documents (about 3 KB of memory per document with the defaults)."""

    def __init__(self, cfg: DedupConfig) -> None:
        from datasketch import MinHashLSH

        self.cfg = cfg
        self._lsh = MinHashLSH(threshold=cfg.threshold, num_perm=cfg.num_perm)
        self._count = 0

    @property
    def bands(self) -> tuple[int, int]:
        """(b, r): bands and rows per band that datasketch chose for the threshold."""
        return self._lsh.b, self._lsh.r

    def check_and_add(self, signature: np.ndarray) -> bool:
        """True if a document similar to `signature` was indexed before; otherwise index it and return False."""
        from datasketch import LeanMinHash

        sketch = LeanMinHash(seed=self.cfg.seed, hashvalues=signature, scheme=_SCHEME)
        if self._lsh.query(sketch):
            return True
        self._lsh.insert(self._count, sketch, check_duplication=False)
        self._count += 1
        return False

    def __len__(self) -> int:
        return self._count
