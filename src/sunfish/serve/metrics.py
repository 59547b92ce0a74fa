"""Prometheus metrics of one server (its own registry, so two servers in a process do not mix)."""

from __future__ import annotations

import threading
import time
from collections import deque

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

WINDOW = 10.0  # seconds over which the tokens/s gauge averages


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("sunfish_requests", "HTTP requests answered", ["path", "status"], registry=r)
        self.errors = Counter("sunfish_errors", "HTTP requests answered with an error status", ["status"], registry=r)
        self.latency = Histogram("sunfish_request_seconds", "request latency (streams: until the last event)", ["path"],
                                 registry=r, buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
        self.queue = Gauge("sunfish_queue_depth", "rows admitted and waiting for a batch slot", registry=r)
        self.decoding = Gauge("sunfish_decoding_rows", "rows decoding now", registry=r)
        self.batch = Histogram("sunfish_batch_rows", "rows in each merged forward round", registry=r,
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        self.step = Histogram("sunfish_step_seconds", "latency of each merged forward round", registry=r,
                              buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
        self.tokens = Counter("sunfish_generated_tokens", "completion tokens returned", registry=r)
        self.rate = Gauge("sunfish_tokens_per_second", f"completion tokens per second over the last {WINDOW:g} s",
                          registry=r)
        self.rate.set_function(self._rate)
        self._recent: deque[tuple[float, int]] = deque()
        self._lock = threading.Lock()

    def watch(self, engine) -> None:
        """Queue depth and decoding rows read from the engine at scrape time."""
        self.queue.set_function(lambda: engine.waiting)
        self.decoding.set_function(lambda: engine.decoding)

    def round(self, rows: int, seconds: float) -> None:
        self.batch.observe(rows)
        self.step.observe(seconds)

    def answered(self, path: str, status: int, seconds: float) -> None:
        self.requests.labels(path, str(status)).inc()
        if status >= 400:
            self.errors.labels(str(status)).inc()
        self.latency.labels(path).observe(seconds)

    def generated(self, tokens: int) -> None:
        self.tokens.inc(tokens)
        with self._lock:
            self._recent.append((time.monotonic(), tokens))

    def _rate(self) -> float:
        now = time.monotonic()
        with self._lock:
            while self._recent and self._recent[0][0] < now - WINDOW:
                self._recent.popleft()
            return sum(n for _, n in self._recent) / WINDOW

    def text(self) -> bytes:
        return generate_latest(self.registry)
