"""The training corpus: documents (files, or the built-in stories) split, tokenized and streamed, or a folder of
shards from `sunfish data prepare`, with the tokenizer that goes with it."""

from __future__ import annotations

from dataclasses import dataclass

from sunfish.config import RunConfig
from sunfish.data.loader import TokenStream, split_documents
from sunfish.data.shards import PreparedData, PreparedSplit, is_prepared
from sunfish.data.sources import DataError, read_documents
from sunfish.tokenizer import Tokenizer, train_tokenizer


@dataclass
class Corpus:
    tokenizer: Tokenizer
    train: TokenStream | PreparedSplit  # both offer len(), fingerprint(), check_length() and batches()
    val: TokenStream | PreparedSplit


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


def open_corpus(cfg: RunConfig, data: list[str] | None, tokenizer: Tokenizer | None) -> Corpus:
    """A folder from `sunfish data prepare` (its shards and tokenizer), or documents split and tokenized here."""
    if data and len(data) == 1 and is_prepared(data[0]):
        prepared = PreparedData.open(data[0])
        own = prepared.tokenizer()
        if tokenizer is not None and tokenizer.to_json() != own.to_json():
            raise DataError(f"the tokenizer in '{data[0]}' differs from the checkpoint's; resume with the data the run was trained on")
        return Corpus(tokenizer=own, train=prepared.split("train"), val=prepared.split("val"))
    return build_corpus(cfg, load_corpus_documents(cfg, data), tokenizer)


def seq_len_of(cfg: RunConfig) -> int:
    seq_len = cfg.train.seq_len or cfg.model.context
    if seq_len > cfg.model.context:
        raise ValueError(f"train.seq_len ({seq_len}) exceeds model.context ({cfg.model.context})")
    return seq_len
