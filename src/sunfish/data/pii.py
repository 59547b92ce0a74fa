"""PII scrubbing: e-mail addresses, phone numbers, IP addresses and payment card numbers become typed
placeholders (`<EMAIL>`, `<PHONE>`, `<IP_ADDRESS>`, `<CARD_NUMBER>`), counted per type.

Regular expressions find candidates and a validator confirms them, which keeps false positives in prose
(years, page numbers, dates, version strings) rare:
- IP addresses must parse with `ipaddress` (so 999.1.2.3 or a clock time 12:30:45 is left alone);
- card numbers are 13-19 digits, optionally grouped by single spaces or hyphens, that pass the Luhn
  checksum (ISO/IEC 7812) - a random digit string passes with probability 1/10;
- phone numbers are Russian (+7 or 8, then 10 digits in the usual groupings) or international
  (+ country code, 8 to 15 digits in all, E.164), or North American (NXX) NXX-XXXX with separators.
The order is e-mail, IP, card, phone: an earlier kind's placeholder is never re-matched by a later one.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter

from sunfish.data.report import PiiKind

_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@(?:[\w-]+\.)+[^\W\d_]{2,}(?![\w-])")
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w]|\.\d)")
_IPV6 = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:.])")
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
_PHONE_RU = re.compile(r"(?<![\w+])(?:\+7|8)[ \u00a0-]?\(?\d{3}\)?[ \u00a0-]?\d{3}[ \u00a0-]?\d{2}[ \u00a0-]?\d{2}(?!\d)")
_PHONE_INTL = re.compile(r"(?<![\w+])\+\d{1,3}(?:[ .\u00a0-]?\(?\d{1,4}\)?){2,6}(?!\d)")
_PHONE_NANP = re.compile(r"(?<!\d)\(?\b[2-9]\d{2}\)?[ .-][2-9]\d{2}[ .-]\d{4}(?!\d)")


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum: doubling every second digit from the right, the digit sum is a multiple of 10."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _is_ip(candidate: str) -> bool:
    try:
        ipaddress.ip_address(candidate)
    except ValueError:
        return False
    return True


def _is_card(candidate: str) -> bool:
    digits = re.sub(r"\D", "", candidate)
    return 13 <= len(digits) <= 19 and luhn_valid(digits)


def _is_phone(candidate: str) -> bool:
    return 8 <= sum(ch.isdigit() for ch in candidate) <= 15


# Phones, cards and IPv4 addresses all lie inside a run of at least 7 digits and separators that starts
# and ends with a digit. Such runs are rare in prose and a pattern that opens with \d is scanned fast, so
# the precise (slower) patterns run only on a small window around each run.
_DIGIT_RUN = re.compile(r"\d[\d ()\u00a0.:-]{5,}\d")
_IPV6_HINT = re.compile(r":[0-9A-Fa-f]{0,4}:")  # every IPv6 address has two colons at most 4 hex digits apart
_WINDOW_LEFT, _WINDOW_RIGHT = 2, 1  # context kept around a run: room for "+", "(" and the lookarounds
_DIGIT_RULES = (
    (PiiKind.IP_ADDRESS, _IPV4, _is_ip),
    (PiiKind.CARD_NUMBER, _CARD, _is_card),
    (PiiKind.PHONE, _PHONE_RU, None),
    (PiiKind.PHONE, _PHONE_INTL, _is_phone),
    (PiiKind.PHONE, _PHONE_NANP, None),
)


def _substitute(pattern: re.Pattern, kind: PiiKind, valid, text: str, counts: Counter) -> str:
    def replace(match: re.Match) -> str:
        if valid is not None and not valid(match.group(0)):
            return match.group(0)
        counts[kind] += 1
        return kind.placeholder

    return pattern.sub(replace, text)


def _scrub_digit_runs(text: str, counts: Counter) -> str:
    pieces, last = [], 0
    for run in _DIGIT_RUN.finditer(text):
        start, end = max(run.start() - _WINDOW_LEFT, last), min(run.end() + _WINDOW_RIGHT, len(text))
        window = text[start:end]
        for kind, pattern, valid in _DIGIT_RULES:
            window = _substitute(pattern, kind, valid, window, counts)
        pieces += [text[last:start], window]
        last = end
    if not pieces:
        return text
    pieces.append(text[last:])
    return "".join(pieces)


def scrub(text: str, counts: Counter | None = None) -> tuple[str, Counter]:
    """`text` with PII replaced by placeholders, and the replacements per `PiiKind` (added to `counts`)."""
    counts = Counter() if counts is None else counts
    if "@" in text:
        text = _substitute(_EMAIL, PiiKind.EMAIL, None, text, counts)
    if _IPV6_HINT.search(text):
        text = _substitute(_IPV6, PiiKind.IP_ADDRESS, _is_ip, text, counts)
    text = _scrub_digit_runs(text, counts)
    return text, counts
