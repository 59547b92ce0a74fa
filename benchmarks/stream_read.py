"""Read throughput of training batches: memory-mapped shards against tar shards from a folder and over HTTP.

    python benchmarks/stream_read.py [--docs 400] [--shard-seqs 512] [--batches 300] [--repeats 3]

The built-in stories (--docs, half English, half Russian) are prepared twice with the same tokenizer and
packing (64-token sequences, --shard-seqs sequences per shard, mix ru=3 en=1): memory-mapped `.bin` shards
and WebDataset tar shards. Each reader draws --batches batches of 32 windows of 64 tokens after one batch
of warm-up: `ShardBatches` over the `.bin` folder, `StreamBatches` over the tar folder, and `StreamBatches`
over the tar folder served by `http.server` on 127.0.0.1 (fetching, SHA-256, tar parsing and the mixing
plan included; in the training process, with the next shard fetched by a background thread). Reported:
the median over --repeats seeds of tokens/s and of microseconds per row (the per-row cost does not grow
with the row's length, so 2,048-token rows read about 32 times the tokens/s of these 64-token ones), and
the ratio to the memory-mapped reader in the same run.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import tempfile
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import torch

from sunfish.data.clean import CleanConfig
from sunfish.data.dedup import DedupConfig
from sunfish.data.pack import PackConfig
from sunfish.data.prepare import prepare
from sunfish.data.shards import PreparedData
from sunfish.data.sources import write_documents
from sunfish.data.stream import TarData
from sunfish.data.synth import generate_stories

SEQ, ROWS = 64, 32


class Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def prepared(root: Path, docs: int, shard_seqs: int) -> None:
    stories = generate_stories("both", docs, 5)
    write_documents(root / "en.jsonl", stories[0::2])
    write_documents(root / "ru.jsonl", stories[1::2])
    tokenizer = None
    for fmt in ("mmap", "tar"):
        prepare([str(root / "en.jsonl"), str(root / "ru.jsonl")], root / fmt, clean=CleanConfig(dedup=DedupConfig(minhash=False)),
                pack=PackConfig(seq_len=SEQ, val_fraction=0.1, shard_tokens=SEQ * shard_seqs), tokenizer=tokenizer,
                train_vocab=300, mix={"ru": 3, "en": 1}, workers=1, progress=False, log=lambda s: None, shard_format=fmt)
        tokenizer = root / "mmap"


def tokens_per_s(split, seed: int, batches: int) -> float:
    reader = split.batches(SEQ, seed=seed)
    reader.next_batch(ROWS)
    start = time.perf_counter()
    for _ in range(batches):
        reader.next_batch(ROWS)
    return batches * ROWS * SEQ / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=400)
    parser.add_argument("--shard-seqs", type=int, default=512)
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        prepared(root, args.docs, args.shard_seqs)
        server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        readers = [("memory-mapped folder (ShardBatches)", lambda: PreparedData.open(root / "mmap").split("train")),
                   ("tar folder (StreamBatches)", lambda: TarData.open(str(root / "tar")).split("train")),
                   ("tar over HTTP, 127.0.0.1 (StreamBatches)",
                    lambda: TarData.open(f"http://127.0.0.1:{server.server_address[1]}/tar").split("train"))]
        rows = []
        for name, open_split in readers:
            rows.append((name, statistics.median(tokens_per_s(open_split(), seed, args.batches) for seed in range(args.repeats))))
        server.shutdown()
    print(f"| reader | M tokens/s | µs per row | vs memory-mapped |\n|---|---|---|---|")
    for name, rate in rows:
        print(f"| {name} | {rate / 1e6:.2f} | {SEQ / rate * 1e6:.1f} | {rate / rows[0][1]:.2f} |")


if __name__ == "__main__":
    main()
