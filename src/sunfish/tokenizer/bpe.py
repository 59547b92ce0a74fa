"""Byte-level BPE tokenizer (GPT-2 style), trained with the Hugging Face library."""

from __future__ import annotations

from typing import Iterable

import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from .base import SPECIAL_TOKENS, Tokenizer

BYTE_ALPHABET_SIZE = 256
MIN_BPE_VOCAB_SIZE = BYTE_ALPHABET_SIZE + len(SPECIAL_TOKENS)


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """Train a byte-level BPE with ``SPECIAL_TOKENS`` at ids 0..3 and at most ``vocab_size`` ids.

    The initial alphabet is all 256 bytes, so any Unicode text round-trips exactly.
    Training is deterministic: the same texts give the same tokenizer.json.
    The vocabulary can end up smaller than ``vocab_size`` if the texts have few merges.
    """
    if int(vocab_size) < MIN_BPE_VOCAB_SIZE:
        raise ValueError(
            f"vocab_size={vocab_size} is too small for a byte-level BPE tokenizer, which "
            f"needs at least {MIN_BPE_VOCAB_SIZE} ids ({BYTE_ALPHABET_SIZE} bytes + "
            f"{len(SPECIAL_TOKENS)} special tokens); pass a larger vocab_size"
        )
    backend = tokenizers.Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=int(vocab_size),
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    return Tokenizer(backend)
