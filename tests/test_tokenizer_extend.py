"""Extending a BPE tokenizer with Russian tokens: stable ids, exact round trips, compression, CLI."""

from __future__ import annotations

import argparse
import gzip
import itertools
import json

import pytest
import tokenizers
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import PreTrainedTokenizerFast

from conftest import shared_corpus
from sunfish.data import cli as data_cli
from sunfish.data.synth import generate_stories
from sunfish.tokenizer import SPECIAL_TOKENS, Tokenizer, train_bpe_tokenizer
from sunfish.tokenizer.extend import extend_tokenizer
from sunfish.tokenizer.stats import compression_table, measure

CODE_SWITCHED = ["Я изучаю machine learning и deep learning в МГУ.", "We ate борщ and пельмени 🙂 — «вкусно»!",
                 "Модель GPT-2 (124M) обучена на WebText;\tloss=3.28\n\nКонец.", "日本語 и русский, ё Ё й, e\u0301, \u00a0\u200b"]


def merges_of(tok: Tokenizer) -> list:
    return json.loads(tok.to_json())["model"]["merges"]


@pytest.fixture(scope="module")
def synthetic():
    stories = generate_stories("both", 1200, 11)
    english, russian = stories[0::2], stories[1::2]
    base = train_bpe_tokenizer(english[:400], 600)
    result = extend_tokenizer(base, russian[:400], 300)
    return base, result, english[400:], russian[400:]


def test_every_base_id_and_merge_is_kept(synthetic):
    base, result, english, russian = synthetic
    ext = result.tokenizer
    old, new = base.backend.get_vocab(), ext.backend.get_vocab()
    assert all(new[token] == i for token, i in old.items())
    assert merges_of(ext)[: len(merges_of(base))] == merges_of(base)
    assert result.added == 300 and result.base_size == base.vocab_size and ext.vocab_size == base.vocab_size + 300
    assert sorted(new[t] for t in set(new) - set(old)) == list(range(base.vocab_size, base.vocab_size + 300))
    assert [ext.backend.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3] and result.added_specials == []


def test_extension_compresses_russian_and_spares_english(synthetic):
    base, result, english, russian = synthetic
    ru_before, ru_after = measure(base, russian).tokens_per_word, measure(result.tokenizer, russian).tokens_per_word
    en_before, en_after = measure(base, english).tokens_per_word, measure(result.tokenizer, english).tokens_per_word
    assert ru_after <= 0.7 * ru_before  # at least 30% fewer tokens per Russian word
    assert en_after <= 1.02 * en_before


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80) | st.sampled_from(CODE_SWITCHED))
def test_round_trip_of_any_unicode(synthetic, text):
    ext = synthetic[1].tokenizer
    assert ext.decode(ext.encode(text)) == text


def test_transformers_loads_the_extended_tokenizer(synthetic, tmp_path):
    ext = synthetic[1].tokenizer
    ext.save_pretrained(tmp_path)
    for hf in (PreTrainedTokenizerFast.from_pretrained(tmp_path), PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))):
        for text in CODE_SWITCHED:
            ids = hf.encode(text, add_special_tokens=False)
            assert ids == ext.encode(text)
            assert hf.decode(ids, clean_up_tokenization_spaces=False) == text
    hf = PreTrainedTokenizerFast.from_pretrained(tmp_path)
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id, hf.mask_token_id) == (ext.bos_id, ext.eos_id, ext.pad_id, ext.mask_id)
    assert hf.decode(hf.encode(" a , b .")) == " a , b ."  # clean_up_tokenization_spaces is off in the saved config


def test_a_foreign_base_gets_the_sunfish_specials_after_its_ids():
    backend = tokenizers.Tokenizer(tokenizers.models.BPE())
    backend.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"], show_progress=False,
                                             initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(generate_stories("en", 200, 2), trainer=trainer)
    result = extend_tokenizer(backend, generate_stories("ru", 200, 2), 50)
    ext = result.tokenizer.backend
    assert ext.token_to_id("<|endoftext|>") == backend.token_to_id("<|endoftext|>") == 0
    assert result.added_specials == list(SPECIAL_TOKENS)
    assert [ext.token_to_id(t) for t in SPECIAL_TOKENS] == list(range(result.base_size + 50, result.base_size + 54))
    with pytest.raises(ValueError, match="only BPE tokenizers can be extended"):
        extend_tokenizer(tokenizers.Tokenizer(tokenizers.models.WordLevel({"a": 0}, unk_token="a")), ["a"], 5)


def _jsonl_texts(path, skip, take):
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in itertools.islice(f, skip, skip + take)]


def test_compression_targets_on_the_shared_corpora():
    """English-only BPE vs the same + Russian tokens, on text the tokenizers never saw (the issue's targets)."""
    en_train = _jsonl_texts(shared_corpus("en_children_pd/en_children_pd.jsonl"), 0, 8)
    en_test = _jsonl_texts(shared_corpus("en_tinystories/tinystories_train_head.jsonl"), 0, 600)
    ru_file = shared_corpus("ru_tinystories/tinystories_ru.jsonl.gz")
    ru_train, ru_test = _jsonl_texts(ru_file, 0, 3000), _jsonl_texts(ru_file, 20000, 600)
    base = train_bpe_tokenizer(en_train, 4096)
    ext = extend_tokenizer(base, ru_train, 1024).tokenizer
    table, results = compression_table({"en-bpe": base, "en-bpe+ru": ext}, {"ru": ru_test, "en": en_test})
    ru, en = results["ru"], results["en"]
    assert ru["en-bpe+ru"].tokens_per_word <= 0.7 * ru["en-bpe"].tokens_per_word, table
    assert en["en-bpe+ru"].tokens_per_word <= 1.02 * en["en-bpe"].tokens_per_word, table


def test_tokenizer_cli_train_extend_stats(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="sunfish")
    data_cli.register(parser.add_subparsers(dest="verb", required=True))
    stories = generate_stories("both", 300, 4)
    (tmp_path / "en.txt").write_text("\n\n".join(stories[0::2]), encoding="utf-8")
    (tmp_path / "ru.jsonl").write_text("".join(json.dumps({"body": s}) + "\n" for s in stories[1::2]), encoding="utf-8")
    run = lambda *argv: data_cli.dispatch(parser.parse_args(list(argv)))
    assert run("tokenizer", "train", str(tmp_path / "en.txt"), "--vocab", "500", "--out", str(tmp_path / "base")) == 0
    assert run("tokenizer", "extend", str(tmp_path / "base"), str(tmp_path / "ru.jsonl"), "--text-field", "body",
               "--lang", "ru", "--add", "100", "--out", str(tmp_path / "ext.json")) == 0
    assert "added 100 tokens" in capsys.readouterr().out
    assert Tokenizer.load(tmp_path / "ext.json").vocab_size == Tokenizer.load(tmp_path / "base").vocab_size + 100
    assert run("tokenizer", "stats", str(tmp_path / "base"), str(tmp_path / "ext.json"), "--text", f"ru={tmp_path / 'ru.jsonl'}",
               "--text-field", "body") == 0
    out = capsys.readouterr().out
    assert "tokens/word" in out and "base" in out and "ext" in out and "%" in out
    with pytest.raises(ValueError, match="cannot load the tokenizer"):
        run("tokenizer", "extend", str(tmp_path / "missing.json"), str(tmp_path / "ru.jsonl"), "--add", "5", "--out", str(tmp_path / "o.json"))
