"""`sunfish data prepare` end to end: shards, manifest, report, mixing, determinism, crash safety, CLI."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from planted import planted_corpus
from sunfish.data import cli as data_cli
from sunfish.data.clean import CleanConfig
from sunfish.data.pack import PackConfig, _load_backend, encode_documents, splits_exactly
from sunfish.data.prepare import prepare
from sunfish.data.shards import PreparedData
from sunfish.data.sources import DataError, write_documents
from sunfish.data.synth import generate_stories
from sunfish.tokenizer import Tokenizer

PACK = PackConfig(seq_len=64, val_fraction=0.1, seed=0, shard_tokens=64 * 20)


def quiet(_):
    pass


@pytest.fixture(scope="module")
def planted():
    return planted_corpus(n_clean=60, seed=1)


@pytest.fixture(scope="module")
def inputs(planted, tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    half = len(planted.docs) // 2
    write_documents(folder / "web.jsonl", planted.docs[:half])
    write_documents(folder / "books.jsonl", planted.docs[half:])
    return [str(folder / "web.jsonl"), str(folder / "books.jsonl")]


@pytest.fixture(scope="module")
def prepared(inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared") / "out"
    return prepare(inputs, out, pack=PACK, train_vocab=400, workers=1, progress=False, log=quiet)


def documents_in(data: PreparedData, split: str) -> list[str]:
    """Decode each stream's tokens back into documents (the partial document at a stream's end is skipped)."""
    tok, docs = data.tokenizer(), []
    for stream in data.split(split).streams:
        ids = np.concatenate([a.reshape(-1) for a in stream.arrays]) if stream.arrays else np.zeros(0, np.uint16)
        eos = np.flatnonzero(ids == tok.eos_id)
        start = 0
        for end in eos:
            assert ids[start] == tok.bos_id
            docs.append(tok.decode(ids[start + 1 : end].tolist()))
            start = end + 1
    return docs


def test_manifest_accounts_for_every_document(prepared, planted):
    counts = prepared.manifest["clean"]["counts"]
    removed = {k: v for k, v in counts["removed"].items() if v}
    assert removed == {r.value: n for r, n in planted.removed.items()}
    assert counts["kept"] + sum(counts["removed"].values()) == counts["documents"] == len(planted.docs)
    streams = prepared.manifest["streams"]
    assert sum(s["train"]["documents"] + s["val"]["documents"] for s in streams) == counts["kept"]
    assert {s["lang"] for s in streams} == {"en", "ru"} and {s["source"] for s in streams} == {"web", "books"}
    per_lang = prepared.manifest["tokens_per_language"]
    assert sum(v["train"] + v["val"] for v in per_lang.values()) == sum(s["train"]["tokens"] + s["val"]["tokens"] for s in streams)
    assert [f["sha256"] for s in prepared.manifest["sources"] for f in s["files"]]  # input files are fingerprinted
    for table_title in ("removed: exact_duplicate", "kept", "realised %", "input MB/s"):
        assert table_title in prepared.report


def test_shards_decode_to_the_kept_documents(prepared, planted):
    data = PreparedData.open(prepared.out)
    data.verify()
    expected = {" ".join(t.split()) for t in planted.clean}
    decoded = documents_in(data, "train") + documents_in(data, "val")
    assert decoded and all(any(d.split()[:8] == e.split()[:8] for e in expected) for d in decoded)
    assert "<EMAIL>" in "".join(decoded) and "@example.com" not in "".join(decoded)
    streams = prepared.manifest["streams"]
    complete = sum(s["train"]["documents"] + s["val"]["documents"] for s in streams)
    assert complete - len(decoded) <= 2 * len(streams)  # at most one cut document per stream and split
    assert all(s["train"]["dropped_tokens"] < PACK.seq_len for s in streams)


def test_split_is_by_document_and_deterministic(prepared):
    data = PreparedData.open(prepared.out)
    train, val = set(documents_in(data, "train")), set(documents_in(data, "val"))
    assert val and not (train & val)


def test_worker_count_does_not_change_the_output(prepared, inputs, tmp_path):
    again = prepare(inputs, tmp_path / "two", pack=PACK, train_vocab=400, workers=2, progress=False, log=quiet)
    assert again.manifest["streams"] == prepared.manifest["streams"]
    assert again.manifest["clean"] == prepared.manifest["clean"]
    for entry in again.manifest["streams"]:
        for shard in entry["train"]["shards"] + entry["val"]["shards"]:
            assert (tmp_path / "two" / shard["file"]).read_bytes() == (prepared.out / shard["file"]).read_bytes()


def test_mix_by_language(inputs, tmp_path):
    result = prepare(inputs, tmp_path / "mix", pack=PACK, tokenizer=None, train_vocab=400, mix={"ru": 60, "en": 40},
                     workers=1, progress=False, log=quiet)
    mix = result.manifest["mix"]
    assert mix["by"] == "language"
    share = {"en": 0.0, "ru": 0.0}
    for stream in result.manifest["streams"]:
        share[stream["lang"]] += mix["realised"][stream["name"]]["share"]
    assert share["ru"] == pytest.approx(0.6, abs=1 / 4096) and share["en"] == pytest.approx(0.4, abs=1 / 4096)
    with pytest.raises(DataError, match="no weight to en"):
        prepare(inputs, tmp_path / "bad", pack=PACK, train_vocab=400, mix={"ru": 1}, workers=1, progress=False, log=quiet)


def test_existing_tokenizer_and_refusals(prepared, inputs, tmp_path):
    tokenizer = prepared.out / "tokenizer.json"
    reused = prepare(inputs, tmp_path / "reuse", pack=PACK, tokenizer=tokenizer, workers=2, progress=False, log=quiet)
    assert reused.manifest["tokenizer"]["sha256"] == Tokenizer.load(tokenizer).sha256()
    # With a tokenizer given, cleaning and tokenizing run in one pass: the same shards as the two-pass run
    assert reused.manifest["streams"] == prepared.manifest["streams"] and reused.manifest["clean"] == prepared.manifest["clean"]
    for entry in reused.manifest["streams"]:
        for shard in entry["train"]["shards"] + entry["val"]["shards"]:
            assert (tmp_path / "reuse" / shard["file"]).read_bytes() == (prepared.out / shard["file"]).read_bytes()
    with pytest.raises(DataError, match="already holds prepared data"):
        prepare(inputs, tmp_path / "reuse", pack=PACK, tokenizer=tokenizer, workers=1, progress=False, log=quiet)
    foreign = tmp_path / "foreign.jsonl"
    write_documents(foreign, ["Der alte Fischer ging jeden Morgen an den Strand und sah lange auf das Meer hinaus."] * 3)
    with pytest.raises(DataError, match="no document survived cleaning"):
        prepare([str(foreign)], tmp_path / "none", pack=PACK, tokenizer=tokenizer, workers=1, progress=False, log=quiet)
    empty = tmp_path / "empty.txt"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(DataError, match="hold no document"):
        prepare([str(empty)], tmp_path / "none2", pack=PACK, tokenizer=tokenizer, workers=1, progress=False, log=quiet)


KILL_SCRIPT = """
import sys
from sunfish.data.pack import PackConfig, _load_backend, encode_documents, splits_exactly
from sunfish.data.prepare import prepare
prepare([sys.argv[1]], sys.argv[2], pack=PackConfig(seq_len=32, val_fraction=0.1, shard_tokens=64),
        tokenizer=sys.argv[3], workers=1, progress=False, log=lambda s: None)
"""


def test_shards_survive_a_kill_mid_write(prepared, tmp_path):
    corpus = tmp_path / "stories.jsonl"
    write_documents(corpus, generate_stories("both", 400, 3))
    small_shards = PackConfig(seq_len=32, val_fraction=0.1, shard_tokens=64)  # 2 sequences per shard: many files
    tokenizer = str(prepared.out / "tokenizer.json")
    reference = tmp_path / "reference"
    prepare([str(corpus)], reference, pack=small_shards, tokenizer=tokenizer, workers=1, progress=False, log=quiet)
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(corpus), str(out), tokenizer])
    deadline = time.monotonic() + 120
    while proc.poll() is None and len(list((out / "train").glob("*.bin"))) < 20 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, "preparation finished before it could be killed; make the corpus larger"
    proc.kill()  # SIGKILL (TerminateProcess on Windows): no cleanup runs
    proc.wait()
    assert not (out / "manifest.json").exists()
    shards = sorted((out / "train").glob("*.bin"))
    assert len(shards) >= 20
    for shard in shards:  # every file under a shard's name is complete and equals the finished run's
        assert shard.read_bytes() == (reference / "train" / shard.name).read_bytes()
    with pytest.raises(DataError, match="did not finish"):
        PreparedData.open(out)
    prepare([str(corpus)], out, pack=small_shards, tokenizer=tokenizer, workers=1, progress=False, log=quiet)
    assert json.loads((out / "manifest.json").read_text())["streams"] == json.loads((reference / "manifest.json").read_text())["streams"]
    assert not list(out.rglob("*.tmp"))


def cli_parser() -> argparse.ArgumentParser:
    """A parser shaped like sunfish.cli's: a `data` group that already has `synth`, then our verbs."""
    parser = argparse.ArgumentParser(prog="sunfish")
    verbs = parser.add_subparsers(dest="verb", required=True)
    data = verbs.add_parser("data")
    data.add_subparsers(dest="data_verb", required=True).add_parser("synth")
    verbs.add_parser("presets")
    data_cli.register(verbs)
    return parser


def test_cli_prepare_and_dispatch(inputs, tmp_path, capsys):
    parser = cli_parser()
    assert data_cli.dispatch(parser.parse_args(["presets"])) is None
    assert data_cli.dispatch(parser.parse_args(["data", "synth"])) is None
    args = parser.parse_args(["data", "prepare", *inputs, "--out", str(tmp_path / "cli"), "--train-tokenizer", "400",
                              "--seq-len", "64", "--mix", "web=1", "books=3", "--langs", "en,ru", "--dedup", "exact",
                              "--workers", "1", "--no-progress", "--keep-rejects"])
    assert data_cli.dispatch(args) == 0
    printed = capsys.readouterr().out
    assert "removed: language" in printed and "sunfish train --data" in printed
    manifest = json.loads((tmp_path / "cli" / "manifest.json").read_text())
    assert manifest["mix"]["by"] == "source" and manifest["clean"]["counts"]["removed"]["near_duplicate"] == 0
    assert (tmp_path / "cli" / "rejects" / "language.jsonl").read_text().count("\n") == 5
    bad = parser.parse_args(["data", "prepare", *inputs, "--out", str(tmp_path / "x"), "--langs", "en,xx"])
    with pytest.raises(ValueError, match="cannot identify the language"):
        data_cli.dispatch(bad)
    bad = parser.parse_args(["data", "prepare", *inputs, "--out", str(tmp_path / "y"), "--mix", "web"])
    with pytest.raises(DataError, match="cannot read the mix 'web'"):
        data_cli.dispatch(bad)


FRAGMENTS = ["word", "Слово", " ", "  ", "\n", "\n\n", " \n", "\t", ".", "!?", "»", "«", "'s", "'ll", "42", "2024",
             "🙂", "中文", "—", "-", "...", "\r\n", "[EOS]", "e\u0301", "\u00a0"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(FRAGMENTS), max_size=40).map("".join))
def test_cutting_before_newlines_encodes_exactly(prepared, text):
    backend, *_ = _load_backend(str(prepared.out / "tokenizer.json"))
    assert splits_exactly(backend)
    assert encode_documents(backend, [text, text + "\nend"], True) == encode_documents(backend, [text, text + "\nend"], False)


def test_other_pre_tokenizers_are_encoded_whole(prepared):
    import tokenizers

    backend = tokenizers.Tokenizer.from_file(str(prepared.out / "tokenizer.json"))
    backend.normalizer = tokenizers.normalizers.NFKC()
    assert not splits_exactly(backend)
    backend = tokenizers.Tokenizer.from_file(str(prepared.out / "tokenizer.json"))
    backend.pre_tokenizer = tokenizers.pre_tokenizers.Metaspace()
    assert not splits_exactly(backend)
    backend = tokenizers.Tokenizer.from_file(str(prepared.out / "tokenizer.json"))
    backend.add_tokens([".\n"])
    assert not splits_exactly(backend)
