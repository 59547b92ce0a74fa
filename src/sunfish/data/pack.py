"""Packing: tokenize documents in worker processes and write fixed-length sequences to token shards.

Each document becomes [BOS] tokens [EOS]; documents are concatenated and cut into sequences of exactly
`seq_len` tokens, so a document may continue into the next sequence and no position is padding. The
tokens of a stream that do not fill a last whole sequence are dropped (fewer than `seq_len` per stream
and split; the manifest counts them).

A shard is a headerless little-endian array of uint16 (vocabularies up to 65,536 ids) or uint32,
shape (sequences, seq_len), read with `numpy.memmap`; its dtype, shape and SHA-256 are in the manifest.
Shards are written under a hidden temporary name and renamed when complete, so a killed run never
leaves a partial file under a shard's name. The split into train and validation is by document: a
document goes to validation when a hash of its normalised text (and the seed) falls below
`val_fraction`, which is deterministic and independent of order and of the number of workers.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sunfish.config import Section, knob
from sunfish.tokenizer.fast import LINE_CUT, PieceEncoder


@dataclass(frozen=True, kw_only=True)
class PackConfig(Section):
    SECTION = "pack"

    seq_len: int = knob(2048, "tokens per packed sequence", lo=2)
    val_fraction: float = knob(0.01, "documents held out for validation, [0, 0.5]", lo=0.0, hi=0.5)
    seed: int = knob(0, "seeds the document split (and the sampler's order when training)")
    shard_tokens: int = knob(1 << 24, "tokens per shard file, rounded down to whole sequences (32 MB of uint16)", lo=2)


def is_validation(key: bytes, val_fraction: float, seed: int) -> bool:
    """Deterministic split by document: hash(key, seed) / 2^64 < val_fraction."""
    digest = hashlib.blake2b(key, digest_size=8, key=seed.to_bytes(8, "little", signed=True)).digest()
    return int.from_bytes(digest, "little") < val_fraction * 2.0**64


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def splits_exactly(backend) -> bool:
    """True when encoding a text cut before each newline that follows a non-space gives the ids of the whole.

    Encoding a 1 MB book as one string is ~1.5x slower in `tokenizers` than encoding its lines. The cut is
    exact for GPT-2-style byte-level BPE (what `train_bpe_tokenizer` builds): no normalizer, a ByteLevel
    pre-tokenizer with its own regex and no prefix space, and no added token that spans such a cut. That
    regex has no look-behind and no alternative that runs from a non-space character into a newline, so
    a piece always ends where the newline starts and the pieces after it do not depend on what came before.
    Other tokenizers (Metaspace, normalizers, Llama-3's regex, whose punctuation pieces absorb newlines)
    are encoded whole.
    """
    spec = json.loads(backend.to_str())
    pre = spec.get("pre_tokenizer") or {}
    if spec.get("normalizer") is not None or pre.get("type") != "ByteLevel":
        return False
    if not pre.get("use_regex", True) or pre.get("add_prefix_space", False):
        return False
    return not any(LINE_CUT.search(t["content"]) for t in spec.get("added_tokens", []) if not t.get("special"))


def _load_backend(tokenizer_file: str):
    """(backend, bos id, eos id, splits_exactly): the tokenizer of a worker, read once per process and file
    version (the Rust object does not pickle; a file rewritten at the same path is read again)."""
    return _read_backend(tokenizer_file, *_version(tokenizer_file))


def _load_encoder(tokenizer_file: str) -> PieceEncoder | None:
    """The worker's cached piece encoder, or None when the tokenizer is not one it encodes exactly."""
    return _build_encoder(tokenizer_file, *_version(tokenizer_file))


def _version(path: str) -> tuple[int, int]:
    stat = os.stat(path)
    return stat.st_mtime_ns, stat.st_size


@functools.lru_cache(maxsize=2)
def _read_backend(tokenizer_file: str, mtime_ns: int, size: int):
    import tokenizers

    backend = tokenizers.Tokenizer.from_file(tokenizer_file)
    backend.encode_special_tokens = True  # literal "[EOS]" in a document stays text
    return backend, backend.token_to_id("[BOS]"), backend.token_to_id("[EOS]"), splits_exactly(backend)


@functools.lru_cache(maxsize=2)
def _build_encoder(tokenizer_file: str, mtime_ns: int, size: int) -> PieceEncoder | None:
    backend = _read_backend(tokenizer_file, mtime_ns, size)[0]
    return PieceEncoder(backend) if PieceEncoder.supports(backend) else None


def encode_documents(backend, texts: list[str], split: bool) -> list[list[int]]:
    """Token ids of each text with the tokenizers library, encoding cut pieces in one batch when `split`
    (see `splits_exactly`); the reference that `tokenize_chunk`'s piece cache reproduces."""
    if not split:
        return [e.ids for e in backend.encode_batch(texts, add_special_tokens=False)]
    pieces = [LINE_CUT.split(text) for text in texts]
    encoded = iter(backend.encode_batch([p for parts in pieces for p in parts], add_special_tokens=False))
    return [[i for _ in parts for i in next(encoded).ids] for parts in pieces]


def tokenize_chunk(tokenizer_file: str, texts: list[str]) -> np.ndarray:
    """(T,) uint32 tokens of the chunk, each document wrapped as [BOS] ... [EOS].

    GPT-2-style byte-level BPE (what `train_bpe_tokenizer` builds) goes through the piece cache of
    `sunfish.tokenizer.fast`, 4-5x faster than the library and id for id the same; other tokenizers
    through the library.
    """
    backend, bos, eos, split = _load_backend(tokenizer_file)
    encoder = _load_encoder(tokenizer_file)
    if encoder is not None:
        bos_eos = np.array([bos, eos], np.uint32).tobytes()
        packed = b"".join(part for text in texts for part in (bos_eos[:4], encoder.packed(text), bos_eos[4:]))
        return np.frombuffer(packed, np.uint32)  # read-only
    encoded = encode_documents(backend, texts, split)
    out = np.empty(sum(len(ids) + 2 for ids in encoded), np.uint32)  # (T,)
    at = 0
    for ids in encoded:
        out[at] = bos
        out[at + 1 : at + 1 + len(ids)] = ids
        out[at + 1 + len(ids)] = eos
        at += len(ids) + 2
    return out


@dataclass
class ShardInfo:
    file: str  # path relative to the output folder
    sequences: int
    sha256: str


@dataclass
class StreamSplit:
    """What was written for one stream and split."""

    documents: int = 0
    tokens: int = 0  # tokens in whole sequences (written)
    dropped_tokens: int = 0  # the last partial sequence's tokens, not written
    shards: list[ShardInfo] = field(default_factory=list)

    @property
    def sequences(self) -> int:
        return sum(s.sequences for s in self.shards)


class ShardWriter:
    """Appends tokens and writes whole sequences to shards `<prefix>-NNNNN.bin` under `folder`.

    Subclasses change the shard's layout through `SUFFIX`, `_write_rows`, `_end_file` and `_digest`
    (`sunfish.data.tarshards.TarShardWriter` writes one tar member per sequence)."""

    SUFFIX = ".bin"

    def __init__(self, root: Path, prefix: str, seq_len: int, shard_tokens: int, dtype: np.dtype):
        self.root, self.prefix, self.seq_len, self.dtype = root, prefix, seq_len, dtype
        self.per_shard = max(1, shard_tokens // seq_len)  # sequences per shard
        self.result = StreamSplit()
        self._carry = np.zeros(0, dtype)  # (< seq_len,) tokens waiting for a whole sequence
        self._file = None
        self._hash = None
        self._in_shard = 0  # sequences written to the open shard

    def append(self, tokens: np.ndarray, documents: int) -> None:
        self.result.documents += documents
        data = np.concatenate([self._carry, tokens.astype(self.dtype, copy=False)])
        whole = len(data) // self.seq_len  # complete sequences available
        rows = data[: whole * self.seq_len].reshape(whole, self.seq_len)  # (whole, L)
        self._carry = data[whole * self.seq_len :].copy()
        while len(rows):
            if self._file is None:
                self._open()
            take = min(len(rows), self.per_shard - self._in_shard)
            block = np.ascontiguousarray(rows[:take])  # (take, L)
            self._write_rows(block)
            self._in_shard += take
            self.result.tokens += block.size
            rows = rows[take:]
            if self._in_shard == self.per_shard:
                self._close()

    def finish(self) -> StreamSplit:
        """Close the last shard; the tokens short of a whole sequence are counted as dropped."""
        if self._file is not None:
            self._close()
        self.result.dropped_tokens = int(len(self._carry))
        self._carry = np.zeros(0, self.dtype)
        return self.result

    def _name(self) -> str:
        return f"{self.prefix}-{len(self.result.shards):05d}{self.SUFFIX}"

    def _open(self) -> None:
        final = self.root / self._name()
        final.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = final.with_name(f".{final.name}.tmp")
        self._file = self._tmp.open("wb")
        self._hash = hashlib.sha256()
        self._in_shard = 0

    def _write_rows(self, block: np.ndarray) -> None:
        """Write (n, L) whole sequences to the open shard."""
        self._file.write(block.tobytes())
        self._hash.update(block.tobytes())

    def _end_file(self) -> None:
        """Anything the layout writes after the last sequence (nothing for a raw array)."""

    def _digest(self) -> str:
        return self._hash.hexdigest()

    def _close(self) -> None:
        name = self._name()
        self._end_file()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        digest = self._digest()
        os.replace(self._tmp, self.root / name)
        self.result.shards.append(ShardInfo(file=name, sequences=self._in_shard, sha256=digest))
        self._file = None
