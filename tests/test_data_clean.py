"""Cleaning: every planted problem is caught and counted, clean documents survive, PII is scrubbed."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from planted import BOILERPLATE, PII, planted_corpus
from sunfish.data import pii
from sunfish.data.clean import CleanConfig, Deduplicator, StageClock, clean_document
from sunfish.data.dedup import DedupConfig, NearDuplicateIndex, minhash_signature
from sunfish.data.langid import LangGuess, LanguageIdentifier
from sunfish.data.quality import QualityConfig, duplicate_ngram_fraction, quality_reason, strip_boilerplate
from sunfish.data.report import PiiKind, Reason
from sunfish.data.words import Words


def run_cleaner(docs, cfg=CleanConfig()):
    ident = LanguageIdentifier(cfg.langs, cfg.lang_threshold)
    dedup, clock, kept = Deduplicator(cfg), StageClock(), []
    for text in docs:
        doc = clean_document(text, cfg, ident, clock)
        if dedup.decide(doc) is None:
            kept.append(doc.text)
    return dedup.report, kept


@pytest.fixture(scope="module")
def planted():
    return planted_corpus(n_clean=60, seed=0)


@pytest.fixture(scope="module")
def cleaned(planted):
    return run_cleaner(planted.docs)


def test_every_planted_item_is_caught_and_counted(planted, cleaned):
    report, kept = cleaned
    assert dict(report.removed) == dict(planted.removed)
    assert report.removed_languages == Counter({"de": 1, "fr": 1, "es": 1, "uk": 1, "other-script": 1})
    assert report.pii == planted.pii
    boilerplate = [Words.of(b).words for b in BOILERPLATE]
    in_docs = sum(Words.of(line).words in boilerplate for d in planted.docs for line in d.split("\n"))
    assert report.boilerplate_lines == in_docs >= planted.boilerplate_lines  # exact duplicates may repeat them


def test_clean_documents_survive_and_the_report_balances(planted, cleaned):
    report, kept = cleaned
    report.check()
    assert report.kept == len(kept) == len(planted.clean)
    assert report.kept + sum(report.removed.values()) == report.documents == len(planted.docs)
    scrubbed = [pii.scrub(strip_boilerplate(d, QualityConfig())[0])[0] for d in planted.clean]
    assert kept == scrubbed  # in input order, each clean document once
    assert report.kept_languages["en"] > 0 and report.kept_languages["ru"] > 0


def test_pii_placeholders_and_no_false_alarms():
    for text, kind in PII:
        out, counts = pii.scrub(text)
        assert counts == Counter({kind: 1}) and kind.placeholder in out, text
    prose = ("In 1812, 1,234,567 soldiers marched; see pages 123-145, version 3.10.2, ISBN 0-14-044913-5, "
             "at 12:30:45 on 2021-06-01, 999.1.1.1 is no address, nor is 4111 1111 1111 1112 a card.")
    assert pii.scrub(prose) == (prose, Counter())
    assert pii.luhn_valid("4111111111111111") and not pii.luhn_valid("4111111111111112")
    out, counts = pii.scrub("mail a@b.io, call +7 916 123 45 67 or +7 916 123 45 68")
    assert out == "mail <EMAIL>, call <PHONE> or <PHONE>" and counts == Counter({PiiKind.EMAIL: 1, PiiKind.PHONE: 2})


def test_boilerplate_lines_go_and_long_lines_stay():
    cfg = QualityConfig()
    long_line = "This long paragraph mentions a cookie" + " and goes on about baking" * 10
    text = f"Real text here.\nWe use cookies on this site.\n{long_line}\nВсе права защищены."
    out, removed = strip_boilerplate(text, cfg)
    assert removed == 2 and out == f"Real text here.\n{long_line}"


def test_each_quality_rule_has_its_reason():
    cfg = QualityConfig()
    story = ("The little fox and the old bear walked to the river with a basket of apples. On the way they met a "
             "heron who asked them where they were going. \"To the water,\" said the bear, \"to wash the apples.\"")
    assert quality_reason(story, Words.of(story), "en", cfg) is None
    repeated = "\n".join(["The little fox walked to the river with the old bear today."] * 3
                         + [f"Line {i} is about the weather and the sea and the long road home." for i in range(3)])
    assert quality_reason(repeated, Words.of(repeated), "en", cfg) is Reason.DUPLICATE_LINES
    ellipses = "\n".join(f"And then the fox {i} went to the river with the bear..." for i in range(5))
    assert quality_reason(ellipses, Words.of(ellipses), "en", cfg) is Reason.ELLIPSIS_LINES
    no_punct = "\n".join(f"the fox and the bear went to the river number {i}" for i in range(6))
    assert quality_reason(no_punct, Words.of(no_punct), "en", cfg) is Reason.PUNCTUATION_LINES
    numbers = " ".join(str(i) for i in range(60)) + " the and of to with."
    assert quality_reason(numbers, Words.of(numbers), "en", cfg) is Reason.MEAN_WORD_LENGTH
    spam = "buy cheap shoes and the best " * 12
    assert quality_reason(spam + ".", Words.of(spam), "en", cfg) in {Reason.TOP_NGRAM, Reason.DUPLICATE_NGRAMS}


def test_duplicate_ngram_fraction_is_monotone_and_exact():
    words = Words.of("a b c d e x a b c d e y a b c d e f z")
    fractions = [duplicate_ngram_fraction(words, n) for n in range(1, 8)]
    assert fractions == sorted(fractions, reverse=True)
    assert fractions[4] == pytest.approx(15 / 19)  # the 5-gram "a b c d e" occurs 3 times: 15 of 19 one-letter words
    assert fractions[5] == 0.0


def test_language_identification():
    ident = LanguageIdentifier(("en", "ru"), 0.5)
    code_switched = ("Вчера я начал изучать machine learning и deep learning в университете, и мне очень "
                     "понравилось, как преподаватель объяснял transformers.")  # no ы/э: lingua decides, not the alphabet rule
    assert ident.guess(code_switched) == LangGuess("ru", ident.guess(code_switched).confidence)
    assert ident.guess(code_switched).confidence > 0.9
    assert ident.guess("Мы обсуждали, как fine-tuning помогает делать large language models полезнее.").code == "ru"
    assert ident.guess("We study машинное обучение at the university every single day.").code == "en"
    assert ident.guess("Швидка бура лисиця стрибає через ледачого пса, і це було весело.").code == "uk"
    assert ident.guess("12345 678 90 !!! ???").code == "und"
    assert ident.guess("東京は日本の首都で、とても大きな都市です。").code == "other-script"


def test_near_duplicate_detection_follows_the_threshold():
    """Pairs at Jaccard ~0.95 collide; unrelated documents of the same vocabulary do not."""
    rng = np.random.default_rng(0)
    vocab = [f"w{i}" for i in range(2000)]
    base = [vocab[i] for i in rng.integers(0, len(vocab), 400)]
    cfg = DedupConfig()
    index = NearDuplicateIndex(cfg)
    assert not index.check_and_add(minhash_signature(Words.of(" ".join(base)), cfg))
    caught = 0
    for trial in range(20):
        variant = list(base)
        variant[rng.integers(0, 400)] = "changed"  # one word: Jaccard of 5-grams ~ 0.976
        caught += index.check_and_add(minhash_signature(Words.of(" ".join(variant)), cfg))
    unrelated = sum(index.check_and_add(minhash_signature(Words.of(" ".join(vocab[i] for i in rng.integers(0, 2000, 400))), cfg))
                    for _ in range(20))
    assert caught == 20 and unrelated == 0
    assert index.bands == (9, 13)  # datasketch's choice for threshold 0.8 and 128 permutations


@pytest.mark.parametrize("words", [1, 3, 5, 400, 3000])
def test_minhash_signature_equals_datasketch(words):
    """The numpy signature is datasketch's affine32 MinHash of the same folded shingle hashes, value for value."""
    from datasketch import MinHash

    rng = np.random.default_rng(words)
    doc = Words.of(" ".join(f"w{i}" for i in rng.integers(0, 300, words)))
    for cfg in (DedupConfig(), DedupConfig(num_perm=64, shingle_words=3, seed=7)):
        shingles = doc.ngram_hashes(min(cfg.shingle_words, len(doc)))
        folded = ((shingles >> np.uint64(32)) ^ shingles) & np.uint64(0xFFFFFFFF)
        reference = MinHash(num_perm=cfg.num_perm, seed=cfg.seed, scheme="affine32", hashfunc=int)
        reference.update_batch(folded.tolist())
        signature = minhash_signature(doc, cfg)
        assert signature.dtype == np.uint32 and np.array_equal(signature, reference.hashvalues)
    assert minhash_signature(Words.of("!!!"), DedupConfig()) is None


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["1", "12", "_", "a", "я", "٣", "x1", "1x", " ", "  ", "\n", "\t", "²"]), max_size=30).map("".join))
def test_no_letter_word_pattern_equals_its_plain_form(text):
    import re

    from sunfish.data.quality import _NO_LETTER_WORD

    assert _NO_LETTER_WORD.findall(text) == re.findall(r"(?<!\S)[\d_]+(?!\S)", text)


def test_every_boilerplate_phrase_contains_its_literal():
    """The literal pre-check may skip the regex only if no match can lack every literal."""
    import re

    from sunfish.data.quality import _BOILERPLATE_PHRASES

    for literal, phrases in _BOILERPLATE_PHRASES:
        top_level = re.sub(r"\([^()]*\)\??", "", phrases)  # drop groups: what is left every match contains
        assert all(literal in alternative for alternative in top_level.split("|")), (literal, phrases)


def _reference_ngram_hashes(words: Words, n: int) -> np.ndarray:
    count = len(words) - n + 1
    if count <= 0:
        return np.zeros(0, np.uint64)
    acc = words.hashes[:count].copy()
    for k in range(1, n):
        acc *= np.uint64(0x9E3779B97F4A7C15)
        acc += words.hashes[k : k + count]
    return acc


def _reference_top_ngram_fraction(words: Words, n: int) -> float:
    """The plain form: count every distinct n-gram, take the most frequent (ties: smallest hash)."""
    hashes = _reference_ngram_hashes(words, n)
    values, first, counts = np.unique(hashes, return_index=True, return_counts=True)
    if len(hashes) < 2 or counts.max() < 2:
        return 0.0
    best = int(np.argmax(counts))
    return float(counts[best] * words.lengths[first[best] : first[best] + n].sum()) / max(int(words.lengths.sum()), 1)


def _reference_duplicate_ngram_fraction(words: Words, n: int) -> float:
    hashes = _reference_ngram_hashes(words, n)
    values, counts = np.unique(hashes, return_counts=True)
    covered = np.zeros(len(words), bool)
    for start in np.flatnonzero(np.isin(hashes, values[counts > 1])):
        covered[start : start + n] = True
    return float(words.lengths[covered].sum()) / max(int(words.lengths.sum()), 1)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["a", "bb", "ccc", "дом", "и", "the", "12", "x_y"]), max_size=60), st.integers(1, 7))
def test_ngram_statistics_equal_their_plain_forms(tokens, n):
    from sunfish.data.quality import top_ngram_fraction

    words = Words.of(" ".join(tokens))
    assert np.array_equal(words.ngram_hashes(n), _reference_ngram_hashes(words, n))
    assert top_ngram_fraction(words, n) == _reference_top_ngram_fraction(words, n)
    assert duplicate_ngram_fraction(words, n) == _reference_duplicate_ngram_fraction(words, n)
    assert words.exact_key() == Words.of(" ".join(tokens).upper()).exact_key()


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40) | st.lists(st.sampled_from(["e", "\u0301", "\u0308", "\n", "…", "№", "ﬁ", "\u1100", "\u1161",
                                                         "\u11a8", "Å", "\u0327", "½", "\r", "A"]), max_size=30).map("".join))
def test_line_wise_nfkc_equals_whole_text_nfkc(text):
    import unicodedata

    from sunfish.data.words import nfkc

    assert nfkc(text) == unicodedata.normalize("NFKC", text)
