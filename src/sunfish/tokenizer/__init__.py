"""Tokenizers for Sunfish: character-level and byte-level BPE, stored as tokenizer.json.

Both kinds put ``SPECIAL_TOKENS`` at ids 0..3, never add special tokens when encoding,
and encode literal special-token text (``"[MASK]"``) as ordinary text.
"""

from __future__ import annotations

from typing import Iterable

from .base import SPECIAL_TOKENS, TOKENIZER_FILENAME, UNK_TOKEN, Tokenizer, TokenizerKind
from .bpe import MIN_BPE_VOCAB_SIZE, train_bpe_tokenizer
from .char import train_char_tokenizer

__all__ = [
    "MIN_BPE_VOCAB_SIZE",
    "SPECIAL_TOKENS",
    "TOKENIZER_FILENAME",
    "UNK_TOKEN",
    "Tokenizer",
    "TokenizerKind",
    "train_bpe_tokenizer",
    "train_char_tokenizer",
    "train_tokenizer",
]


def train_tokenizer(
    kind: TokenizerKind | str, texts: Iterable[str], vocab_size: int | None = None
) -> Tokenizer:
    """Train a tokenizer of ``kind``; ``vocab_size`` is required for BPE and ignored for char."""
    try:
        kind = TokenizerKind(kind)
    except ValueError:
        choices = ", ".join(repr(k.value) for k in TokenizerKind)
        raise ValueError(f"unknown tokenizer kind {kind!r}; use one of {choices}") from None
    if kind is TokenizerKind.CHAR:
        return train_char_tokenizer(texts)
    if vocab_size is None:
        raise ValueError("a BPE tokenizer needs a vocab_size; pass vocab_size=...")
    return train_bpe_tokenizer(texts, vocab_size)
