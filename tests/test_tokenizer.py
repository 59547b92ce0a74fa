"""Tests for sunfish.tokenizer (char-level and byte-level BPE)."""

from __future__ import annotations

import gzip
import hashlib
import itertools
import json
from pathlib import Path

import pytest
import tokenizers

from sunfish.tokenizer import (
    SPECIAL_TOKENS,
    Tokenizer,
    TokenizerKind,
    train_bpe_tokenizer,
    train_char_tokenizer,
    train_tokenizer,
)

CORPORA = Path(__file__).resolve().parents[2] / "shared" / "corpora"

ENGLISH = "The quick brown fox jumps over the lazy dog. It was a sunny day!"
RUSSIAN = "Жила-была маленькая зайчиха. Она очень любила морковку, ёлки и щи."
MIXED = "Сегодня мы изучаем machine learning, и machine learning нам нравится."
WHITESPACE = ["  leading", "trailing  ", "double  space", "tab\there", "new\nline\n\n", " ", "\r\n", ""]
EMOJI_CJK = ["Hi 😀👍🏽 there", "家族👨‍👩‍👧", "你好，世界。日本語のテキスト", "mixed 中文 and Русский 🎉"]
SAMPLES = [ENGLISH, RUSSIAN, MIXED, *WHITESPACE]
TRAIN_TEXTS = [ENGLISH * 20, RUSSIAN * 20, MIXED * 20, "\t\r\n  " * 5]


@pytest.fixture(scope="module")
def char_tok() -> Tokenizer:
    return train_char_tokenizer(TRAIN_TEXTS)


@pytest.fixture(scope="module")
def bpe_tok() -> Tokenizer:
    return train_bpe_tokenizer(TRAIN_TEXTS, vocab_size=400)


@pytest.fixture(params=["char", "bpe"])
def tok(request, char_tok, bpe_tok) -> Tokenizer:
    return {"char": char_tok, "bpe": bpe_tok}[request.param]


@pytest.mark.parametrize("text", SAMPLES)
def test_round_trip(tok: Tokenizer, text: str) -> None:
    assert tok.decode(tok.encode(text)) == text


@pytest.mark.parametrize("text", EMOJI_CJK)
def test_bpe_round_trip_unseen_scripts(bpe_tok: Tokenizer, text: str) -> None:
    assert bpe_tok.decode(bpe_tok.encode(text)) == text


def test_char_is_one_token_per_character(char_tok: Tokenizer) -> None:
    for text in SAMPLES:
        assert len(char_tok.encode(text)) == len(text)


def test_special_ids(tok: Tokenizer) -> None:
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.mask_id) == (0, 1, 2, 3)
    assert [tok.token_text(i) for i in range(4)] == list(SPECIAL_TOKENS)
    assert tok.vocab_size == len(tok.backend.get_vocab())


@pytest.mark.parametrize("kind", list(TokenizerKind))
def test_encode_never_adds_or_parses_specials(kind: TokenizerKind) -> None:
    text = "say [MASK] and [EOS]"
    tok = train_tokenizer(kind, [text], vocab_size=300)
    assert tok.encode("") == []
    ids = tok.encode(text)
    assert not set(ids) & {0, 1, 2, 3}
    assert tok.decode(ids) == text


def test_encode_batch_matches_encode(tok: Tokenizer) -> None:
    assert tok.encode_batch(SAMPLES) == [tok.encode(t) for t in SAMPLES]


def test_decode_special_tokens(tok: Tokenizer) -> None:
    ids = [tok.bos_id, *tok.encode("hello"), tok.mask_id, tok.eos_id, tok.pad_id]
    assert tok.decode(ids) == "hello"
    assert tok.decode(ids, skip_special=False) == "[BOS]hello[MASK][EOS][PAD]"


def test_decode_rejects_out_of_range_ids(tok: Tokenizer) -> None:
    with pytest.raises(ValueError, match="outside"):
        tok.decode([tok.vocab_size])


def test_token_text(char_tok: Tokenizer, bpe_tok: Tokenizer) -> None:
    assert [char_tok.token_text(i) for i in char_tok.encode("ё\n")] == ["ё", "\n"]
    pieces = [bpe_tok.token_text(i) for i in bpe_tok.encode(" machine learning")]
    assert "".join(pieces) == " machine learning"
    assert all(isinstance(bpe_tok.token_text(i), str) for i in range(bpe_tok.vocab_size))


def test_char_vocabulary_is_sorted_and_deterministic() -> None:
    tok = train_char_tokenizer(["cba", "a\n"])
    chars = [tok.token_text(i) for i in range(5, tok.vocab_size)]
    assert chars == ["\n", "a", "b", "c"]
    assert train_char_tokenizer(["a\n", "cba"]).to_json() == tok.to_json()


def test_char_unknown_character_raises(char_tok: Tokenizer) -> None:
    with pytest.raises(ValueError, match="'Ф'.*does not have"):
        char_tok.encode("Жила Фёкла")
    with pytest.raises(ValueError, match="'😀'"):
        char_tok.encode_batch(["ok", "no 😀"])


def test_bpe_vocab_too_small() -> None:
    with pytest.raises(ValueError, match="too small"):
        train_bpe_tokenizer(TRAIN_TEXTS, vocab_size=259)


def test_bpe_deterministic() -> None:
    first = train_bpe_tokenizer(iter(TRAIN_TEXTS), vocab_size=350)
    second = train_bpe_tokenizer(list(TRAIN_TEXTS), vocab_size=350)
    assert first.to_json() == second.to_json()
    assert first.sha256() == second.sha256()


def test_bpe_compresses(bpe_tok: Tokenizer) -> None:
    assert len(bpe_tok.encode(ENGLISH)) < len(ENGLISH) / 2


def test_train_tokenizer_dispatch() -> None:
    assert train_tokenizer("char", ["ab"]).kind is TokenizerKind.CHAR
    assert train_tokenizer(TokenizerKind.BPE, ["ab"], vocab_size=300).kind is TokenizerKind.BPE
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer("bpe", ["ab"])
    with pytest.raises(ValueError, match="unknown tokenizer kind"):
        train_tokenizer("wordpiece", ["ab"])


def test_save_load_round_trip(tok: Tokenizer, tmp_path: Path) -> None:
    path = tmp_path / "tok" / "tokenizer.json"
    tok.save(path)
    assert [p.name for p in path.parent.iterdir()] == ["tokenizer.json"]  # no temp file left
    assert hashlib.sha256(path.read_bytes()).hexdigest() == tok.sha256()
    for loaded in (Tokenizer.load(path), Tokenizer.load(path.parent)):
        assert loaded.kind is tok.kind
        assert loaded.sha256() == tok.sha256()
        assert loaded.encode_batch(SAMPLES) == tok.encode_batch(SAMPLES)
    tok.save(tmp_path / "new_dir")  # a path without .json is a directory for tokenizer.json
    assert (tmp_path / "new_dir" / "tokenizer.json").is_file()
    assert Tokenizer.load(tmp_path / "new_dir").sha256() == tok.sha256()


def test_plain_library_loads_file(tok: Tokenizer, tmp_path: Path) -> None:
    tok.save(tmp_path / "tokenizer.json")
    plain = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    for text in SAMPLES:
        ids = plain.encode(text, add_special_tokens=False).ids
        assert ids == tok.encode(text)
        assert plain.decode(ids) == text


def test_transformers_loads_file(bpe_tok: Tokenizer, tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    bpe_tok.save(tmp_path / "tokenizer.json")
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))
    assert fast.encode(MIXED, add_special_tokens=False) == bpe_tok.encode(MIXED)


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no tokenizer file"):
        Tokenizer.load(tmp_path / "nope.json")
    with pytest.raises(ValueError, match="no tokenizer file"):
        Tokenizer.load(tmp_path)  # a directory without tokenizer.json


@pytest.mark.parametrize("content", ["", "{not json", '{"model": {"type": "BPE"}}', "[1, 2]"])
def test_load_corrupt_file(tmp_path: Path, content: str) -> None:
    path = tmp_path / "tokenizer.json"
    path.write_text(content)
    with pytest.raises(ValueError, match="not a valid tokenizer.json"):
        Tokenizer.load(path)


def test_load_foreign_tokenizer(tmp_path: Path) -> None:
    backend = tokenizers.Tokenizer(tokenizers.models.BPE())
    backend.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(ValueError, match="lacks the special tokens"):
        Tokenizer.load(tmp_path)


def _jsonl_texts(path: Path, max_chars: int) -> list[str]:
    """Read "text" fields from a (possibly gzipped) jsonl file until ``max_chars``."""
    opener = gzip.open if path.suffix == ".gz" else open
    texts, total = [], 0
    with opener(path, "rt", encoding="utf-8") as f:
        for line in f:
            texts.append(json.loads(line)["text"])
            total += len(texts[-1])
            if total >= max_chars:
                break
    return texts


def test_real_corpora_round_trip() -> None:
    if not CORPORA.is_dir():
        pytest.skip(f"../shared/corpora is absent (a fresh clone): {CORPORA} not found")
    files = [
        CORPORA / "en_tinystories" / "tinystories_train_head.jsonl",
        CORPORA / "ru_tinystories" / "tinystories_ru.jsonl.gz",
    ]
    texts = list(itertools.chain.from_iterable(_jsonl_texts(f, 200_000) for f in files))
    tok = train_bpe_tokenizer(texts[::2], vocab_size=2000)  # train on half, test on all
    assert [tok.decode(ids) for ids in tok.encode_batch(texts)] == texts
    n_chars = sum(map(len, texts))
    assert sum(map(len, tok.encode_batch(texts))) < n_chars / 2.5
