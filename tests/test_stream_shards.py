"""Tar shards (`data prepare --format tar`) streamed from a folder or a local HTTP server: the same windows as the
memory-mapped shards, exact resume, weights that change on resume, disjoint ranks and workers, clear errors."""

from __future__ import annotations

import contextlib
import functools
import json
import pickle
import re
import shutil
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch

from sunfish.cli import main
from sunfish.config import apply_tree, load_preset
from sunfish.data.clean import CleanConfig
from sunfish.data.dedup import DedupConfig
from sunfish.data.mix import parse_schedule
from sunfish.data.pack import PackConfig
from sunfish.data.prepare import prepare
from sunfish.data.shards import PreparedData
from sunfish.data.sources import DataError, write_documents
from sunfish.data.stream import TarData
from sunfish.data.stream_batches import StreamBatches
from sunfish.data.synth import generate_stories
from sunfish.loading import load_model
from sunfish.training.corpus import open_corpus
from sunfish.training.loop import train

from conftest import run_metrics

SEQ = 32
CYRILLIC = re.compile("[а-яА-ЯёЁ]")


class QuietHandler(SimpleHTTPRequestHandler):
    timeout = 10  # seconds a connection may stay idle

    def log_message(self, *args) -> None:
        pass


@contextlib.contextmanager
def http_server(folder):
    """Serve `folder` on 127.0.0.1 (a free port) from a thread; stopped and joined (bounded) on exit."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """The same stories prepared twice: memory-mapped shards through the API, tar shards through the CLI."""
    root = tmp_path_factory.mktemp("stream")
    stories = generate_stories("both", 400, 5)
    write_documents(root / "en.jsonl", stories[0::2])
    write_documents(root / "ru.jsonl", stories[1::2])
    inputs = [str(root / "en.jsonl"), str(root / "ru.jsonl")]
    prepare(inputs, root / "mmap", clean=CleanConfig(dedup=DedupConfig(minhash=False)), tokenizer=None,
            pack=PackConfig(seq_len=SEQ * 2, val_fraction=0.1, shard_tokens=SEQ * 2 * 25), train_vocab=300,
            mix={"ru": 3, "en": 1}, workers=1, progress=False, log=lambda s: None)
    code = main(["data", "prepare", *inputs, "--out", str(root / "tar"), "--format", "tar", "--dedup", "exact",
                 "--seq-len", str(SEQ * 2), "--val-fraction", "0.1", "--shard-tokens", str(SEQ * 2 * 25),
                 "--tokenizer", str(root / "mmap"), "--mix", "ru=3", "en=1", "--workers", "1", "--no-progress"])
    assert code == 0
    with http_server(root) as url:
        yield root, f"{url}/tar"


def small_cfg(steps, mix="", batch_size=4, **train_kw):
    tree = {"model": {"d_model": 32, "n_layers": 1, "n_heads": 2, "context": SEQ},
            "train": {"steps": steps, "batch_size": batch_size, "log_every": 2, "val_every": 3, "val_batches": 2, **train_kw},
            "optim": {"warmup_steps": 2}, "data": {"mix": mix}}
    return apply_tree(load_preset("nano"), tree)


def test_tar_shards_hold_the_memory_mapped_windows(folders):
    root, url = folders
    mmap, tar = PreparedData.open(root / "mmap"), TarData.open(url)
    assert tar.manifest["format"] == "sunfish-tar/1" and tar.manifest["tokenizer"] == mmap.manifest["tokenizer"]
    assert tar.tokenizer().to_json() == mmap.tokenizer().to_json()
    for split in ("train", "val"):
        ours, theirs = tar.split(split), mmap.split(split)
        assert [s.name for s in ours.streams] == [s.name for s in theirs.streams] == ["en.en", "ru.ru"]
        for a, b in zip(ours.streams, theirs.streams):
            assert len(a.shards) == len(b.arrays) > (1 if split == "train" else 0)
            for shard, array in zip(a.shards, b.arrays):
                assert np.array_equal(ours.fetcher.get(shard), np.asarray(array))  # (sequences, 2 * SEQ) each
    again = prepare([str(root / "en.jsonl"), str(root / "ru.jsonl")], root / "tar-api",
                    clean=CleanConfig(dedup=DedupConfig(minhash=False)), tokenizer=root / "mmap",
                    pack=PackConfig(seq_len=SEQ * 2, val_fraction=0.1, shard_tokens=SEQ * 2 * 25), mix={"ru": 3, "en": 1},
                    workers=1, progress=False, log=lambda s: None, shard_format="tar")
    assert again.manifest["streams"] == tar.manifest["streams"]  # the API and the CLI write byte-identical shards


def test_any_webdataset_reader_opens_the_shards(folders):
    webdataset = pytest.importorskip("webdataset")
    root, _ = folders
    entry = json.loads((root / "tar" / "manifest.json").read_text())["streams"][1]
    shard = entry["train"]["shards"][0]
    samples = list(webdataset.WebDataset(str(root / "tar" / shard["file"]), shardshuffle=False).decode())
    rows = PreparedData.open(root / "mmap").split("train").streams[1].arrays[0]
    assert len(samples) == shard["sequences"]
    assert all(np.array_equal(s["tokens.npy"], rows[i]) for i, s in enumerate(samples))
    assert samples[3]["json"] == {"stream": "ru.ru", "source": "ru", "lang": "ru", "shard": 0, "row": 3}




def test_streamed_training_over_http_resumes_at_the_exact_batch(folders, tmp_path):
    _, url = folders
    schedule = "0:en=1,ru=1;2:en=3,ru=1;6:en=1,ru=3"  # one change before the checkpoint at step 4, one after
    full = tmp_path / "full"
    train(small_cfg(8, schedule, save_every=4), run_dir=full, data=[url], progress=False, log=lambda s: None)
    part = tmp_path / "part"
    shutil.copytree(full, part)
    shutil.rmtree(part / "checkpoints" / "step-000008")
    train(small_cfg(8, schedule, save_every=4), run_dir=part, data=[url], resume=True, progress=False, log=lambda s: None)
    assert run_metrics(part) == run_metrics(full)
    a = load_model(full, torch.device("cpu")).model.state_dict()
    b = load_model(part, torch.device("cpu")).model.state_dict()
    assert all(torch.equal(v, b[k]) for k, v in a.items())


def share_ru(batches, tokenizer) -> float:
    rows = [row for batch in batches for row in batch.tolist()]
    return sum(bool(CYRILLIC.search(tokenizer.decode(row))) for row in rows) / len(rows)


def test_new_weights_on_resume_change_the_mix(folders, tmp_path):
    _, url = folders
    drawn = []

    def recording(cfg):
        corpus = open_corpus(cfg, [url], None)
        make = corpus.train.batches

        def batches(*args, **kw):
            reader = make(*args, **kw)
            step = reader.next_batch
            reader.next_batch = lambda size: drawn.append(step(size)) or drawn[-1]
            return reader

        corpus.train.batches = batches
        return corpus

    run = tmp_path / "run"
    cfg = small_cfg(6, batch_size=16, save_every=6)
    train(cfg, run_dir=run, progress=False, log=lambda s: None, corpus=recording(cfg))
    before, drawn[:] = list(drawn), []
    cfg = small_cfg(12, "en=9,ru=1", batch_size=16, save_every=6)  # what --resume --data.mix en=9,ru=1 gives
    train(cfg, run_dir=run, resume=True, progress=False, log=lambda s: None, corpus=recording(cfg))
    tokenizer = TarData.open(url).tokenizer()
    assert share_ru(before, tokenizer) == pytest.approx(0.75, abs=0.1)  # the manifest's ru=3, en=1 (96 rows)
    assert share_ru(drawn, tokenizer) == pytest.approx(0.1, abs=0.07)  # the new weights from the resumed step on
    state = json.loads((run / "checkpoints" / "step-000012" / "state.json").read_text())["rng_json"]["data"]
    assert state["segment"]["start"] == 6 * 16 and state["segment"]["weights"] == {"en.en": 0.9, "ru.ru": 0.1}


def test_ranks_and_workers_read_disjoint_samples(folders):
    _, url = folders
    split = TarData.open(url).split("train")
    single = split.batches(SEQ, seed=3)
    steps, size = 420, 4  # global batches of 2 ranks x 4 rows: ru.ru (3/4 of the rows, 2,368 windows) wraps an epoch
    reference = [single.plan(2 * size) for _ in range(steps)]
    readers = {(r, w): split.batches(SEQ, seed=3, rank=r, world=2).plans(size, w, 2) for r in range(2) for w in range(2)}
    got = [next(readers[r, step % 2]) for step in range(steps) for r in range(2)]  # rank r, batch c: worker c mod 2
    assert [draw for plan in got for draw in plan] == [draw for plan in reference for draw in plan]
    draws = [draw for plan in got for draw in plan]
    assert len(set(draws)) == len(draws)  # no (stream, j) twice across ranks and workers
    for s, stream in enumerate(split.streams):
        total = stream.windows(split.seq_len, SEQ)
        epoch0 = [single.locate(s, j) for stream_of, j in draws if stream_of == s and j < total]
        assert len(set(epoch0)) == len(epoch0)  # no window twice within an epoch
        if len(epoch0) == total:  # a finished epoch visited every window of the stream
            assert sorted(epoch0) == sorted((k, q, p) for k, shard in enumerate(stream.shards)
                                            for q in range(shard["sequences"]) for p in range(2))
    assert max(j for s, j in draws if s == 1) >= split.streams[1].windows(split.seq_len, SEQ)  # ru.ru did wrap
    split.workers = 2  # the DataLoader path: two worker processes give the batches of the in-process reader
    ahead, plain = split.batches(SEQ, seed=3, rank=1, world=2), StreamBatches(split, SEQ, 3, rank=1, world=2, workers=0)
    assert all(torch.equal(ahead.next_batch(size), plain.next_batch(size)) for _ in range(5))
    assert ahead.state() == plain.state()
    split.log = print  # what a spawned worker (Windows, macOS) receives: a pickled reader, without the logger
    spawned = pickle.loads(pickle.dumps(ahead))
    assert spawned.log is None and torch.equal(spawned.read(spawned.plan(size)), plain.next_batch(size))


def test_resuming_on_more_ranks_keeps_the_order_and_the_schedule(folders):
    _, url = folders
    split = TarData.open(url).split("train")
    split.set_schedule(parse_schedule("0:en=1,ru=1;3:en=1,ru=3"))
    split.rows_per_step = 16  # one process, 16 rows a step
    one = split.batches(SEQ, seed=1)
    reference = [one.plan(16) for _ in range(5)]
    first = split.batches(SEQ, seed=1)
    [first.plan(16) for _ in range(2)]
    split.rows_per_step = 8  # resumed on 2 ranks of 8 rows: the same 16 samples a step
    ranks = [split.batches(SEQ, seed=1, rank=r, world=2) for r in range(2)]
    for reader in ranks:
        reader.restore(json.loads(json.dumps(first.state())))
    resumed = [ranks[0].plan(8) + ranks[1].plan(8) for _ in range(3)]
    assert resumed == reference[2:]
    assert ranks[0].state()["segment"]["start"] == one.state()["segment"]["start"] == 3 * 16  # the stage began at step 3
    split.rows_per_step = 16  # resumed on 2 ranks of 16 rows: 32 samples a step from step 2 on
    bigger = split.batches(SEQ, seed=1, rank=0, world=2)
    bigger.restore(first.state())
    [bigger.plan(16) for _ in range(2)]  # steps 2 and 3
    assert bigger.state()["segment"]["start"] == 2 * 16 + 32 and bigger.state()["step"] == [4, 2 * 16 + 2 * 32]


def test_bad_input_is_one_sentence(folders, tmp_path, capsys):
    root, url = folders
    free = ThreadingHTTPServer(("127.0.0.1", 0), QuietHandler)
    closed = f"http://127.0.0.1:{free.server_address[1]}/tar"
    free.server_close()  # nothing listens there now
    with pytest.raises(DataError, match="cannot read .*server is reachable"):
        TarData.open(closed)
    with pytest.raises(DataError, match="does not exist"):
        TarData.open(f"{url}/no-such-folder")
    with pytest.raises(DataError, match="the mix names books"):
        open_corpus(small_cfg(2, "books=1,en=1"), [url], None)
    with pytest.raises(DataError, match="apply to streamed tar shards only"):
        open_corpus(small_cfg(2, "en=1,ru=1"), [str(root / "mmap")], None)
    copy = tmp_path / "copy"
    shutil.copytree(root / "tar", copy)
    split = TarData.open(copy / "manifest.json").split("train")
    shard = copy / split.streams[0].shards[0]["file"]
    shard.write_bytes(shard.read_bytes()[:-1024])  # a cut download
    with pytest.raises(DataError, match="does not match its manifest's checksum"):
        split.fetcher.get(split.streams[0].shards[0])
    for shard in (copy / "train").iterdir():
        shard.write_bytes(b"not a tar")
    with pytest.raises(DataError, match=r"^the shard .* does not match its manifest's checksum; [^\n]*$"):
        StreamBatches(split, SEQ, 0, workers=1).next_batch(4)  # from a DataLoader worker: the same one sentence
    with pytest.raises(DataError, match="increasing steps"):
        parse_schedule("5:en=1,ru=1;2:en=1,ru=3")
    code = main(["train", "--data", f"{url}/no-such-folder", "--out", str(tmp_path / "x"), "--steps", "2", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("sunfish: error: ") and "does not exist" in err and len(err.splitlines()) == 1
