"""The piece-cache encoder (`sunfish.tokenizer.fast`) gives exactly the tokenizers library's ids."""

from __future__ import annotations

import gzip
import itertools
import json

import numpy as np
import pytest
import tokenizers
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import shared_corpus
from sunfish.data.pack import _load_backend, encode_documents, tokenize_chunk
from sunfish.tokenizer import fast, train_bpe_tokenizer
from sunfish.tokenizer.extend import extend_tokenizer

CODE_SWITCHED = ["Я изучаю machine learning и deep learning в МГУ.", "We ate борщ and пельмени 🙂 — «вкусно»!",
                 "Модель GPT-2 (124M) обучена на WebText;\tloss=3.28\n\nКонец.", "日本語 и русский, ё Ё й, e\u0301, \u00a0\u200b",
                 "it's they'll we'd I'M 'S ''s", "  \n\n \t x\r\n\u3000y\u2028z  ", "[EOS] [BOS]x[PAD]", "a\u0558b \u0558 1\u0558 \u0560"]
FRAGMENTS = ["word", "Слово", " ", "  ", "\n", "\n\n", " \n", "\t", ".", "!?", "»", "«", "'s", "'ll", "'S", "42", "٣",
             "🙂", "中文", "—", "-", "...", "\r\n", "[EOS]", "e\u0301", "\u00a0", "\u0558", "\U00010940", "\u3000", "\x85"]


def head(relative: str, n: int, chars: int) -> list[str]:
    """The first `n` documents of a corpus file, each cut to `chars` characters."""
    path = shared_corpus(relative)
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line)["text"][:chars] for line in itertools.islice(f, n)]


def code_switched(n: int) -> list[str]:
    """Tatoeba pairs written as one text, English and Russian alternating inside a line."""
    with shared_corpus("parallel_en_ru_tatoeba/tatoeba_en_ru.tsv").open(encoding="utf-8") as f:
        rows = [line.rstrip("\n").split("\t") for line in itertools.islice(f, 1, n + 1)]
    return [" ".join(row) for row in rows]


@pytest.fixture(scope="module")
def corpora() -> dict[str, list[str]]:
    return {
        "ru_classics": head("ru_classics/ru_classics.jsonl.gz", 6, 60_000),
        "ru_tinystories": head("ru_tinystories/tinystories_ru.jsonl.gz", 150, 5_000),
        "en_gutenberg": head("en_gutenberg_classics/en_gutenberg_classics.jsonl.gz", 3, 60_000),
        "en_children": head("en_children_pd/en_children_pd.jsonl", 2, 60_000),
        "code_switched": code_switched(2_000),
    }


@pytest.fixture(scope="module")
def backend(corpora) -> tokenizers.Tokenizer:
    sample = [text[:20_000] for docs in corpora.values() for text in docs]
    backend = train_bpe_tokenizer(sample, 3000).backend  # Tokenizer sets encode_special_tokens
    assert fast.PieceEncoder.supports(backend)
    return backend


@pytest.fixture(scope="module")
def encoder(backend) -> fast.PieceEncoder:
    return fast.PieceEncoder(backend)


def reference(backend, texts: list[str]) -> list[list[int]]:
    return [e.ids for e in backend.encode_batch(texts, add_special_tokens=False)]


def test_corpora_encode_exactly_and_take_the_fast_path(backend, encoder, corpora):
    for name, texts in corpora.items():
        assert [encoder.encode(t) for t in texts] == reference(backend, texts), name
        assert all(encoder._unverified.search(t) is None for t in texts), name  # no fallback on this text


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60) | st.lists(st.sampled_from(FRAGMENTS), max_size=30).map("".join) | st.sampled_from(CODE_SWITCHED))
def test_random_unicode_encodes_exactly(backend, encoder, text):
    assert encoder.encode(text) == backend.encode(text, add_special_tokens=False).ids


def test_characters_the_tables_disagree_on_go_to_the_library(backend, encoder):
    pattern = encoder._pattern
    verified = set(fast.verified_characters(backend, pattern))
    assert {"a", "я", "ё", "1", " ", ".", "—", "«", "\u0301"} <= verified and len(verified) > 14_000
    unverified = [chr(c) for c in range(0x3000) if chr(c) not in verified and not 0xD800 <= c <= 0xDFFF]
    for ch in unverified[:20]:  # e.g. U+0558, a letter in recent Unicode (the regex module), unassigned to Oniguruma
        text = f"ok {ch}x\nnext line 12\n{ch}"
        assert encoder.encode(text) == backend.encode(text, add_special_tokens=False).ids


def test_a_full_cache_still_encodes_exactly(backend, corpora, monkeypatch):
    monkeypatch.setattr(fast, "MAX_CACHED_PIECES", 50)
    small = fast.PieceEncoder(backend)
    texts = corpora["ru_tinystories"][:30]
    assert [small.encode(t) for t in texts] == reference(backend, texts)
    assert len(small._ids) == 50


def test_an_extended_tokenizer_encodes_exactly(corpora):
    base = train_bpe_tokenizer(corpora["en_children"], 600)
    extended = extend_tokenizer(base, corpora["ru_tinystories"][:20], 100).tokenizer.backend
    assert fast.PieceEncoder.supports(extended)
    texts = corpora["ru_tinystories"][20:50] + corpora["code_switched"][:200] + CODE_SWITCHED
    encoder = fast.PieceEncoder(extended)
    assert [encoder.encode(t) for t in texts] == reference(extended, texts)


def test_other_tokenizers_are_refused(backend):
    def changed(edit):
        copy = tokenizers.Tokenizer.from_str(backend.to_str())
        copy.encode_special_tokens = True
        edit(copy)
        return copy

    refused = [
        changed(lambda b: setattr(b, "normalizer", tokenizers.normalizers.NFKC())),
        changed(lambda b: setattr(b, "pre_tokenizer", tokenizers.pre_tokenizers.Metaspace())),
        changed(lambda b: setattr(b, "pre_tokenizer", tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=True))),
        changed(lambda b: b.add_tokens(["hello"])),
        changed(lambda b: b.enable_truncation(8)),
        changed(lambda b: setattr(b, "encode_special_tokens", False)),  # "[EOS]" in text would be cut out
    ]
    for other in refused:
        assert not fast.PieceEncoder.supports(other)
    with pytest.raises(ValueError, match="not a plain GPT-2-style byte-level BPE"):
        fast.PieceEncoder(refused[0])


def test_tokenize_chunk_equals_the_library_path(backend, corpora, tmp_path):
    file = tmp_path / "tokenizer.json"
    file.write_text(backend.to_str(), encoding="utf-8")
    texts = corpora["ru_tinystories"][:40] + corpora["code_switched"][:100] + CODE_SWITCHED
    library, bos, eos, split = _load_backend(str(file))
    expected = np.concatenate([[bos, *ids, eos] for ids in encode_documents(library, texts, split)]).astype(np.uint32)
    got = tokenize_chunk(str(file), texts)
    assert got.dtype == np.uint32 and np.array_equal(got, expected)


def test_a_tokenizer_rewritten_at_the_same_path_is_read_again(backend, corpora, tmp_path):
    file, texts = tmp_path / "tokenizer.json", corpora["code_switched"][:50]
    file.write_text(backend.to_str(), encoding="utf-8")
    first = tokenize_chunk(str(file), texts)
    smaller = train_bpe_tokenizer(texts, 400).backend
    file.write_text(smaller.to_str(), encoding="utf-8")
    library, bos, eos, split = _load_backend(str(file))
    assert library.get_vocab_size() == smaller.get_vocab_size() != backend.get_vocab_size()
    expected = np.concatenate([[bos, *ids, eos] for ids in encode_documents(library, texts, split)]).astype(np.uint32)
    assert np.array_equal(tokenize_chunk(str(file), texts), expected) and not np.array_equal(first, expected)
