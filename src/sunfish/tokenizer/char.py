"""Character-level tokenizer: every Unicode code point is one token."""

from __future__ import annotations

from typing import Iterable

import tokenizers
from tokenizers import Regex, decoders, models, pre_tokenizers

from .base import SPECIAL_TOKENS, UNK_TOKEN, Tokenizer


def build_char_backend(chars: Iterable[str]) -> tokenizers.Tokenizer:
    """A WordLevel ``tokenizers.Tokenizer`` over single characters.

    Vocabulary: ``SPECIAL_TOKENS`` (ids 0..3), ``UNK_TOKEN`` (id 4, needed by the library
    for characters outside the vocabulary; Sunfish's ``encode`` raises on it), then
    ``chars`` sorted by code point. No normalizer, so whitespace is kept exactly.
    """
    vocab = {token: i for i, token in enumerate((*SPECIAL_TOKENS, UNK_TOKEN))}
    for ch in sorted(set(chars)):
        vocab.setdefault(ch, len(vocab))
    backend = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token=UNK_TOKEN))
    # Oniguruma regex: [\s\S] is any code point, newline included.
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()  # concatenate tokens with nothing in between
    backend.add_special_tokens(list(SPECIAL_TOKENS))
    return backend


def train_char_tokenizer(texts: Iterable[str]) -> Tokenizer:
    """A char tokenizer whose vocabulary is the specials, ``[UNK]`` and every character in ``texts``."""
    chars: set[str] = set()
    for text in texts:
        chars.update(text)
    return Tokenizer(build_char_backend(chars))
