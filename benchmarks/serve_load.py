"""Load on `sunfish serve`: throughput and latency of continuous batching against one row at a time.

    python benchmarks/serve_load.py [--model PATH] [--requests 500] [--concurrency 64] [--max-tokens 32]
                                    [--steps N] [--timeout 120] [--budget 600] [--batches 64,1] [--stream]

For each `--max-batch` value in `--batches`, in one run: start a real server (`python -m sunfish serve MODEL
--port 0 --max-batch B --max-queue <concurrency>`) in a subprocess, send it one warm-up request, then
`--concurrency` client threads over loopback POST `/v1/completions` until `--requests` have been sent (distinct
prompts from a built-in list, seed = request number) or `--budget` seconds have passed (no new request after
that; the table says how many ran). Each request's latency, status and `usage.completion_tokens` are kept;
a non-200 answer, a broken stream or a request over `--timeout` seconds counts as an error. `--stream` sends
streaming requests and also measures the time to the first chunk that carries text. Before the server is
stopped with SIGTERM (and must exit with 0), `GET /metrics` is read: the mean rows per merged forward round
during the load (`sunfish_batch_rows_sum / _count`) shows whether the batching happened; the mean seconds per
round (`sunfish_step_seconds`) and the share of the wall time spent in merged forward passes ("in forward")
show how much of the time is the network rather than the per-row sampler work and HTTP around it.

The table: requests done, errors, p50 and p99 latency, requests/s and completion tokens/s (successful requests
over the wall time of the load), and requests/s as a ratio to the baseline (max batch 1 when listed, otherwise
the last value) measured in the same run. One pass of many requests per setting is the sample, so there are
no repeats; the client threads share the machine with the server, as a local client would.

Without `--model`, a small masked model is trained once (`sunfish train --preset nano --steps 200`, ~15 s on
a CPU) into `--workdir` and reused after that.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import re
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["Once upon a time", "The little dog", "One day, a girl named Lily", "Tom and his mom went",
           "The sun was warm and", "A big red ball", "In the garden there was", "The cat sat on",
           "Ben wanted to play", "The old tree", "She found a shiny", "At the park, the kids"]
READY = re.compile(r" at (http://\S+)/v1,")


@dataclass
class Result:
    status: int  # HTTP status; 0 when the request failed without one (timeout, broken connection or stream)
    seconds: float
    tokens: int = 0  # usage.completion_tokens
    first: float | None = None  # seconds to the first chunk with text (streams)
    error: str = ""


@dataclass
class Server:
    process: subprocess.Popen
    url: str = ""
    lines: deque = field(default_factory=lambda: deque(maxlen=40))  # the last lines of its stdout and stderr


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, help="what to serve (default: a nano masked model trained into --workdir)")
    p.add_argument("--workdir", type=Path, default=ROOT / "runs" / "bench-serve", help="where the default model goes")
    p.add_argument("--requests", type=int, default=500, help="requests per setting (default 500)")
    p.add_argument("--concurrency", type=int, default=64, help="client threads sending at once (default 64)")
    p.add_argument("--max-tokens", type=int, default=32, help="max_tokens of every request (default 32)")
    p.add_argument("--steps", type=int, help="sampler steps (sunfish.steps; default: the checkpoint's)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature, so seeds matter (default 1)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds one request may take (default 120)")
    p.add_argument("--budget", type=float, default=600.0, help="seconds per setting after which no request is sent")
    p.add_argument("--batches", default="64,1", help="--max-batch values to compare; 1 (or the last) is the baseline")
    p.add_argument("--stream", action="store_true", help="streaming requests; also time to the first text")
    p.add_argument("--device", default="auto", help="the server's --device (default auto)")
    p.add_argument("--threads", type=int, default=0, help="the server's torch threads (0 = torch's default)")
    args = p.parse_args(argv)
    args.batches = [int(b) for b in args.batches.split(",") if b.strip()]
    if not args.batches or min(args.batches) < 1 or args.requests < 1 or args.concurrency < 1:
        p.error("--batches needs positive integers, --requests and --concurrency at least 1")
    return args


def environment() -> dict:
    path = os.pathsep.join(p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"}


def default_model(workdir: Path) -> Path:
    """A nano masked model trained for 200 steps into workdir/nano, unless one is already there."""
    from sunfish.checkpoint.files import list_checkpoints

    out = workdir / "nano"
    if list_checkpoints(out):
        print(f"reusing {out}", flush=True)
        return out
    print(f"training a nano masked model (200 steps) into {out}", flush=True)
    command = [sys.executable, "-m", "sunfish", "train", "--preset", "nano", "--steps", "200", "--out", str(out),
               "--no-progress"]
    done = subprocess.run(command, env=environment(), capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"training failed ({done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return out


def start_server(model: Path, batch: int, args, timeout: float = 180.0) -> Server:
    """`sunfish serve MODEL --port 0 --max-batch B` in a subprocess; returns once its ready line is printed.
    A thread keeps reading its output (the access log), so the pipe never fills and blocks it."""
    command = [sys.executable, "-m", "sunfish", "serve", str(model), "--port", "0", "--device", args.device,
               "--threads", str(args.threads), "--max-batch", str(batch), "--max-queue", str(args.concurrency),
               "--max-tokens", str(args.max_tokens)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment())
    server, found = Server(process), threading.Event()

    def read():
        for line in process.stdout:
            server.lines.append(line)
            match = READY.search(line)
            if match and not found.is_set():
                server.url = match.group(1)
                found.set()
        found.set()

    threading.Thread(target=read, daemon=True).start()
    if not found.wait(timeout) or not server.url:
        process.kill()
        process.wait()
        raise RuntimeError("the server did not start:\n" + "".join(server.lines))
    return server


def stop_server(server: Server, timeout: float = 60.0) -> str:
    """SIGTERM, then wait: the exit status, or 'killed' when it had not exited within `timeout` seconds."""
    server.process.terminate()
    try:
        return str(server.process.wait(timeout))
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()
        return "killed"


def body(i: int, args) -> dict:
    out = {"prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": args.max_tokens, "seed": i,
           "temperature": args.temperature}
    if args.steps:
        out["sunfish"] = {"steps": args.steps}
    if args.stream:
        out |= {"stream": True, "stream_options": {"include_usage": True}}
    return out


def read_stream(response, began: float) -> Result:
    """A streamed answer: usage from the last chunk, the time to the first text, an error without [DONE]."""
    first, tokens = None, 0
    for line in response.iter_lines():
        if not line.startswith("data: "):
            continue
        if line == "data: [DONE]":
            return Result(200, time.perf_counter() - began, tokens, first)
        chunk = json.loads(line[6:])
        if first is None and any(c.get("text") for c in chunk.get("choices", [])):
            first = time.perf_counter() - began
        if chunk.get("usage"):
            tokens = chunk["usage"]["completion_tokens"]
    return Result(0, time.perf_counter() - began, tokens, first, "the stream ended without [DONE]")


def one_request(client, url: str, payload: dict, timeout: float) -> Result:
    import httpx

    began = time.perf_counter()
    try:
        if payload.get("stream"):
            with client.stream("POST", url + "/v1/completions", json=payload) as r:
                if r.status_code != 200:
                    return Result(r.status_code, time.perf_counter() - began, error=r.read().decode()[:200])
                result = read_stream(r, began)
        else:
            r = client.post(url + "/v1/completions", json=payload)
            result = Result(r.status_code, time.perf_counter() - began)
            if r.status_code == 200:
                result.tokens = r.json()["usage"]["completion_tokens"]
            else:
                result.error = r.text[:200]
    except httpx.HTTPError as err:
        return Result(0, time.perf_counter() - began, error=f"{type(err).__name__}: {err}")
    if result.status == 200 and result.seconds > timeout:
        result.status, result.error = 0, f"took {result.seconds:.1f} s, over --timeout"
    return result


def load(url: str, args) -> tuple[list[Result], float]:
    """--concurrency threads send requests until --requests are sent or --budget has passed: (results, wall s)."""
    import httpx

    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
    results: list[Result] = []
    numbers = itertools.count()
    began = time.perf_counter()
    with httpx.Client(timeout=args.timeout, limits=limits) as client:
        def worker():
            while (i := next(numbers)) < args.requests and time.perf_counter() - began < args.budget:
                results.append(one_request(client, url, body(i, args), args.timeout))

        threads = [threading.Thread(target=worker) for _ in range(min(args.concurrency, args.requests))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    return results, time.perf_counter() - began


def rounds(url: str) -> dict[str, float]:
    """The sums and counts of the server's histograms of rows per merged round and of seconds per round."""
    import httpx

    text = httpx.get(url + "/metrics", timeout=30).text
    return {name: float(value) for name, value in
            re.findall(r"^(sunfish_(?:batch_rows|step_seconds)_(?:sum|count)) (\S+)$", text, re.M)}


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in [0, 1]); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def measure(model: Path, batch: int, args) -> dict:
    """One setting: start the server, warm it up, load it, read its metrics, stop it."""
    server = start_server(model, batch, args)
    try:
        import httpx

        with httpx.Client(timeout=args.timeout) as client:
            one_request(client, server.url, body(args.requests, args), args.timeout)  # warm-up, not counted
        before = rounds(server.url)
        results, wall = load(server.url, args)
        after = rounds(server.url)
    finally:
        code = stop_server(server)
    delta = {k: v - before.get(k, 0.0) for k, v in after.items()}
    n = delta.get("sunfish_batch_rows_count", 0)
    row = summarise(batch, results, wall) | {"exit": code}
    row["rows"] = delta["sunfish_batch_rows_sum"] / n if n else None
    row["round_ms"] = 1000 * delta["sunfish_step_seconds_sum"] / n if n else None
    row["busy"] = delta.get("sunfish_step_seconds_sum", 0.0) / wall
    errors = [r.error or f"status {r.status}" for r in results if r.status != 200]
    if errors:
        row["first_error"] = errors[0]
    if code != "0":
        row["log"] = "".join(server.lines)
    return row


def summarise(batch: int, results: list[Result], wall: float) -> dict:
    ok = [r for r in results if r.status == 200]
    firsts = [r.first for r in ok if r.first is not None]
    return {"batch": batch, "done": len(results), "errors": len(results) - len(ok), "wall": wall,
            "p50": percentile([r.seconds for r in ok], 0.5), "p99": percentile([r.seconds for r in ok], 0.99),
            "ttft50": percentile(firsts, 0.5), "ttft99": percentile(firsts, 0.99),
            "rps": len(ok) / wall, "tps": sum(r.tokens for r in ok) / wall}


def table(rows: list[dict], stream: bool) -> str:
    base = next((r for r in rows if r["batch"] == 1), rows[-1])
    num = lambda v, f=".3f": "-" if v is None else format(v, f)
    header = ["max_batch", "requests done", "errors", "p50 latency (s)", "p99 latency (s)"]
    header += ["p50 first text (s)", "p99 first text (s)"] if stream else []
    header += ["requests/s", "tokens/s", f"vs max_batch {base['batch']}", "mean batch rows", "mean round (ms)",
               "in forward", "exit"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---:|" * len(header)]
    for r in rows:
        cells = [str(r["batch"]), str(r["done"]), str(r["errors"]), num(r["p50"]), num(r["p99"])]
        cells += [num(r["ttft50"]), num(r["ttft99"])] if stream else []
        ratio = r["rps"] / base["rps"] if base["rps"] else None
        cells += [num(r["rps"], ".1f"), num(r["tps"], ",.0f"), num(ratio, ".2f") + ("x" if ratio else ""),
                  num(r["rows"], ".2f"), num(r["round_ms"], ".1f"), num(r["busy"], ".0%"), r["exit"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    model = args.model or default_model(args.workdir)
    print(f"serving {model}: {args.requests} requests per setting, {args.concurrency} at once, max_tokens "
          f"{args.max_tokens}, steps {args.steps or 'default'}, {'streaming' if args.stream else 'not streaming'}, "
          f"budget {args.budget:g} s; {os.cpu_count()} CPUs", flush=True)
    rows = []
    for batch in args.batches:
        row = measure(model, batch, args)
        rows.append(row)
        cut = f" (--budget reached: {args.requests - row['done']} not sent)" if row["done"] < args.requests else ""
        print(f"max_batch {batch}: {row['done']} requests in {row['wall']:.1f} s{cut}, {row['errors']} errors, "
              f"server exit {row['exit']}" + (f"; first error: {row['first_error']}" if "first_error" in row else ""),
              flush=True)
        if "log" in row:
            print(row["log"], file=sys.stderr)
    print()
    print(table(rows, args.stream))
    failed = [r["batch"] for r in rows if r["errors"] or r["exit"] != "0"]
    if failed:
        print(f"\nerrors or an unclean exit at max_batch {', '.join(map(str, failed))} (see above)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
