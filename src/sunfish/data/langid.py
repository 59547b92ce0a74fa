"""Offline language identification for Latin- and Cyrillic-script languages with lingua.

lingua's wheel carries its n-gram models, so this works without a network. Loading all 75 languages
takes about 1.3 GB, so two small detectors are built instead: one over Latin-script and one over
Cyrillic-script languages (the kept languages plus the neighbours they are most often confused with),
in lingua's low-accuracy (trigram) mode, which is reliable on the few hundred characters sampled here.

Russian has a shortcut, the alphabet rule lingua itself applies first: Cyrillic text that uses only
the 33 letters of the Russian alphabet and has "ы" or "э" is Russian (Ukrainian, Bulgarian, Serbian and
Macedonian have neither letter; Belarusian, Kazakh, Kyrgyz and Mongolian, which have them, always use
letters outside the Russian alphabet too: і, ў, ә, ө, ү, ...). It decides most Russian documents
without the n-gram models, which cost ~0.4 ms per document.

The script most words are written in decides which detector runs: a Russian sentence with English
terms in it ("Я изучаю machine learning и deep learning в университете": five Cyrillic words, four
Latin) is judged among Cyrillic languages, so code-switching does not flip it to English. Words, not
letters, are counted because technical terms are long and Russian function words short. Text without
letters, or mostly in another script, is "und" (undetermined) or "other-script" without a detector.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

# Candidates per script: the languages these corpora meet most (detection cost grows with their number).
LATIN = ("en", "de", "fr", "es", "it", "pt", "nl", "pl", "sv", "tr", "la")
CYRILLIC = ("ru", "uk", "be", "bg", "mk", "sr", "kk", "mn")
SUPPORTED = ("en", "de", "fr", "es", "it", "pt", "nl", "pl", "sv", "tr", "la", "cs", "sk", "da", "ro", "hu", "fi",
             "id", "ca", "hr", "sl", "lt", "lv", "et", "ru", "uk", "be", "bg", "mk", "sr", "kk", "mn")
UNDETERMINED = "und"  # no letters, or the best language's confidence is below the threshold
OTHER_SCRIPT = "other-script"  # most letters are neither Latin nor Cyrillic

_WORD = re.compile(r"[^\W\d_]+")  # runs of letters
_LATIN_WORD = re.compile(r"[A-Za-z\u00C0-\u024F]+")
_CYRILLIC_WORD = re.compile(r"[\u0400-\u04FF]+")
_NON_RUSSIAN_CYRILLIC = re.compile(r"[\u0400\u0402-\u040F\u0450\u0452-\u045F\u0460-\u04FF]")  # all but А-я, Ёё
_RUSSIAN_ONLY_AMONG_SLAVIC = re.compile(r"[ыэЫЭ]")
SAMPLE_CHARS = 300  # characters judged per document: three windows of 100 (start, middle, end)


@dataclass(frozen=True)
class LangGuess:
    code: str  # ISO 639-1 code, or UNDETERMINED / OTHER_SCRIPT
    confidence: float  # lingua's confidence among the loaded languages, 0..1


def check_languages(codes: tuple[str, ...]) -> None:
    """Raise ValueError (one sentence) unless every code is a supported Latin- or Cyrillic-script language."""
    unknown = [c for c in codes if c not in SUPPORTED]
    if unknown:
        raise ValueError(f"cannot identify the language(s) {', '.join(unknown)}; supported codes are {', '.join(sorted(SUPPORTED))}")
    if not codes:
        raise ValueError("no language to keep; pass --langs, e.g. --langs en,ru")


def sample(text: str, chars: int = SAMPLE_CHARS) -> str:
    """The whole text if short, else windows at its start, middle and end (books open with title pages)."""
    if len(text) <= chars:
        return text
    w = chars // 3
    mid = len(text) // 2
    return " ".join((text[:w], text[mid - w // 2 : mid + w - w // 2], text[-w:]))


def _is_plainly_russian(text: str) -> bool:
    return _RUSSIAN_ONLY_AMONG_SLAVIC.search(text) is not None and _NON_RUSSIAN_CYRILLIC.search(text) is None


@functools.lru_cache(maxsize=8)
def _detector(codes: tuple[str, ...]):
    from lingua import IsoCode639_1, Language, LanguageDetectorBuilder

    languages = [Language.from_iso_code_639_1(getattr(IsoCode639_1, c.upper())) for c in codes]
    return LanguageDetectorBuilder.from_languages(*languages).with_low_accuracy_mode().build()


class LanguageIdentifier:
    """Guesses the language of a document; `keep` languages are always among the candidates."""

    def __init__(self, keep: tuple[str, ...], threshold: float):
        check_languages(keep)
        self.keep = keep
        self.threshold = threshold
        self._cyrillic = tuple(dict.fromkeys(tuple(c for c in keep if c in CYRILLIC) + CYRILLIC))
        self._latin = tuple(dict.fromkeys(tuple(c for c in keep if c not in CYRILLIC) + LATIN))

    def warm_up(self) -> None:
        """Build both detectors and load their models now, so the first document does not pay for it."""
        for codes, text in ((self._latin, "The quick brown fox"), (self._cyrillic, "Съешь же ещё этих мягких булок")):
            _detector(codes).compute_language_confidence_values(text)

    def guess(self, text: str) -> LangGuess:
        part = sample(text)
        words = len(_WORD.findall(part))
        if words == 0:
            return LangGuess(UNDETERMINED, 0.0)
        latin, cyrillic = len(_LATIN_WORD.findall(part)), len(_CYRILLIC_WORD.findall(part))
        if max(latin, cyrillic) * 2 < words:
            return LangGuess(OTHER_SCRIPT, 0.0)
        if cyrillic >= latin and "ru" in self.keep and _is_plainly_russian(part):
            return LangGuess("ru", 1.0)
        if cyrillic >= latin:
            codes, words_of_script = self._cyrillic, _CYRILLIC_WORD.findall(part)
        else:
            codes, words_of_script = self._latin, _LATIN_WORD.findall(part)
        # Only the words of the chosen script: lingua gives no language at all to text holding letters
        # none of its candidates use (a Cyrillic-only detector on "изучаю machine learning").
        ranked = _detector(codes).compute_language_confidence_values(" ".join(words_of_script))
        best = ranked[0]
        code = best.language.iso_code_639_1.name.lower()
        if best.value < self.threshold:
            return LangGuess(UNDETERMINED, float(best.value))
        return LangGuess(code, float(best.value))
