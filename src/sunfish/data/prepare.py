"""`sunfish data prepare`: raw text in, packed token shards and a manifest out.

Streaming over worker processes, never holding the corpus in memory. Workers clean chunks of documents
(`clean.clean_chunk`); this process decides duplicates in input order (`clean.Deduplicator`) and routes
each kept document to its stream (source x language) and split (train / val).
- With a tokenizer given, one pass: the workers also tokenize the documents that passed their checks
  (`pack.tokenize_chunk`), and kept documents' tokens go straight to the shards (`pack.ShardWriter`,
  one per stream and split).
- Without one, two passes: kept documents go to temporary files under OUT/.work, a tokenizer is trained
  on the kept training text, then the temporary files are tokenized in workers and packed.
Both give the same shards for the same tokenizer: each stream and split receives its documents in the
order they were kept. The manifest is written last, under a temporary name and renamed: a folder
without manifest.json is an unfinished preparation, and running the command again starts it over.
`shard_format` chooses the container of the same sequences: memory-mapped `.bin` arrays (the default) or
WebDataset tar shards for streaming (`sunfish.data.tarshards`, format "sunfish-tar/1" in the manifest).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from sunfish.data import mix as mixing
from sunfish.data.clean import CleanConfig, Deduplicator, clean_chunk, init_worker
from sunfish.data.pack import PackConfig, ShardWriter, is_validation, token_dtype, tokenize_chunk
from sunfish.data.shards import FORMAT, MANIFEST
from sunfish.data.tarshards import TAR_FORMAT, TOKENS_FIELD, ShardFormat, TarShardWriter
from sunfish.data.report import CleanReport, Reason, format_clean_report, table
from sunfish.data.sources import DataError, Source, parse_sources
from sunfish.data.workers import Workers, default_workers
from sunfish.progress import progress as show_progress
from sunfish.tokenizer import Tokenizer, train_bpe_tokenizer

CHUNK_CHARS = 1 << 20  # characters of text per task sent to a worker
SPLITS = ("train", "val")
# Progress written to a file or CI log (not a terminal) is a plain line each CLEAN_LINE_BYTES of input text
# while cleaning (the total is unknown), and each 1/PACK_LINE_PARTS of the documents (5%) while packing.
CLEAN_LINE_BYTES = 500_000_000
PACK_LINE_PARTS = 20
_OWNED = ("train", "val", ".work", "rejects", MANIFEST, "tokenizer.json", "tokenizer_config.json")


@dataclass
class PrepareResult:
    out: Path
    manifest: dict
    report: str  # the printed report
    seconds: Counter  # stage -> CPU seconds (summed over workers for the stages they run)
    wall_seconds: float


class WorkFiles:
    """Kept documents as JSON lines, one temporary file per (stream, split), in the order they were kept."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.counts: Counter = Counter()  # (stream, split) -> documents
        self._files: dict = {}
        folder.mkdir(parents=True, exist_ok=True)

    def add(self, stream: str, split: str, text: str) -> None:
        key = (stream, split)
        if key not in self._files:
            self._files[key] = (self.folder / f"{stream}.{split}.jsonl").open("w", encoding="utf-8")
        self._files[key].write(json.dumps(text, ensure_ascii=False) + "\n")
        self.counts[key] += 1

    def close(self) -> None:
        for f in self._files.values():
            f.close()

    def keys(self) -> list[tuple[str, str]]:
        return sorted(self.counts)

    def texts(self, stream: str, split: str) -> Iterator[str]:
        with (self.folder / f"{stream}.{split}.jsonl").open(encoding="utf-8") as f:
            for line in f:
                yield json.loads(line)


def _chunks(texts: Iterator[str], tag) -> Iterator[tuple]:
    """(tag, [documents]) with about CHUNK_CHARS characters each."""
    chunk, size = [], 0
    for text in texts:
        chunk.append(text)
        size += len(text)
        if size >= CHUNK_CHARS:
            yield tag, chunk
            chunk, size = [], 0
    if chunk:
        yield tag, chunk


def _clean_task(item: tuple) -> tuple:
    """Worker: clean a chunk; with a tokenizer file, also tokenize each document that passed ([BOS] ... [EOS])."""
    tokenizer_file, (tag, texts) = item
    cleaned, seconds = clean_chunk(texts)
    tokens = [None] * len(cleaned)
    if tokenizer_file is not None:
        start = time.process_time()
        tokens = [tokenize_chunk(tokenizer_file, [doc.text]) if doc.reason is None else None for doc in cleaned]
        seconds["tokenize"] += time.process_time() - start
    return tag, cleaned, tokens, seconds


def _tokenize_task(item: tuple) -> tuple:
    tokenizer_file, (tag, texts) = item
    start = time.process_time()
    tokens = tokenize_chunk(tokenizer_file, texts)
    return tag, tokens, len(texts), time.process_time() - start


def _timed(items: Iterator, seconds: Counter, stage: str) -> Iterator:
    """Pass items through, adding the CPU time spent producing them to `seconds[stage]`."""
    while True:
        start = time.process_time()
        try:
            item = next(items)
        except StopIteration:
            return
        finally:
            seconds[stage] += time.process_time() - start
        yield item


def _kept_chunks(sources: list[Source], tokenizer_file: str | None, dedup: Deduplicator, pack: PackConfig,
                 workers: Workers, rejects: "_Rejects | None", progress: bool, seconds: Counter) -> Iterator[list]:
    """Each chunk's kept documents as ((stream, split), Cleaned, tokens or None), deciding duplicates in input order."""
    items = ((tokenizer_file, chunk) for s in sources for chunk in _chunks(s.documents(), s.name))
    bar = show_progress(desc="clean", unit="B", unit_scale=True, disable=not progress, every=CLEAN_LINE_BYTES)
    for name, cleaned, tokens, secs in workers.map(_clean_task, _timed(items, seconds, "read")):
        seconds.update(secs)
        start = time.process_time()
        kept = []
        for doc, ids in zip(cleaned, tokens):
            reason = dedup.decide(doc, name)
            if reason is None:
                split = "val" if is_validation(doc.key, pack.val_fraction, pack.seed) else "train"
                kept.append(((f"{name}.{doc.lang}", split), doc, ids))
            elif rejects is not None:
                rejects.add(reason, name, doc)
            bar.update(doc.bytes_in)
        seconds["deduplicate"] += time.process_time() - start
        yield kept
    bar.close()


def _clean_pass(sources: list[Source], out: Path, clean: CleanConfig, pack: PackConfig, workers: Workers,
                keep_rejects: bool, progress: bool, seconds: Counter) -> tuple[CleanReport, WorkFiles]:
    """Two-pass path, first pass: kept documents to temporary files."""
    dedup = Deduplicator(clean)
    work = WorkFiles(out / ".work")
    rejects = _Rejects(out / "rejects") if keep_rejects else None
    for kept in _kept_chunks(sources, None, dedup, pack, workers, rejects, progress, seconds):
        start = time.process_time()
        for (stream, split), doc, _ in kept:
            work.add(stream, split, doc.text)
        seconds["write kept"] += time.process_time() - start
    work.close()
    if rejects is not None:
        rejects.close()
    dedup.report.check()
    return dedup.report, work


def _writer_class(shard_format: ShardFormat) -> type[ShardWriter]:
    """The shard writer of the format; fails before any work when the tar writer's library is missing."""
    if shard_format is ShardFormat.TAR:
        TarShardWriter.check_available()
        return TarShardWriter
    return ShardWriter


def _one_pass(sources: list[Source], out: Path, clean: CleanConfig, pack: PackConfig, tokenizer: Tokenizer,
              workers: Workers, keep_rejects: bool, progress: bool, seconds: Counter,
              writer_class: type[ShardWriter]) -> tuple[CleanReport, dict]:
    """Clean, tokenize and pack in one pass; returns the report and {(stream, split): StreamSplit}."""
    dedup = Deduplicator(clean)
    rejects = _Rejects(out / "rejects") if keep_rejects else None
    dtype, writers = token_dtype(tokenizer.vocab_size), {}
    for kept in _kept_chunks(sources, str(out / "tokenizer.json"), dedup, pack, workers, rejects, progress, seconds):
        start = time.process_time()
        batches: dict = {}
        for key, _, ids in kept:
            batches.setdefault(key, []).append(ids)
        for (stream, split), arrays in batches.items():
            if (stream, split) not in writers:
                writers[stream, split] = writer_class(out / split, stream, pack.seq_len, pack.shard_tokens, dtype)
            writers[stream, split].append(np.concatenate(arrays), len(arrays))
        seconds["write shards"] += time.process_time() - start
    if rejects is not None:
        rejects.close()
    dedup.report.check()
    return dedup.report, {key: writer.finish() for key, writer in writers.items()}


class _Rejects:
    """OUT/rejects/<reason>.jsonl: removed documents with their source and language, for inspection."""

    def __init__(self, folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self._files = folder, {}

    def add(self, reason: Reason, source: str, doc) -> None:
        if reason not in self._files:
            self._files[reason] = (self.folder / f"{reason.value}.jsonl").open("w", encoding="utf-8")
        record = {"source": source, "lang": doc.lang, "text": doc.text}
        self._files[reason].write(json.dumps(record, ensure_ascii=False) + "\n")

    def close(self) -> None:
        for f in self._files.values():
            f.close()


def _train_tokenizer(work: WorkFiles, vocab: int, seconds: Counter, log) -> Tokenizer:
    start = time.perf_counter()  # wall clock: the trainer runs on all cores
    log(f"training a byte-level BPE tokenizer of {vocab:,} tokens on the kept training text")
    texts = (t for stream, split in work.keys() if split == "train" for t in work.texts(stream, split))
    tokenizer = train_bpe_tokenizer(texts, vocab)
    seconds["train tokenizer"] += time.perf_counter() - start
    return tokenizer


def _pack_pass(work: WorkFiles, out: Path, tokenizer: Tokenizer, pack: PackConfig, workers: Workers,
               progress: bool, seconds: Counter, writer_class: type[ShardWriter]) -> dict:
    """Tokenize every (stream, split) file into shards; returns {(stream, split): StreamSplit}."""
    dtype = token_dtype(tokenizer.vocab_size)
    file = str(out / "tokenizer.json")
    items = ((file, chunk) for key in work.keys() for chunk in _chunks(work.texts(*key), key))
    written, writer, writer_key = {}, None, None
    docs_total = sum(work.counts.values())
    bar = show_progress(desc="pack", unit="doc", total=docs_total, disable=not progress,
                        every=max(1, docs_total // PACK_LINE_PARTS))
    for key, tokens, docs, secs in workers.map(_tokenize_task, _timed(items, seconds, "read kept")):
        seconds["tokenize"] += secs
        start = time.process_time()
        if writer is None or writer_key != key:
            if writer is not None:
                written[writer_key] = writer.finish()
            stream, split = key
            writer, writer_key = writer_class(out / split, stream, pack.seq_len, pack.shard_tokens, dtype), key
        writer.append(tokens, docs)
        bar.update(docs)
        seconds["write shards"] += time.process_time() - start
    if writer is not None:
        written[writer_key] = writer.finish()
    bar.close()
    return written


def _streams_manifest(written: dict, weights: dict[str, float], counts: np.ndarray) -> list[dict]:
    streams = sorted({stream for stream, _ in written})
    rows = []
    for i, stream in enumerate(streams):
        source, _, lang = stream.rpartition(".")
        entry = {"name": stream, "source": source, "lang": lang, "weight": weights.get(stream, 0.0),
                 "block_count": int(counts[i])}
        for split in SPLITS:
            part = written.get((stream, split))
            entry[split] = _split_entry(part, split)
        rows.append(entry)
    return rows


def _split_entry(part, split: str) -> dict:
    if part is None:
        return {"documents": 0, "tokens": 0, "sequences": 0, "dropped_tokens": 0, "shards": []}
    shards = [{"file": f"{split}/{s.file}", "sequences": s.sequences, "sha256": s.sha256} for s in part.shards]
    return {"documents": part.documents, "tokens": part.tokens, "sequences": part.sequences,
            "dropped_tokens": part.dropped_tokens, "shards": shards}


def _mix(written: dict, mix: dict[str, float] | None) -> tuple[dict, dict[str, float], np.ndarray]:
    streams = sorted({stream for stream, _ in written})
    sizes = []
    for stream in streams:
        source, _, lang = stream.rpartition(".")
        part = written.get((stream, "train"))
        sizes.append(mixing.StreamSize(stream, source, lang, part.sequences if part else 0))
    by, weights = mixing.stream_weights(sizes, mix)
    counts = mixing.block_counts(np.array([weights[s] for s in streams]))
    share, epochs = mixing.realised(counts, np.array([s.sequences for s in sizes]))
    info = {"by": by, "requested": mix, "block": mixing.BLOCK,
            "realised": {s: {"share": float(share[i]), "epochs_per_pass": float(epochs[i])} for i, s in enumerate(streams)}}
    return info, weights, counts


def _reset(out: Path) -> None:
    """Refuse to overwrite a finished preparation; clear what an unfinished one left."""
    if (out / MANIFEST).exists():
        raise DataError(f"'{out}' already holds prepared data ({MANIFEST}); choose another --out or delete it first")
    for name in _OWNED:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    out.mkdir(parents=True, exist_ok=True)


def _write_manifest(out: Path, manifest: dict) -> None:
    tmp = out / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, out / MANIFEST)


def prepare(
    inputs: list[str],
    out: Path,
    *,
    clean: CleanConfig = CleanConfig(),
    pack: PackConfig = PackConfig(),
    tokenizer: Path | None = None,
    train_vocab: int = 32768,
    mix: dict[str, float] | None = None,
    text_field: str = "text",
    workers: int = 0,
    keep_rejects: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
    shard_format: ShardFormat | str = ShardFormat.MMAP,
) -> PrepareResult:
    """Clean, tokenize and pack `inputs` into OUT; returns the manifest and the printed report.
    `shard_format`: "mmap" (memory-mapped arrays, the default) or "tar" (WebDataset shards for streaming)."""
    start = time.perf_counter()
    shard_format = _shard_format(shard_format)
    writer_class = _writer_class(shard_format)
    sources = parse_sources(inputs, text_field)
    mixing.check_keys(mix, [s.name for s in sources], clean.langs)
    given = Tokenizer.load(tokenizer) if tokenizer is not None else None  # a bad path fails now, not after cleaning
    workers = workers or default_workers()
    out = Path(out)
    _reset(out)
    seconds: Counter = Counter()
    hashing = time.process_time()
    described = [s.describe() for s in sources]
    seconds["hash inputs"] += time.process_time() - hashing
    with Workers(workers, init_worker, (clean,)) as pool:  # forked once, before any tokenizer runs here
        if given is not None:
            tok = given
            tok.save_pretrained(out)  # the workers read it from there
            report, written = _one_pass(sources, out, clean, pack, tok, pool, keep_rejects, progress, seconds, writer_class)
            _check_kept(report)
        else:
            report, work = _clean_pass(sources, out, clean, pack, pool, keep_rejects, progress, seconds)
            _check_kept(report)
            tok = _train_tokenizer(work, train_vocab, seconds, log)
            tok.save_pretrained(out)
            written = _pack_pass(work, out, tok, pack, pool, progress, seconds, writer_class)
            shutil.rmtree(out / ".work")
    manifest = _manifest(tok, pack, described, clean, report, written, mix, shard_format)
    _write_manifest(out, manifest)
    wall = time.perf_counter() - start
    return PrepareResult(out=out, manifest=manifest, report=format_report(manifest, report, seconds, wall),
                         seconds=seconds, wall_seconds=wall)


def _shard_format(value: ShardFormat | str) -> ShardFormat:
    try:
        return ShardFormat(value)
    except ValueError:
        raise DataError(f"unknown shard format {value!r}; use {' or '.join(f.value for f in ShardFormat)}") from None


def _check_kept(report: CleanReport) -> None:
    if report.documents == 0:
        raise DataError("the sources hold no document (empty files or folders); give text to prepare")
    if report.kept == 0:
        raise DataError(f"no document survived cleaning (of {report.documents:,}); see the removal counts: "
                        + ", ".join(f"{r.value} {n:,}" for r, n in report.removed.items()))


def _manifest(tok: Tokenizer, pack: PackConfig, sources: list[dict], clean: CleanConfig, report: CleanReport,
              written: dict, mix: dict[str, float] | None, shard_format: ShardFormat) -> dict:
    """Everything a loader or a person needs to know about the output (no timings: it is deterministic)."""
    mix_info, weights, counts = _mix(written, mix)
    streams = _streams_manifest(written, weights, counts)
    tar = shard_format is ShardFormat.TAR
    return {
        "format": TAR_FORMAT if tar else FORMAT,
        **({"sample": {"tokens": TOKENS_FIELD, "meta": "json", "layout": "webdataset"}} if tar else {}),
        "created_by": f"sunfish {_version()}",
        "seq_len": pack.seq_len,
        "dtype": token_dtype(tok.vocab_size).name,
        "vocab_size": tok.vocab_size,
        "tokenizer": {"file": "tokenizer.json", "sha256": tok.sha256(), "bos_id": tok.bos_id, "eos_id": tok.eos_id},
        "split": {"by": "document", "val_fraction": pack.val_fraction, "seed": pack.seed},
        "sources": sources,
        "clean": {"config": _jsonable(asdict(clean)), "counts": report.as_dict()},
        "mix": mix_info,
        "streams": streams,
        "tokens_per_language": _tokens_per_language(streams),
    }


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sunfish")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree without installing
        return "unknown"


def _jsonable(value):
    return json.loads(json.dumps(value, default=lambda v: v.value if hasattr(v, "value") else str(v)))


def _tokens_per_language(streams: list[dict]) -> dict:
    totals: dict = {}
    for s in streams:
        entry = totals.setdefault(s["lang"], {split: 0 for split in SPLITS})
        for split in SPLITS:
            entry[split] += s[split]["tokens"]
    return dict(sorted(totals.items()))


def format_report(manifest: dict, report: CleanReport, seconds: Counter, wall: float) -> str:
    """The tables printed at the end: cleaning steps, streams and mix, throughput per stage."""
    parts = [format_clean_report(report)]
    rows = []
    for s in manifest["streams"]:
        real = manifest["mix"]["realised"][s["name"]]
        rows.append((s["name"], s["train"]["documents"], s["train"]["tokens"], s["train"]["sequences"],
                     s["val"]["tokens"], 100 * s["weight"], 100 * real["share"], real["epochs_per_pass"]))
    header = ("stream", "train docs", "train tokens", "sequences", "val tokens", "weight %", "realised %", "epochs/pass")
    parts.append(table(rows, header))
    mb = report.bytes_in / 1e6
    stage_rows = [(stage, secs, mb / secs if secs > 0 else float("inf")) for stage, secs in seconds.most_common()]
    stage_rows.append(("total (wall clock)", wall, mb / wall if wall > 0 else float("inf")))
    parts.append(table(stage_rows, ("stage", "CPU seconds", "input MB/s")))
    return "\n\n".join(parts)
