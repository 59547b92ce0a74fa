"""The training corpus: documents (files, or the built-in stories) split, tokenized and streamed, a folder of
shards from `sunfish data prepare`, or tar shards from `sunfish data prepare --format tar` streamed from a
folder or URL with live mixing (`--data.mix`), with the tokenizer that goes with it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from sunfish.config import RunConfig
from sunfish.data.loader import TokenStream, split_documents
from sunfish.data.shards import PreparedData, PreparedSplit, is_prepared
from sunfish.data.sources import DataError, read_documents
from sunfish.data.stream import TarData, TarSplit, is_tar_data
from sunfish.tokenizer import Tokenizer, train_tokenizer


@dataclass
class Corpus:
    tokenizer: Tokenizer
    train: TokenStream | PreparedSplit | TarSplit  # all offer len(), fingerprint(), check_length() and batches()
    val: TokenStream | PreparedSplit | TarSplit


def load_corpus_documents(cfg: RunConfig, data: list[str] | None) -> list[str]:
    """Documents from files, or the built-in story corpus when no data is given."""
    if data:
        return read_documents(data)
    from sunfish.data.synth import generate_stories

    return generate_stories(cfg.data.synth_lang, cfg.data.synth_docs, cfg.train.seed)


def build_corpus(cfg: RunConfig, docs: list[str], tokenizer: Tokenizer | None) -> Corpus:
    """Split, train a tokenizer if none is given, and tokenize both splits."""
    split = split_documents(docs, cfg.data.val_fraction, cfg.train.seed)
    if tokenizer is None:
        # Characters are collected from all documents so validation text never holds an unknown one.
        source = docs if cfg.data.tokenizer.value == "char" else split.train
        tokenizer = train_tokenizer(cfg.data.tokenizer.value, source, cfg.data.bpe_vocab)
    make = lambda d: TokenStream.from_documents(d, tokenizer.encode_batch, tokenizer.bos_id, tokenizer.eos_id)
    return Corpus(tokenizer=tokenizer, train=make(split.train), val=make(split.val))


def open_corpus(cfg: RunConfig, data: list[str] | None, tokenizer: Tokenizer | None,
                log: Callable[[str], None] | None = None) -> Corpus:
    """Tar shards (a folder or URL), a folder from `sunfish data prepare` (its shards and tokenizer), or
    documents split and tokenized here. `log`: where streamed training data reports changes of its weights."""
    if data and len(data) == 1 and is_tar_data(data[0]):
        return open_tar_corpus(cfg, data[0], tokenizer, log)
    if cfg.data.mix or cfg.data.workers:
        raise DataError("--data.mix and --data.workers apply to streamed tar shards only; prepare the data with "
                        "`sunfish data prepare --format tar` or drop them")
    if data and len(data) == 1 and is_prepared(data[0]):
        prepared = PreparedData.open(data[0])
        own = prepared.tokenizer()
        if tokenizer is not None and tokenizer.to_json() != own.to_json():
            raise DataError(f"the tokenizer in '{data[0]}' differs from the checkpoint's; resume with the data the run was trained on")
        return Corpus(tokenizer=own, train=prepared.split("train"), val=prepared.split("val"))
    return build_corpus(cfg, load_corpus_documents(cfg, data), tokenizer)


def open_tar_corpus(cfg: RunConfig, spec: str, tokenizer: Tokenizer | None,
                    log: Callable[[str], None] | None = None) -> Corpus:
    """Streamed tar shards; the training split follows `--data.mix` (checked against the streams now, before any
    training) and reads ahead in `--data.workers` processes."""
    from sunfish.data.mix import parse_schedule

    data = TarData.open(spec)
    own = data.tokenizer()
    if tokenizer is not None and tokenizer.to_json() != own.to_json():
        raise DataError(f"the tokenizer in '{spec}' differs from the checkpoint's; resume with the data the run was trained on")
    train, val = data.split("train"), data.split("val")
    train.set_schedule(parse_schedule(cfg.data.mix))
    train.rows_per_step = cfg.train.batch_size * cfg.train.grad_accum
    train.workers = cfg.data.workers
    train.log = log
    return Corpus(tokenizer=own, train=train, val=val)


def seq_len_of(cfg: RunConfig) -> int:
    seq_len = cfg.train.seq_len or cfg.model.context
    if seq_len > cfg.model.context:
        raise ValueError(f"train.seq_len ({seq_len}) exceeds model.context ({cfg.model.context})")
    return seq_len
