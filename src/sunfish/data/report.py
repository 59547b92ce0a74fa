"""What happened to every document: the removal reasons, the per-step counts and the printed report.

Every input document ends in exactly one place: kept, or removed for the first reason that applies, in
the order the steps run (empty, exact duplicate, language, quality rules, near duplicate). So
`kept + sum(removed) == total` always holds; `check()` asserts it before a report is written.
"""

from __future__ import annotations

import enum
from collections import Counter
from dataclasses import dataclass, field


class Reason(str, enum.Enum):
    """Why a document was removed (values are the keys in the manifest and the report)."""

    EMPTY = "empty"  # nothing left after boilerplate lines were removed
    EXACT_DUPLICATE = "exact_duplicate"  # same normalised text as an earlier document
    LANGUAGE = "language"  # not one of the kept languages, or below the confidence threshold
    TOO_FEW_WORDS = "too_few_words"
    TOO_MANY_WORDS = "too_many_words"
    MEAN_WORD_LENGTH = "mean_word_length"
    SYMBOL_RATIO = "symbol_ratio"  # '#' and ellipses per word
    BULLET_LINES = "bullet_lines"
    ELLIPSIS_LINES = "ellipsis_lines"
    ALPHA_WORDS = "alpha_words"  # too few words with a letter
    STOP_WORDS = "stop_words"  # too few of the language's stop words
    PUNCTUATION_LINES = "punctuation_lines"  # too few lines end in terminal punctuation
    LOREM_IPSUM = "lorem_ipsum"
    DUPLICATE_LINES = "duplicate_lines"
    DUPLICATE_PARAGRAPHS = "duplicate_paragraphs"
    TOP_NGRAM = "top_ngram"  # one short n-gram covers too many characters
    DUPLICATE_NGRAMS = "duplicate_ngrams"  # repeated long n-grams cover too many characters
    NEAR_DUPLICATE = "near_duplicate"  # MinHash LSH match with an earlier kept document


class PiiKind(str, enum.Enum):
    """Personal data replaced by a typed placeholder (the value is the placeholder's name)."""

    EMAIL = "EMAIL"
    PHONE = "PHONE"
    IP_ADDRESS = "IP_ADDRESS"
    CARD_NUMBER = "CARD_NUMBER"

    @property
    def placeholder(self) -> str:
        return f"<{self.value}>"


@dataclass
class CleanReport:
    """Counts over all inputs; `by_source` holds the same counts split per source."""

    documents: int = 0
    bytes_in: int = 0  # UTF-8 bytes of the input documents
    kept: int = 0
    bytes_kept: int = 0  # UTF-8 bytes of the kept documents after scrubbing
    removed: Counter = field(default_factory=Counter)  # Reason -> documents
    removed_languages: Counter = field(default_factory=Counter)  # detected code -> documents removed for language
    kept_languages: Counter = field(default_factory=Counter)  # code -> documents kept
    pii: Counter = field(default_factory=Counter)  # PiiKind -> replacements
    boilerplate_lines: int = 0  # lines removed as boilerplate from kept and removed documents
    by_source: dict = field(default_factory=dict)  # source -> Counter of "kept" and Reason values

    def check(self) -> None:
        """Every document is accounted for exactly once."""
        accounted = self.kept + sum(self.removed.values())
        if accounted != self.documents:
            raise AssertionError(f"report accounts for {accounted} of {self.documents} documents")

    def as_dict(self) -> dict:
        return {
            "documents": self.documents,
            "bytes_in": self.bytes_in,
            "kept": self.kept,
            "bytes_kept": self.bytes_kept,
            "removed": {r.value: self.removed.get(r, 0) for r in Reason},
            "removed_languages": dict(sorted(self.removed_languages.items())),
            "kept_languages": dict(sorted(self.kept_languages.items())),
            "pii_replaced": {k.value: self.pii.get(k, 0) for k in PiiKind},
            "boilerplate_lines_removed": self.boilerplate_lines,
            "by_source": {name: dict(sorted(c.items())) for name, c in self.by_source.items()},
        }


def table(rows: list[tuple], header: tuple) -> str:
    """A plain-text table, numbers right-aligned, with thousands separators."""
    cells = [[_fmt(v) for v in row] for row in [header, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = []
    for n, row in enumerate(cells):
        parts = [c.rjust(w) if n and _numeric(rows[n - 1][i]) else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(parts).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _numeric(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _fmt(value) -> str:
    if isinstance(value, bool) or not _numeric(value):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.3f}" if abs(value) < 100 else f"{value:,.1f}"


def format_clean_report(report: CleanReport) -> str:
    """The cleaning part of the printed report: one row per step, documents and percent of the input."""
    total = max(report.documents, 1)
    rows: list[tuple] = [("input documents", report.documents, 100.0)]
    for reason in Reason:
        count = report.removed.get(reason, 0)
        if count:
            rows.append((f"removed: {reason.value}", count, 100.0 * count / total))
    rows.append(("kept", report.kept, 100.0 * report.kept / total))
    text = table(rows, ("step", "documents", "%"))
    if report.removed_languages:
        langs = ", ".join(f"{k} {v:,}" for k, v in sorted(report.removed_languages.items()))
        text += f"\nlanguages removed: {langs}"
    pii = ", ".join(f"{k.value} {report.pii.get(k, 0):,}" for k in PiiKind)
    text += f"\nPII replaced: {pii}; boilerplate lines removed: {report.boilerplate_lines:,}"
    if len(report.by_source) > 1:
        rows = []
        for name, counts in report.by_source.items():
            total = sum(counts.values())
            removed = sorted(((n, r) for r, n in counts.items() if r != "kept"), reverse=True)
            top = ", ".join(f"{r} {n:,}" for n, r in removed[:3]) or "-"
            rows.append((name, total, counts.get("kept", 0), 100.0 * counts.get("kept", 0) / max(total, 1), top))
        text += "\n\n" + table(rows, ("source", "documents", "kept", "kept %", "most removed"))
    return text
