"""Cleaning: from raw documents to kept, scrubbed documents, with every removal counted.

The steps, in the order that decides a document's removal reason (`report.Reason`):
1. boilerplate lines removed (`quality.strip_boilerplate`); nothing left -> EMPTY;
2. exact duplicate of an earlier document (normalised-text hash, `words.Words.exact_key`);
3. language not kept, or identified below the confidence threshold (`langid`);
4. quality rules (`quality`), first failing rule;
5. near duplicate of an earlier kept document (MinHash LSH, `dedup`).
Kept documents have their PII replaced by placeholders (`pii`).

Steps 1, 3, 4, the PII scrub and the MinHash signature depend on one document only and run in worker
processes (`clean_chunk`); the two duplicate indexes are global state and live in the main process
(`Deduplicator`), which consumes the workers' results in input order.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from sunfish.config import Section, knob
from sunfish.data import pii
from sunfish.data.dedup import DedupConfig, ExactIndex, NearDuplicateIndex, minhash_signature
from sunfish.data.langid import LanguageIdentifier
from sunfish.data.quality import QualityConfig, quality_reason, strip_boilerplate
from sunfish.data.report import CleanReport, Reason
from sunfish.data.words import Words


@dataclass(frozen=True, kw_only=True)
class CleanConfig(Section):
    SECTION = "clean"

    langs: tuple[str, ...] = knob(("en", "ru"), "ISO 639-1 codes of the languages to keep")
    lang_threshold: float = knob(0.5, "lingua confidence below which a document's language is undetermined, [0, 1]", lo=0.0, hi=1.0)
    scrub_pii: bool = knob(True, "replace e-mails, phones, IPs and card numbers by placeholders")
    quality: QualityConfig = field(default_factory=QualityConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)


@dataclass
class Cleaned:
    """What a worker learned about one document."""

    text: str  # the document after boilerplate removal and, if it passed steps 1, 3, 4, PII scrubbing
    bytes_in: int  # UTF-8 bytes of the raw document
    lang: str  # detected language code ('und' or 'other-script' when none)
    reason: Reason | None  # a per-document removal reason (EMPTY, LANGUAGE or a quality rule), or None
    key: bytes = b""  # exact-dedup key (empty for EMPTY documents)
    signature: np.ndarray | None = None  # (num_perm,) uint32 MinHash, only for documents that passed
    pii: Counter = field(default_factory=Counter)  # PiiKind -> replacements
    boilerplate: int = 0  # boilerplate lines removed


class StageClock:
    """CPU seconds of this process per named stage, summed over documents (for the throughput table).

    CPU time, not wall time: on a machine shared with other work a worker that waits for a core would
    otherwise be charged for the wait.
    """

    def __init__(self) -> None:
        self.seconds: Counter = Counter()
        self._last = time.process_time()

    def lap(self, stage: str) -> None:
        now = time.process_time()
        self.seconds[stage] += now - self._last
        self._last = now

    def restart(self) -> None:
        self._last = time.process_time()


def clean_document(text: str, cfg: CleanConfig, ident: LanguageIdentifier, clock: StageClock) -> Cleaned:
    """Run the per-document steps on one raw document."""
    clock.restart()
    size = len(text.encode("utf-8"))
    stripped, boilerplate = strip_boilerplate(text, cfg.quality)
    if not stripped:
        return Cleaned(text="", bytes_in=size, lang="und", reason=Reason.EMPTY, boilerplate=boilerplate)
    words = Words.of(stripped)
    key = words.exact_key()
    clock.lap("normalise")
    guess = ident.guess(stripped)
    clock.lap("language")
    result = Cleaned(text=stripped, bytes_in=size, lang=guess.code, reason=None, key=key, boilerplate=boilerplate)
    if guess.code not in cfg.langs:
        result.reason = Reason.LANGUAGE
        return result
    result.reason = quality_reason(stripped, words, guess.code, cfg.quality)
    clock.lap("quality")
    if result.reason is not None:
        return result
    if cfg.scrub_pii:
        result.text, result.pii = pii.scrub(stripped)
        clock.lap("pii")
    if cfg.dedup.minhash:
        result.signature = minhash_signature(words, cfg.dedup)
        clock.lap("minhash")
    return result


_WORKER: dict = {}


def init_worker(cfg: CleanConfig) -> None:
    """Per-process set-up: the config, the language detectors and the MinHash permutations, all built now
    so that the per-stage times measure steady-state work."""
    _WORKER["cfg"] = cfg
    _WORKER["ident"] = LanguageIdentifier(cfg.langs, cfg.lang_threshold)
    _WORKER["ident"].warm_up()
    if cfg.dedup.minhash:
        minhash_signature(Words.of("warm up"), cfg.dedup)


def clean_chunk(texts: list[str]) -> tuple[list[Cleaned], Counter]:
    """Worker entry point: clean a chunk of documents; also return seconds per stage."""
    clock = StageClock()
    out = [clean_document(t, _WORKER["cfg"], _WORKER["ident"], clock) for t in texts]
    return out, clock.seconds


class Deduplicator:
    """The main-process half: global duplicate indexes and the report, fed in input order."""

    def __init__(self, cfg: CleanConfig):
        self.cfg = cfg
        self.exact = ExactIndex()
        self.near = NearDuplicateIndex(cfg.dedup) if cfg.dedup.minhash else None
        self.report = CleanReport()

    def decide(self, doc: Cleaned, source: str = "") -> Reason | None:
        """The document's removal reason (None = keep), with the report (and `source`'s counts) updated."""
        r = self.report
        r.documents += 1
        r.bytes_in += doc.bytes_in
        r.boilerplate_lines += doc.boilerplate
        reason = doc.reason
        if reason is not Reason.EMPTY and self.cfg.dedup.exact and self.exact.check_and_add(doc.key):
            reason = Reason.EXACT_DUPLICATE
        elif reason is None and self.near is not None and doc.signature is not None:
            if self.near.check_and_add(doc.signature):
                reason = Reason.NEAR_DUPLICATE
        r.by_source.setdefault(source, Counter())["kept" if reason is None else reason.value] += 1
        if reason is None:
            r.kept += 1
            r.bytes_kept += len(doc.text.encode("utf-8"))
            r.kept_languages[doc.lang] += 1
            r.pii.update(doc.pii)
        else:
            r.removed[reason] += 1
            if reason is Reason.LANGUAGE:
                r.removed_languages[doc.lang] += 1
        return reason
