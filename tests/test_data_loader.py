"""Batches from prepared shards: resumable, disjoint across ranks, mixture-weighted; training on them."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from sunfish.config import apply_tree, load_preset
from sunfish.data import mix
from sunfish.data.clean import CleanConfig
from sunfish.data.dedup import DedupConfig
from sunfish.data.pack import PackConfig
from sunfish.data.prepare import prepare
from sunfish.data.shards import PreparedData
from sunfish.data.sources import DataError, write_documents
from sunfish.data.synth import generate_stories
from sunfish.checkpoint.files import list_checkpoints
from sunfish.loading import load_model
from sunfish.training.loop import train

SEQ = 32


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    folder = tmp_path_factory.mktemp("loader")
    stories = generate_stories("both", 400, 5)
    write_documents(folder / "en.jsonl", stories[0::2])
    write_documents(folder / "ru.jsonl", stories[1::2])
    clean = CleanConfig(dedup=DedupConfig(minhash=False))  # template stories can be near-duplicates: keep them all
    prepare([str(folder / "en.jsonl"), str(folder / "ru.jsonl")], folder / "out", clean=clean,
            pack=PackConfig(seq_len=SEQ * 2, val_fraction=0.1, shard_tokens=SEQ * 2 * 25), train_vocab=300,
            mix={"ru": 3, "en": 1}, workers=1, progress=False, log=lambda s: None)
    return folder / "out"


def take(batches, n, size):
    return [batches.next_batch(size) for _ in range(n)]


def test_resumed_sampler_repeats_the_uninterrupted_one(prepared):
    split = PreparedData.open(prepared).split("train")
    full = take(split.batches(SEQ, seed=7), 12, 8)
    first = split.batches(SEQ, seed=7)
    take(first, 5, 8)
    resumed = split.batches(SEQ, seed=7)
    resumed.restore(json.loads(json.dumps(first.state())))  # the state survives a JSON round trip
    assert all(torch.equal(a, b) for a, b in zip(full[5:], take(resumed, 7, 8)))
    assert not torch.equal(full[0], take(split.batches(SEQ, seed=8), 1, 8)[0])
    with pytest.raises(DataError, match="seeded with 7"):
        split.batches(SEQ, seed=9).restore(first.state())


def test_ranks_split_the_global_batch_without_overlap(prepared):
    split = PreparedData.open(prepared).split("train")
    single = torch.cat(take(split.batches(SEQ, seed=1), 6, 12))  # one process, global batch 12
    ranks = [take(split.batches(SEQ, seed=1, rank=r, world=3), 6, 4) for r in range(3)]
    interleaved = torch.cat([torch.cat([ranks[r][step] for r in range(3)]) for step in range(6)])
    assert torch.equal(interleaved, single)


def test_one_pass_visits_every_window_at_the_mixed_rate(prepared):
    split = PreparedData.open(prepared).split("train")
    sampler = split.batches(SEQ, seed=0)
    windows, counts = sampler._windows, sampler._counts  # (S,) windows per stream, (S,) samples per block
    blocks = int(np.ceil(max(windows / counts)))  # enough blocks for every stream to finish one epoch
    stream_of = np.concatenate([mix.block_assignment(counts, 0, b) for b in range(blocks)])
    share_ru = np.mean([split.streams[s].name.endswith(".ru") for s in stream_of])
    assert share_ru == pytest.approx(0.75, abs=1 / mix.BLOCK)
    for s, stream in enumerate(split.streams):  # the first epoch of each stream is a permutation of its windows
        first_epoch = np.flatnonzero(stream_of == s)[: windows[s]]
        seen = sorted(tuple(sampler.sample(int(i))) for i in first_epoch)
        every = sorted(tuple(stream.window(w, split.seq_len, SEQ)) for w in range(windows[s]))
        assert seen == every


def test_windows_shorter_than_the_packed_sequences(prepared):
    split = PreparedData.open(prepared).split("train")
    stream = split.streams[0]
    halves = np.concatenate([stream.window(w, SEQ * 2, SEQ) for w in range(4)])
    assert np.array_equal(halves, stream.arrays[0][:2].reshape(-1))
    with pytest.raises(DataError, match="shorter than the 128"):
        split.batches(128, seed=0)


def small_cfg(steps, **train_kw):
    tree = {"model": {"d_model": 32, "n_layers": 1, "n_heads": 2, "context": SEQ},
            "train": {"steps": steps, "batch_size": 4, "log_every": 2, "val_every": 3, "val_batches": 2, **train_kw},
            "optim": {"warmup_steps": 2}}
    return apply_tree(load_preset("nano"), tree)


def test_training_on_prepared_shards_resumes_exactly(prepared, tmp_path):
    full = tmp_path / "full"
    train(small_cfg(8, save_every=4), run_dir=full, data=[str(prepared)], progress=False, log=lambda s: None)
    part = tmp_path / "part"
    shutil.copytree(full, part)
    shutil.rmtree(part / "checkpoints" / "step-000008")
    train(small_cfg(8, save_every=4), run_dir=part, data=[str(prepared)], resume=True, progress=False, log=lambda s: None)
    from conftest import run_metrics

    assert run_metrics(part) == run_metrics(full)
    a = load_model(full, torch.device("cpu"))
    b = load_model(part, torch.device("cpu")).model.state_dict()
    assert all(torch.equal(v, b[k]) for k, v in a.model.state_dict().items())
    assert a.tokenizer.to_json() == PreparedData.open(prepared).tokenizer().to_json()
    assert [p.name for p in list_checkpoints(full)] == ["step-000004", "step-000008"]
