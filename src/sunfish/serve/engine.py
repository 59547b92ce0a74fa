"""The serving engine: request rows decoded concurrently through the ordinary sampler, batched step by step.

Each row (one choice of one request) is a canvas decoded in a worker thread exactly as
`sunfish.sample.text.generate` decodes it alone: one seeded generator, the checkpoint's sampler, its per-step
callback. The network is shared through a `MergedForward` (merge.py), so the rows that are decoding at the same
time run their forward passes as one batch: a row that arrives joins at the next step, a finished row leaves.
At most `max_batch` rows decode at once; up to `max_queue` more wait for a free slot, and beyond that a row is
refused (`QueueFull`). `drain` stops admission, lets running rows finish within a grace period and cancels
the rest.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import torch

from sunfish.config import SamplerConfig
from sunfish.serve.merge import MergedForward

if TYPE_CHECKING:
    from sunfish.loading import LoadedModel
    from sunfish.sample.unmask import StepInfo


class QueueFull(RuntimeError):
    """Every decoding slot and queue place is taken."""


class ShuttingDown(RuntimeError):
    """The engine is draining and takes no new rows."""


class Cancelled(RuntimeError):
    """The row was cancelled (its client left, or the server stopped before it finished)."""


@dataclass(eq=False)
class Row:
    """One canvas to decode: `ids` (prompt then masks), of which columns from `fill_start` on are generated."""

    ids: list[int]
    fill_start: int
    cfg: SamplerConfig
    seed: int
    stop_id: int | None  # EOS or a template's end of turn (the sampler's stop token)
    on_step: Callable[[StepInfo], bool] | None = None  # after each step; True ends decoding (its text is final)
    cancelled: threading.Event = field(default_factory=threading.Event)


@dataclass(frozen=True)
class RowResult:
    region: list[int]  # the generated columns (masks remain where decoding ended early)
    steps: int
    nfe: int  # network passes this row took part in
    seconds: float  # from the start of its decoding (queueing excluded) to its end
    queued: float  # seconds it waited for a slot


class _Ended(Exception):
    def __init__(self, info):
        self.info = info


class Engine:
    def __init__(self, loaded: LoadedModel, max_batch: int = 16, max_queue: int = 256,
                 on_round: Callable[[int, float], None] | None = None):
        from sunfish.sample.text import decode_canvas

        self._decode_canvas = decode_canvas
        self.forward = MergedForward(loaded.model, on_round=on_round)
        self.loaded = dataclasses.replace(loaded, model=self.forward)
        self.device = next(loaded.model.parameters()).device
        self.max_batch, self.max_queue = max_batch, max_queue
        self._pool = ThreadPoolExecutor(max_workers=max_batch, thread_name_prefix="sunfish-decode")
        self._lock = threading.Lock()
        self._rows: set[Row] = set()  # admitted and not finished
        self._decoding = 0
        self.closing = False

    @property
    def decoding(self) -> int:
        return self._decoding

    @property
    def waiting(self) -> int:
        return len(self._rows) - self._decoding

    def submit(self, rows: list[Row]) -> list[Future]:
        """Admit all of `rows` or none; each future gives a RowResult (or raises Cancelled)."""
        with self._lock:
            if self.closing:
                raise ShuttingDown("the server is shutting down")
            if len(self._rows) + len(rows) > self.max_batch + self.max_queue:
                raise QueueFull(f"{len(self._rows)} rows are decoding or waiting; retry shortly")
            self._rows.update(rows)
        admitted = time.perf_counter()
        return [self._pool.submit(self._run, row, admitted) for row in rows]

    def _run(self, row: Row, admitted: float) -> RowResult:
        began = time.perf_counter()
        with self._lock:
            self._decoding += 1
        try:
            if row.cancelled.is_set():
                raise Cancelled("the request was cancelled before it started")
            region, steps, nfe = self._decode(row)
            return RowResult(region=region, steps=steps, nfe=nfe, seconds=time.perf_counter() - began,
                             queued=began - admitted)
        finally:
            with self._lock:
                self._decoding -= 1
                self._rows.discard(row)

    def _decode(self, row: Row) -> tuple[list[int], int, int]:
        x = torch.tensor([row.ids], dtype=torch.long, device=self.device)
        generator = torch.Generator(device=self.device).manual_seed(row.seed)

        def step(info):
            if row.cancelled.is_set():
                raise Cancelled("the request was cancelled")
            if row.on_step is not None and row.on_step(info):
                raise _Ended(info)

        with self.forward.member() as forward:
            try:
                result = self._decode_canvas(self.loaded, x, row.fill_start, row.cfg, generator, recorder=step,
                                             eos_id=row.stop_id)
            except _Ended as ended:
                return ended.info.tokens[0, row.fill_start:].tolist(), ended.info.step, forward.passes()
            return result.tokens[0, row.fill_start:].tolist(), result.steps, forward.passes()

    def cancel_all(self) -> int:
        with self._lock:
            rows = list(self._rows)
        for row in rows:
            row.cancelled.set()
        return len(rows)

    def drain(self, grace: float) -> int:
        """Stop admitting rows, wait up to `grace` seconds for the admitted ones, cancel what is left; returns
        how many were cancelled."""
        with self._lock:
            self.closing = True
        deadline = time.monotonic() + grace
        while self._rows and time.monotonic() < deadline:
            time.sleep(0.05)
        cancelled = self.cancel_all()
        self._pool.shutdown(wait=True, cancel_futures=False)
        return cancelled

