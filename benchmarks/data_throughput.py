"""Data preparation throughput: MB/s of raw text per stage and in total, and peak memory, by input size.

    python benchmarks/data_throughput.py [--sizes 25,50,100] [--repeats 3] [--workers 2] [--vocab 32768]

Input: the English and Russian text of ../shared/corpora (Russian classics and TinyStories, English
Gutenberg and children's classics, English TinyStories; ~104 MB of text in all), cut to each size by
taking the same leading fraction of every source's documents and written as .jsonl to a temporary
folder. A byte-level BPE of --vocab tokens is trained once on a 10 MB sample beforehand (not timed), so
every run tokenizes with the same tokenizer. Each run is a fresh process running `prepare` with every
cleaning step on (exact + MinHash dedup, language ID, quality rules, PII) and 2,048-token sequences.

Reported: per stage, the seconds it took summed over the processes that ran it (worker stages are CPU
time spread over --workers processes) and the input MB/s that makes; the total is input MB over wall
clock. Peak resident memory of the main process and of the largest worker (ru_maxrss; a forked worker
also counts the pages it shares with its parent). For comparison, the same run measures a baseline
that only reads and tokenizes (the tokenizers library's own multi-threaded encode_batch over all
cores, documents cut before newlines as prepare cuts them, ids appended to one file): the floor any
pipeline that tokenizes this text with this tokenizer pays. Figures are the
median of --repeats runs at the largest size; the smaller sizes run once, for the memory trend.
"""

from __future__ import annotations

import argparse
import gzip
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CORPORA = Path(__file__).resolve().parents[2] / "shared" / "corpora"
SOURCES = {
    "ru_classics": "ru_classics/ru_classics.jsonl.gz",
    "ru_tinystories": "ru_tinystories/tinystories_ru.jsonl.gz",
    "en_gutenberg": "en_gutenberg_classics/en_gutenberg_classics.jsonl.gz",
    "en_children": "en_children_pd/en_children_pd.jsonl",
    "en_tinystories": "en_tinystories/tinystories_train_head.jsonl",
}


def read_source(relative: str) -> list[str]:
    path = CORPORA / relative
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f]


def write_inputs(folder: Path, texts: dict[str, list[str]], megabytes: float) -> list[str]:
    """Each source's leading documents, the same fraction of each, totalling about `megabytes` MB."""
    total = sum(len(t.encode("utf-8")) for docs in texts.values() for t in docs)
    fraction = min(1.0, megabytes * 1e6 / total)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, docs in texts.items():
        budget, size, path = fraction * sum(len(t.encode("utf-8")) for t in docs), 0, folder / f"{name}.jsonl"
        with path.open("w", encoding="utf-8") as f:
            for text in docs:
                if size >= budget:
                    break
                f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
                size += len(text.encode("utf-8"))
        paths.append(str(path))
    return paths


def child_prepare(inputs: list[str], out: str, tokenizer: str, workers: int) -> dict:
    from sunfish.data.pack import PackConfig
    from sunfish.data.prepare import prepare

    result = prepare(inputs, Path(out), pack=PackConfig(seq_len=2048), tokenizer=Path(tokenizer), workers=workers,
                     progress=False, log=lambda s: None)
    counts = result.manifest["clean"]["counts"]
    return {"seconds": dict(result.seconds), "wall": result.wall_seconds, "bytes": counts["bytes_in"],
            "documents": counts["documents"], "kept": counts["kept"],
            "rss_main_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "rss_worker_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


def child_baseline(inputs: list[str], out: str, tokenizer: str) -> dict:
    """Read the documents and tokenize them (cut as prepare cuts them) with the library's multi-threaded
    batch encoder, appending the ids to one file; nothing else."""
    import numpy as np
    import tokenizers

    from sunfish.data.pack import encode_documents, splits_exactly

    start = time.perf_counter()
    backend = tokenizers.Tokenizer.from_file(tokenizer)
    split, size = splits_exactly(backend), 0
    with open(Path(out) / "ids.bin", "wb") as sink:
        for path in inputs:
            with open(path, encoding="utf-8") as f:
                for lines in iter(lambda: [line for _, line in zip(range(512), f)], []):
                    batch = [json.loads(line)["text"] for line in lines]
                    for ids in encode_documents(backend, batch, split):
                        sink.write(np.asarray(ids, np.uint16).tobytes())
                    size += sum(len(t.encode("utf-8")) for t in batch)
    return {"wall": time.perf_counter() - start, "bytes": size,
            "rss_main_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run_child(kind: str, inputs: list[str], out: Path, tokenizer: Path, workers: int) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, __file__, "--child", kind, "--out", str(out / "data"), "--tokenizer", str(tokenizer),
               "--workers", str(workers), *inputs]
    if kind == "baseline":
        command[command.index("--out") + 1] = str(out)
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def train_tokenizer(texts: dict[str, list[str]], vocab: int, path: Path) -> None:
    from sunfish.tokenizer import train_bpe_tokenizer

    sample, size = [], 0
    for docs in zip(*[d[: len(d) // 3] for d in texts.values()]):  # interleave sources
        for text in docs:
            if size < 10e6:
                sample.append(text)
                size += len(text.encode("utf-8"))
    train_bpe_tokenizer(sample, vocab).save(path)


def report(runs: dict[float, list[dict]], baseline: list[dict], workers: int) -> None:
    largest = max(runs)
    main = runs[largest]
    mb = main[0]["bytes"] / 1e6
    stages = sorted({s for r in main for s in r["seconds"]}, key=lambda s: -statistics.median(r["seconds"].get(s, 0) for r in main))
    print(f"\nper stage, {mb:.1f} MB of input, {workers} workers, median of {len(main)} runs")
    print(f"{'stage':<18} {'seconds':>8} {'MB/s':>8}")
    for stage in stages:
        secs = statistics.median(r["seconds"].get(stage, 0.0) for r in main)
        print(f"{stage:<18} {secs:>8.2f} {mb / secs if secs else float('inf'):>8.1f}")
    wall = statistics.median(r["wall"] for r in main)
    base = statistics.median(r["wall"] for r in baseline)
    print(f"{'total (wall)':<18} {wall:>8.2f} {mb / wall:>8.2f}")
    print(f"{'baseline (wall)':<18} {base:>8.2f} {baseline[0]['bytes'] / 1e6 / base:>8.2f}   read + tokenize only; "
          f"prepare takes {wall / base:.2f}x its time")
    print(f"\nby input size\n{'MB':>6} {'documents':>10} {'kept':>8} {'wall s':>7} {'MB/s':>6} {'main RSS MB':>12} {'worker RSS MB':>14}")
    for size in sorted(runs):
        r = runs[size]
        pick = lambda key: statistics.median(x[key] for x in r)
        print(f"{r[0]['bytes'] / 1e6:>6.1f} {r[0]['documents']:>10,} {r[0]['kept']:>8,} {pick('wall'):>7.1f} "
              f"{r[0]['bytes'] / 1e6 / pick('wall'):>6.2f} {pick('rss_main_mb'):>12.0f} {pick('rss_worker_mb'):>14.0f}")
    print(f"baseline peak RSS: {statistics.median(b['rss_main_mb'] for b in baseline):.0f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="25,50,100", help="input sizes in MB")
    parser.add_argument("--repeats", type=int, default=3, help="runs at the largest size")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=32768)
    parser.add_argument("--child", choices=["prepare", "baseline"], help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--tokenizer", help=argparse.SUPPRESS)
    parser.add_argument("inputs", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "prepare":
        print(json.dumps(child_prepare(args.inputs, args.out, args.tokenizer, args.workers)))
        return
    if args.child == "baseline":
        print(json.dumps(child_baseline(args.inputs, args.out, args.tokenizer)))
        return
    if not CORPORA.exists():
        sys.exit("this benchmark needs ../shared/corpora")
    sizes = sorted(float(s) for s in args.sizes.split(","))
    texts = {name: read_source(rel) for name, rel in SOURCES.items()}
    with tempfile.TemporaryDirectory(prefix="sunfish-bench-") as tmp:
        tmp = Path(tmp)
        tokenizer = tmp / "tokenizer.json"
        train_tokenizer(texts, args.vocab, tokenizer)
        inputs = {size: write_inputs(tmp / f"in-{size:g}", texts, size) for size in sizes}
        del texts
        runs, baseline = {}, []
        for size in sizes:
            repeats = args.repeats if size == sizes[-1] else 1
            for i in range(repeats):
                runs.setdefault(size, []).append(run_child("prepare", inputs[size], tmp / f"out-{size:g}-{i}", tokenizer, args.workers))
                print(f"{size:g} MB run {i + 1}: {runs[size][-1]['wall']:.1f} s", flush=True)
                if size == sizes[-1]:
                    baseline.append(run_child("baseline", inputs[size], tmp / f"base-{i}", tokenizer, args.workers))
        report(runs, baseline, args.workers)


if __name__ == "__main__":
    main()
