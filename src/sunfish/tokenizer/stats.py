"""Compression of a tokenizer on text of one language: characters per token and tokens per word.

Words are whitespace-separated pieces, the usual unit when comparing tokenizers across languages
("fertility"); characters are Unicode code points. Lower tokens per word means shorter sequences for
the same text, so more text per context window and per training step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import tokenizers

from sunfish.data.report import table

from .base import Tokenizer

_BATCH = 256  # documents per encode_batch call


@dataclass(frozen=True)
class Compression:
    documents: int
    chars: int
    words: int
    tokens: int

    @property
    def chars_per_token(self) -> float:
        return self.chars / max(self.tokens, 1)

    @property
    def tokens_per_word(self) -> float:
        return self.tokens / max(self.words, 1)


def _backend(tokenizer: Tokenizer | tokenizers.Tokenizer) -> tokenizers.Tokenizer:
    return tokenizer.backend if isinstance(tokenizer, Tokenizer) else tokenizer


def measure(tokenizer: Tokenizer | tokenizers.Tokenizer, texts: Iterable[str]) -> Compression:
    """Counts over `texts` (any Hugging Face tokenizer; special tokens are not added)."""
    backend = _backend(tokenizer)
    docs = chars = words = tokens = 0
    batch: list[str] = []
    for text in [*texts, None]:
        if text is not None:
            batch.append(text)
            docs += 1
            chars += len(text)
            words += len(text.split())
        if batch and (text is None or len(batch) == _BATCH):
            tokens += sum(len(e.ids) for e in backend.encode_batch(batch, add_special_tokens=False))
            batch = []
    return Compression(documents=docs, chars=chars, words=words, tokens=tokens)


def compression_table(named: dict[str, Tokenizer | tokenizers.Tokenizer], texts: dict[str, list[str]]) -> tuple[str, dict]:
    """A table per language and tokenizer, with the change in tokens per word against the first tokenizer.

    Returns the table and {lang: {tokenizer: Compression}}.
    """
    results: dict[str, dict[str, Compression]] = {}
    rows = []
    for lang, docs in texts.items():
        results[lang] = {}
        for name, tok in named.items():
            c = measure(tok, docs)
            results[lang][name] = c
            first = next(iter(results[lang].values()))
            change = 100.0 * (c.tokens_per_word / first.tokens_per_word - 1.0)
            rows.append((lang, name, _backend(tok).get_vocab_size(with_added_tokens=True), c.documents, c.words, c.tokens, c.chars_per_token,
                         c.tokens_per_word, f"{change:+.1f}%"))
    header = ("lang", "tokenizer", "vocab", "docs", "words", "tokens", "chars/token", "tokens/word", "vs first")
    return table(rows, header), results
