"""Quality heuristics in the spirit of Gopher (Rae et al. 2021, appendix A), C4 (Raffel et al. 2020) and
FineWeb (Penedo et al. 2024): cheap document statistics that separate prose from boilerplate, lists,
spam and machine-made repetition.

Defaults follow Gopher's thresholds, with changes measured on the books in ../shared/corpora (Tolstoy,
Dostoevsky, Chekhov, Gutenberg classics), which the Gopher values drop although they are clean: at most
1,000,000 words (Gopher: 100,000, which drops every novel), at least 20 (short stories and news items
stay), ellipsis lines up to 0.5 and symbol ratio up to 0.15 (Chekhov and Dostoevsky reach 0.35 and
0.11), duplicate paragraphs by count up to 0.6 (numbered chapters and one-word replies reach 0.47; the
character-based limit stays at Gopher's 0.2). Rules run cheapest first and the first failing rule is the reason.
Boilerplate *lines* (C4's policy phrases - "terms of use", "privacy policy", "uses cookies" - notices
to enable JavaScript, "all rights reserved", and their Russian counterparts) are removed when short,
before the rules run, as C4 does with its line filters; a story line about baking cookies stays.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from sunfish.config import Section, knob
from sunfish.data.report import Reason
from sunfish.data.words import Words

STOP_WORDS = {  # Gopher's English list; for Russian the most frequent function words
    "en": frozenset({"the", "be", "to", "of", "and", "that", "have", "with"}),
    "ru": frozenset({"и", "в", "не", "на", "я", "что", "он", "с", "как", "это", "а", "но", "по", "она", "к", "из",
                     "у", "за", "то", "так", "же", "от", "все", "его"}),
}
BULLETS = ("•", "●", "○", "■", "□", "▪", "▫", "‣", "◦", "*", "-")  # not dashes: Russian dialogue opens with "—"
TERMINAL = (".", "!", "?", "…", '"', "'", "”", "»", ")", "]", ":", ";")
_BOILERPLATE_PHRASES = (  # (a literal every match contains, the phrases): C4's policy phrases, notices about
    # JavaScript, and their Russian counterparts. The literal lets most documents skip the regex (str.find is ~10x faster).
    ("terms of use", r"terms of use"),
    ("privacy policy", r"privacy policy"),
    ("cookie", r"cookie policy|uses cookies|use of cookies|use cookies|accept (?:all )?cookies"),
    ("javascript", r"(?:enable|turn on|requires?) javascript|javascript (?:is|must be) (?:disabled|enabled|required)"),
    ("all rights reserved", r"all rights reserved"),
    ("sign up for our newsletter", r"sign up for our newsletter"),
    ("конфиденциальности", r"политик\w* конфиденциальности"),
    ("пользовательск", r"пользовательск\w* соглашени\w*"),
    ("все права защищены", r"все права защищены"),
    ("условия использования", r"условия использования"),
    ("cookie", r"(?:использует|используем|используют) (?:файлы )?cookie"),
    ("javascript", r"включите javascript"),
    ("рассылку", r"подпи\w+ на (?:нашу )?рассылку"),
)
_BOILERPLATE = re.compile("|".join(phrases for _, phrases in _BOILERPLATE_PHRASES))
_BOILERPLATE_LITERALS = tuple(dict.fromkeys(literal for literal, _ in _BOILERPLATE_PHRASES))
_LOREM = re.compile(r"lorem ipsum")
# A whole word of digits and underscores: (?<!\S)[\d_]+(?!\S), written to open with the character class so
# that the regex engine skips ahead to candidate characters (3x faster on text with few digits).
_NO_LETTER_WORD = re.compile(r"[\d_](?<!\S[\d_])[\d_]*(?!\S)")
_PARAGRAPH = re.compile(r"\n\s*\n")


@dataclass(frozen=True, kw_only=True)
class QualityConfig(Section):
    SECTION = "quality"

    enabled: bool = knob(True, "apply the rules below (boilerplate lines are removed either way unless disabled)")
    remove_boilerplate: bool = knob(True, "drop short cookie/privacy/JavaScript/copyright lines")
    boilerplate_max_words: int = knob(30, "only lines of at most this many words count as boilerplate", lo=1)
    min_words: int = knob(20, "normalised words per document, at least", lo=0)
    max_words: int = knob(1_000_000, "at most (Gopher: 100,000, which drops whole books)", lo=1)
    min_mean_word_length: float = knob(3.0, "characters (Gopher)")
    max_mean_word_length: float = knob(10.0, "characters (Gopher)")
    max_symbol_ratio: float = knob(0.15, "('#' + '...' + '…') per word (Gopher: 0.1)")
    max_bullet_lines: float = knob(0.9, "fraction of lines opening with a bullet (Gopher)")
    max_ellipsis_lines: float = knob(0.5, "fraction of lines ending in an ellipsis (Gopher: 0.3)")
    min_alpha_words: float = knob(0.8, "fraction of words with a letter (Gopher)")
    min_stop_words: int = knob(2, "stop-word occurrences, for languages with a list (Gopher: 2)", lo=0)
    min_punctuation_lines: float = knob(0.12, "fraction of lines ending in terminal punctuation (FineWeb)")
    max_duplicate_lines: float = knob(0.3, "fraction of lines that repeat an earlier line (Gopher)")
    max_duplicate_line_chars: float = knob(0.2, "fraction of characters in such lines (Gopher)")
    max_duplicate_paragraphs: float = knob(0.6, "the same for blank-line separated paragraphs (Gopher: 0.3)")
    max_duplicate_paragraph_chars: float = knob(0.2, "fraction of characters in such paragraphs (Gopher: 0.2)")
    max_top_ngram: tuple[float, float, float] = knob((0.20, 0.18, 0.16), "chars in the top 2-, 3-, 4-gram (Gopher)")
    max_duplicate_ngrams: tuple[float, ...] = knob((0.15, 0.14, 0.13, 0.12, 0.11, 0.10), "chars in repeated 5..10-grams")


def strip_boilerplate(text: str, cfg: QualityConfig) -> tuple[str, int]:
    """`text` without short boilerplate lines, and how many lines went."""
    if not cfg.remove_boilerplate:
        return text, 0
    lowered = text.lower()
    if not any(literal in lowered for literal in _BOILERPLATE_LITERALS) or not _BOILERPLATE.search(lowered):
        return text, 0
    kept, removed = [], 0
    for line in text.split("\n"):
        if len(line.split()) <= cfg.boilerplate_max_words and _BOILERPLATE.search(line.lower()):
            removed += 1
        else:
            kept.append(line)
    return "\n".join(kept).strip(), removed


def quality_reason(text: str, words: Words, lang: str, cfg: QualityConfig) -> Reason | None:
    """The first rule `text` fails, or None if it passes them all."""
    if not cfg.enabled:
        return None
    for check in (_size_rules, _line_rules, _duplicate_text_rules, _ngram_rules):
        reason = check(text, words, lang, cfg)
        if reason is not None:
            return reason
    return None


def _size_rules(text: str, words: Words, lang: str, cfg: QualityConfig) -> Reason | None:
    n = len(words)
    if n < cfg.min_words:
        return Reason.TOO_FEW_WORDS
    if n > cfg.max_words:
        return Reason.TOO_MANY_WORDS
    mean = float(words.lengths.mean())
    if not cfg.min_mean_word_length <= mean <= cfg.max_mean_word_length:
        return Reason.MEAN_WORD_LENGTH
    symbols = text.count("#") + text.count("...") + text.count("…")
    if symbols > cfg.max_symbol_ratio * n:
        return Reason.SYMBOL_RATIO
    no_letter = len(_NO_LETTER_WORD.findall(" ".join(words.words)))
    if n - no_letter < cfg.min_alpha_words * n:
        return Reason.ALPHA_WORDS
    stops = STOP_WORDS.get(lang)
    if stops is not None and cfg.min_stop_words > 0 and not _has_stop_words(words.words, stops, cfg.min_stop_words):
        return Reason.STOP_WORDS
    if _LOREM.search(text.lower()):
        return Reason.LOREM_IPSUM
    return None


def _has_stop_words(words: list[str], stops: frozenset, needed: int) -> bool:
    found = 0
    for w in words:
        if w in stops:
            found += 1
            if found >= needed:
                return True
    return False


def _line_rules(text: str, words: Words, lang: str, cfg: QualityConfig) -> Reason | None:
    lines = [line.strip() for line in text.split("\n")]
    lines = [line for line in lines if line]
    n = len(lines)
    if sum(line.startswith(BULLETS) for line in lines) > cfg.max_bullet_lines * n:
        return Reason.BULLET_LINES
    if sum(line.endswith(("...", "…")) for line in lines) > cfg.max_ellipsis_lines * n:
        return Reason.ELLIPSIS_LINES
    if sum(line.endswith(TERMINAL) for line in lines) < cfg.min_punctuation_lines * n:
        return Reason.PUNCTUATION_LINES
    return None


def _duplicate_fractions(parts: list[str]) -> tuple[float, float]:
    """(fraction of parts that repeat an earlier part, fraction of characters in them)."""
    seen: set[str] = set()
    dup = dup_chars = total_chars = 0
    for part in parts:
        total_chars += len(part)
        if part in seen:
            dup += 1
            dup_chars += len(part)
        else:
            seen.add(part)
    return dup / max(len(parts), 1), dup_chars / max(total_chars, 1)


def _duplicate_text_rules(text: str, words: Words, lang: str, cfg: QualityConfig) -> Reason | None:
    lines = [line.strip() for line in text.split("\n") if line.strip()]
    frac, chars = _duplicate_fractions(lines)
    if frac > cfg.max_duplicate_lines or chars > cfg.max_duplicate_line_chars:
        return Reason.DUPLICATE_LINES
    paragraphs = [p.strip() for p in _PARAGRAPH.split(text) if p.strip()]
    frac, chars = _duplicate_fractions(paragraphs)
    if frac > cfg.max_duplicate_paragraphs or chars > cfg.max_duplicate_paragraph_chars:
        return Reason.DUPLICATE_PARAGRAPHS
    return None


def top_ngram_fraction(words: Words, n: int) -> float:
    """Characters covered by the most frequent word n-gram (count x its length) over all word characters."""
    hashes = words.ngram_hashes(n)  # (G,)
    ordered = np.sort(hashes)
    run_ends = np.flatnonzero(ordered[1:] != ordered[:-1])  # last index of each run of equal hashes but the final run
    if len(run_ends) == max(len(ordered) - 1, 0):
        return 0.0  # no n-gram occurs twice
    bounds = np.concatenate(([-1], run_ends, [len(ordered) - 1]))  # (U+1,)
    runs = bounds[1:] - bounds[:-1]  # (U,) occurrences of each distinct n-gram, in hash order
    best = int(np.argmax(runs))
    where = int(np.argmax(hashes == ordered[bounds[best + 1]]))  # its first occurrence
    length = int(words.lengths[where : where + n].sum())  # its characters
    return float(runs[best] * length) / max(words.characters, 1)


def duplicate_ngram_fraction(words: Words, n: int) -> float:
    """Characters of words inside any n-gram that occurs more than once, over all word characters.

    Non-increasing in n: a repeated (n+1)-gram contains two repeated n-grams over the same words.
    """
    hashes = words.ngram_hashes(n)  # (G,)
    if len(hashes) < 2:
        return 0.0
    order = np.argsort(hashes)  # the set of repeated positions does not depend on how ties are ordered
    ordered = hashes[order]
    same = ordered[1:] == ordered[:-1]  # (G-1,) neighbours in sorted order are equal
    if not same.any():
        return 0.0
    repeated_sorted = np.zeros(len(hashes), bool)
    repeated_sorted[1:] |= same
    repeated_sorted[:-1] |= same
    starts = order[repeated_sorted]  # start positions of repeated n-grams
    w = len(words)
    edges = np.bincount(starts, minlength=w + 1) - np.bincount(starts + n, minlength=w + 1)  # (W+1,) +1 in, -1 out
    covered = np.cumsum(edges)[:w] > 0  # (W,) word inside some repeated n-gram
    return float(words.lengths[covered].sum()) / max(words.characters, 1)


def _ngram_rules(text: str, words: Words, lang: str, cfg: QualityConfig) -> Reason | None:
    for n, limit in enumerate(cfg.max_top_ngram, start=2):
        if top_ngram_fraction(words, n) > limit:
            return Reason.TOP_NGRAM
    for n, limit in enumerate(cfg.max_duplicate_ngrams, start=5):
        fraction = duplicate_ngram_fraction(words, n)
        if fraction > limit:
            return Reason.DUPLICATE_NGRAMS
        if fraction <= min(cfg.max_duplicate_ngrams[n - 5 :]):
            break  # longer n-grams cover no more characters, so every later limit holds too
    return None
