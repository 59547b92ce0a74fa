"""Corpus fidelity (eval/fidelity.py): the fraction of a sample's word trigrams found in the training corpus."""

from __future__ import annotations

import pytest

from sunfish.eval.fidelity import CorpusNgrams, words


def test_words_are_lower_cased_with_punctuation_apart():
    assert words("Once upon a time, Лиса ушла.") == ["once", "upon", "a", "time", ",", "лиса", "ушла", "."]


def test_overlap_counts_the_corpus_trigrams_of_the_samples():
    index = CorpusNgrams(["The cat sat on the mat.", "Кот спал на окне."])
    assert index.overlap(["the cat sat on the mat."]).fraction == 1.0
    mixed = index.overlap(["The cat sat on a dog"])  # the cat sat, cat sat on: found; sat on a, on a dog: not
    assert (mixed.found, mixed.total) == (2, 4) and str(mixed).startswith("0.50 of 4 word 3-grams")
    assert index.overlap(["mat . кот"]).fraction == 0.0  # documents are indexed apart: no trigram across them
    assert index.overlap(["кот спал на"]).fraction == 1.0
    assert index.overlap(["too short"]).total == 0 and index.overlap(["too short"]).fraction == 0.0
    with pytest.raises(ValueError, match="outside 1..3"):
        index.overlap(["a b c d"], n=4)

