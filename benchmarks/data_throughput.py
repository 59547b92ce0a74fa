"""Data preparation throughput: MB/s of raw text per stage and in total, and peak memory, by input size.

    python benchmarks/data_throughput.py [--sizes 25,50,100] [--repeats 3] [--workers 2] [--vocab 32768] [--reference]
    python benchmarks/data_throughput.py --quick        # smoke run: 3 MB, one repeat, with --reference

Input: the English and Russian text of ../shared/corpora (Russian classics and TinyStories, English
Gutenberg and children's classics, English TinyStories; ~104 MB of text in all), cut to each size by
taking the same leading fraction of every source's documents and written as .jsonl to a temporary
folder. A byte-level BPE of --vocab tokens is trained once on a 10 MB sample beforehand (not timed), so
every run tokenizes with the same tokenizer, and `prepare` cleans, tokenizes and packs in one pass.
Each run is a fresh process running `prepare` with every cleaning step on (exact + MinHash dedup,
language ID, quality rules, PII) and 2,048-token sequences.

Reported: per stage, the CPU seconds it took summed over the processes that ran it (worker stages are
spread over --workers processes), per 100 MB of input, and the input MB/s that makes; the total is input
MB over wall clock, and the CPU seconds of the whole run (all processes, start-up included) per 100 MB,
which varies much less than wall clock when other work shares the machine. Peak resident memory of the
main process and of the largest worker (ru_maxrss; a forked worker also counts the pages it shares with
its parent). Baselines measured in the same run: "read + tokenize" only reads and tokenizes (the
tokenizers library's multi-threaded encode_batch over all cores, ids appended to one file), the floor a
pipeline tokenizing with the library pays; with --reference, "prepare, library tokenize" is the same
`prepare` with the piece-cache encoder turned off (the tokenizers library encodes, as before it existed);
its shards are checked to be byte-identical. Figures are the median of --repeats runs at the largest
size; the smaller sizes run once, for the memory trend.
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


def child_prepare(inputs: list[str], out: str, tokenizer: str, workers: int, library: bool = False) -> dict:
    from sunfish.data import pack
    from sunfish.data.pack import PackConfig
    from sunfish.data.prepare import prepare

    if library:  # the reference: no piece cache, every document through the tokenizers library
        pack._load_encoder = lambda tokenizer_file: None
    result = prepare(inputs, Path(out), pack=PackConfig(seq_len=2048), tokenizer=Path(tokenizer), workers=workers,
                     progress=False, log=lambda s: None)
    counts = result.manifest["clean"]["counts"]
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    shards = {f["file"]: f["sha256"] for s in result.manifest["streams"] for split in ("train", "val") for f in s[split]["shards"]}
    return {"seconds": dict(result.seconds), "wall": result.wall_seconds, "bytes": counts["bytes_in"],
            "documents": counts["documents"], "kept": counts["kept"], "shards": shards,
            "cpu": own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime,
            "rss_main_mb": own.ru_maxrss / 1024, "rss_worker_mb": children.ru_maxrss / 1024}


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


def report(runs: dict[float, list[dict]], baseline: list[dict], reference: list[dict], workers: int) -> None:
    largest = max(runs)
    main = runs[largest]
    mb = main[0]["bytes"] / 1e6
    median = statistics.median
    stages = sorted({s for r in main for s in r["seconds"]}, key=lambda s: -median(r["seconds"].get(s, 0) for r in main))
    print(f"\nper stage, {mb:.1f} MB of input, {workers} workers, median of {len(main)} runs")
    print(f"{'stage':<26} {'CPU s':>8} {'CPU s/100MB':>12} {'MB/s':>8}")
    for stage in stages:
        secs = median(r["seconds"].get(stage, 0.0) for r in main)
        print(f"{stage:<26} {secs:>8.2f} {100 * secs / mb:>12.2f} {mb / secs if secs else float('inf'):>8.1f}")
    wall, cpu = median(r["wall"] for r in main), median(r["cpu"] for r in main)
    print(f"{'all processes (CPU)':<26} {cpu:>8.2f} {100 * cpu / mb:>12.2f} {mb / cpu:>8.2f}")
    print(f"\n{'run':<26} {'wall s':>8} {'MB/s':>8} {'CPU s/100MB':>12} {'vs prepare':>11}")
    print(f"{'prepare':<26} {wall:>8.2f} {mb / wall:>8.2f} {100 * cpu / mb:>12.2f} {1.0:>10.2f}x")
    if reference:
        ref_wall, ref_cpu = median(r["wall"] for r in reference), median(r["cpu"] for r in reference)
        same = all(r["shards"] == main[0]["shards"] for r in reference + main)
        print(f"{'prepare, library tokenize':<26} {ref_wall:>8.2f} {mb / ref_wall:>8.2f} {100 * ref_cpu / mb:>12.2f} "
              f"{ref_wall / wall:>10.2f}x   shards {'byte-identical' if same else 'DIFFER'}")
    base = median(r["wall"] for r in baseline)
    print(f"{'read + tokenize (library)':<26} {base:>8.2f} {baseline[0]['bytes'] / 1e6 / base:>8.2f} {'':>12} {base / wall:>10.2f}x")
    print(f"\nby input size\n{'MB':>6} {'documents':>10} {'kept':>8} {'wall s':>7} {'MB/s':>6} {'main RSS MB':>12} {'worker RSS MB':>14}")
    for size in sorted(runs):
        r = runs[size]
        pick = lambda key: median(x[key] for x in r)
        print(f"{r[0]['bytes'] / 1e6:>6.1f} {r[0]['documents']:>10,} {r[0]['kept']:>8,} {pick('wall'):>7.1f} "
              f"{r[0]['bytes'] / 1e6 / pick('wall'):>6.2f} {pick('rss_main_mb'):>12.0f} {pick('rss_worker_mb'):>14.0f}")
    print(f"baseline peak RSS: {median(b['rss_main_mb'] for b in baseline):.0f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="25,50,100", help="input sizes in MB")
    parser.add_argument("--repeats", type=int, default=3, help="runs at the largest size")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=32768)
    parser.add_argument("--reference", action="store_true", help="also run prepare with the library tokenizer")
    parser.add_argument("--quick", action="store_true", help="smoke run: --sizes 3 --repeats 1 --reference")
    parser.add_argument("--child", choices=["prepare", "prepare-library", "baseline"], help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--tokenizer", help=argparse.SUPPRESS)
    parser.add_argument("inputs", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child in ("prepare", "prepare-library"):
        print(json.dumps(child_prepare(args.inputs, args.out, args.tokenizer, args.workers, args.child == "prepare-library")))
        return
    if args.child == "baseline":
        print(json.dumps(child_baseline(args.inputs, args.out, args.tokenizer)))
        return
    if not CORPORA.exists():
        sys.exit("this benchmark needs ../shared/corpora")
    if args.quick:
        args.sizes, args.repeats, args.reference = "3", 1, True
    sizes = sorted(float(s) for s in args.sizes.split(","))
    texts = {name: read_source(rel) for name, rel in SOURCES.items()}
    with tempfile.TemporaryDirectory(prefix="sunfish-bench-") as tmp:
        tmp = Path(tmp)
        tokenizer = tmp / "tokenizer.json"
        train_tokenizer(texts, args.vocab, tokenizer)
        inputs = {size: write_inputs(tmp / f"in-{size:g}", texts, size) for size in sizes}
        del texts
        runs, baseline, reference = {}, [], []
        for size in sizes:
            repeats = args.repeats if size == sizes[-1] else 1
            for i in range(repeats):  # interleaved, so that a change in the machine's load hits every kind alike
                runs.setdefault(size, []).append(run_child("prepare", inputs[size], tmp / f"out-{size:g}-{i}", tokenizer, args.workers))
                print(f"{size:g} MB run {i + 1}: {runs[size][-1]['wall']:.1f} s", flush=True)
                if size == sizes[-1]:
                    baseline.append(run_child("baseline", inputs[size], tmp / f"base-{i}", tokenizer, args.workers))
                    if args.reference:
                        reference.append(run_child("prepare-library", inputs[size], tmp / f"ref-{i}", tokenizer, args.workers))
                        print(f"{size:g} MB reference run {i + 1}: {reference[-1]['wall']:.1f} s", flush=True)
        report(runs, baseline, reference, args.workers)


if __name__ == "__main__":
    main()
