"""Extend an existing BPE tokenizer with tokens learned from new text, keeping every existing id.

The DLLM-RU plan: take a base tokenizer (any local Hugging Face tokenizer.json with a BPE model) and add
~2-5K Russian tokens, so Russian compresses well while the base ids, and so a base model's embeddings,
stay valid.

How (continued BPE training, not a second vocabulary glued on):
1. Pre-tokenize the new text exactly as the base does (its normalizer and pre-tokenizer) and count words.
2. Segment each distinct word with the base model: the sequence of base tokens the base would produce.
3. Learn new merges on those segmentations. The `tokenizers` BPE trainer does the counting and merging:
   each base token id is written as one private code point (U+10000 + id), so the trainer's "characters"
   are base tokens and every merge it learns joins two base (or already learned) tokens.
4. Append the learned merges after all base merges and give their new tokens ids after the largest
   existing id. BPE applies merges by rank, lowest first, so on any word the base merges all run first
   (reproducing the base segmentation) and the new ones after. Text the new merges do not touch
   (English, for merges learned on Russian) encodes to exactly the base ids.
Special tokens the base lacks (Sunfish's [PAD], [BOS], [EOS], [MASK]) are appended after the new tokens.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import Iterable

import tokenizers
from tokenizers import models, pre_tokenizers, trainers

from .base import SPECIAL_TOKENS, Tokenizer

_SYMBOL_BASE = 0x10000  # first code point of the one-character stand-ins for base tokens (above the BMP)
_MAX_SYMBOLS = 0x110000 - _SYMBOL_BASE  # base vocabularies up to ~1M ids
_BYTE_FALLBACK = "<0x"  # sentencepiece-style byte tokens "<0xE2>": never merged


@dataclass(frozen=True)
class ExtendResult:
    tokenizer: Tokenizer
    base_size: int  # ids in the base (model vocabulary and added tokens)
    added: int  # new tokens from merges
    added_specials: list[str]  # Sunfish special tokens the base lacked
    merges_appended: int  # merges appended (some lead to tokens the base already had)


def _split_merge(merge) -> tuple[str, str]:
    if isinstance(merge, str):  # tokenizers < 0.20 stored "a b"
        left, _, right = merge.partition(" ")
        return left, right
    return merge[0], merge[1]


def _base_model(base: tokenizers.Tokenizer) -> dict:
    spec = json.loads(base.to_str())
    model = spec["model"]
    if model.get("type") != "BPE":
        raise ValueError(f"the base tokenizer's model is {model.get('type')!r}; only BPE tokenizers can be extended")
    if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        raise ValueError("the base BPE uses a subword prefix or suffix (WordPiece style); only plain BPE can be extended")
    return spec


def _word_counts(base: tokenizers.Tokenizer, texts: Iterable[str]) -> Counter:
    """Pre-tokenized words of `texts` as the base tokenizer sees them, with their counts."""
    counts: Counter = Counter()
    normalizer, pre = base.normalizer, base.pre_tokenizer
    for text in texts:
        if normalizer is not None:
            text = normalizer.normalize_str(text)
        pieces = pre.pre_tokenize_str(text) if pre is not None else [(text, None)]
        counts.update(word for word, _ in pieces)
    return counts


def _symbol_words(base: tokenizers.Tokenizer, counts: Counter) -> Iterable[tuple[str, int]]:
    """(base tokens of a word as stand-in characters, count); byte-fallback tokens split a word."""
    model = base.model
    for word, count in counts.items():
        parts, current = [], []
        for token in model.tokenize(word):
            if token.value.startswith(_BYTE_FALLBACK) and token.value.endswith(">") and len(token.value) == 6:
                parts.append("".join(current))
                current = []
            else:
                current.append(chr(_SYMBOL_BASE + token.id))
        parts.append("".join(current))
        for part in parts:
            if len(part) > 1:  # a single token has nothing to merge
                yield part, count


def _learn_merges(symbol_words: Iterable[tuple[str, int]], n_new: int, min_frequency: int) -> list[tuple[str, str]]:
    """Merges over stand-in characters, in the order the BPE trainer learned them."""
    words: Counter = Counter()
    for word, count in symbol_words:
        words[word] += count
    if not words:
        return []
    alphabet = sorted({ch for word in words for ch in word})
    learner = tokenizers.Tokenizer(models.BPE())
    learner.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.BpeTrainer(vocab_size=len(alphabet) + 2 * n_new, min_frequency=min_frequency,
                                  initial_alphabet=alphabet, show_progress=False, limit_alphabet=len(alphabet))

    def lines():
        batch = []
        for word, count in words.items():
            batch.extend([word] * count)
            if len(batch) >= 65536:
                yield " ".join(batch)
                batch = []
        if batch:
            yield " ".join(batch)

    learner.train_from_iterator(lines(), trainer=trainer)
    merges = json.loads(learner.to_str())["model"]["merges"]
    return [_split_merge(m) for m in merges]


def extend_tokenizer(
    base: Tokenizer | tokenizers.Tokenizer, texts: Iterable[str], n_new: int, min_frequency: int = 2
) -> ExtendResult:
    """`base` plus up to `n_new` tokens learned from `texts`; all base ids and merges are unchanged."""
    backend = base.backend if isinstance(base, Tokenizer) else base
    spec = _base_model(backend)
    vocab: dict[str, int] = spec["model"]["vocab"]
    taken = set(vocab.values()) | {t["id"] for t in spec.get("added_tokens", [])}
    base_size = max(taken) + 1
    if base_size > _MAX_SYMBOLS:
        raise ValueError(f"the base vocabulary has {base_size:,} ids; extension supports up to {_MAX_SYMBOLS:,}")
    if n_new < 1:
        raise ValueError(f"n_new={n_new}; ask for at least one new token")
    id_to_token = {i: t for t, i in vocab.items()}
    learned = _learn_merges(_symbol_words(backend, _word_counts(backend, texts)), n_new, min_frequency)
    text_of = lambda symbols: "".join(id_to_token[ord(ch) - _SYMBOL_BASE] for ch in symbols)

    merges = spec["model"]["merges"]
    as_strings = bool(merges) and isinstance(merges[0], str)
    known = {_split_merge(m) for m in merges}
    next_id, added, appended = base_size, 0, 0
    for left_symbols, right_symbols in learned:
        if added == n_new:
            break
        left, right = text_of(left_symbols), text_of(right_symbols)
        if (left, right) in known:
            continue
        merges.append(f"{left} {right}" if as_strings else [left, right])
        known.add((left, right))
        appended += 1
        if left + right not in vocab:
            vocab[left + right] = next_id
            next_id, added = next_id + 1, added + 1
    specials = _add_specials(spec, next_id)
    extended = tokenizers.Tokenizer.from_str(json.dumps(spec, ensure_ascii=False))
    return ExtendResult(tokenizer=Tokenizer(extended), base_size=base_size, added=added, added_specials=specials,
                        merges_appended=appended)


def _add_specials(spec: dict, next_id: int) -> list[str]:
    """Append Sunfish's special tokens the base lacks, as special added tokens with the next ids."""
    present = {t["content"] for t in spec.get("added_tokens", [])} | set(spec["model"]["vocab"])
    missing = [t for t in SPECIAL_TOKENS if t not in present]
    for offset, content in enumerate(missing):
        spec.setdefault("added_tokens", []).append({
            "id": next_id + offset, "content": content, "single_word": False, "lstrip": False,
            "rstrip": False, "normalized": False, "special": True,
        })
    return missing
