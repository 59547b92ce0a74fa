"""The serving engine: request rows decoded concurrently through the ordinary sampler, batched step by step.

Rows (one choice of one request each) wait in a queue; whenever decoding slots are free, a dispatcher takes
the oldest waiting row together with the waiting rows that can share its decode (the same sampler settings,
stop token and generation length; for processes that cannot pad, the same prompt length) and decodes them as
one batch in a worker thread, exactly as `sunfish.sample.text.generate_batch` does: one seeded generator per
row and left padding, so each row gets the tokens it would get alone with its seed. The network is shared
through a `MergedForward` (merge.py): the forward passes of every batch decoding at that moment run as one, so
rows that arrive while others decode start at once and join them at their next step. A row whose text is
final (a stop token or string, see sample/stream.py) or whose client left is answered at once; its batch goes
on for the others. At most `max_batch` rows decode at once; up to `max_queue` more wait, and beyond that a
row is refused (`QueueFull`). `drain` stops admission, lets admitted rows finish within a grace period and
cancels the rest.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

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
    """Every row of a batch has its answer: decoding can stop."""


@dataclass(eq=False)
class _Waiting:
    row: Row
    future: Future
    admitted: float
    release: Callable[[_Waiting], None]  # frees its slot in the engine
    began: float = 0.0
    done: bool = False

    def key(self, mixed: bool) -> tuple:
        """Rows with equal keys decode in one batch."""
        r = self.row
        return (r.cfg, r.stop_id, len(r.ids) - r.fill_start, None if mixed else len(r.ids))

    def answer(self, region: list[int], steps: int, nfe: int) -> None:
        now = time.perf_counter()
        self.settle(RowResult(region=region, steps=steps, nfe=nfe, seconds=now - self.began, queued=self.began - self.admitted))

    def fail(self, err: BaseException) -> None:
        self.settle(err)

    def settle(self, outcome: RowResult | BaseException) -> None:
        """Free the row's slot, then answer it (so its client's next request finds the slot free)."""
        if self.done:
            return
        self.done = True
        self.release(self)
        if isinstance(outcome, BaseException):
            self.future.set_exception(outcome)
        else:
            self.future.set_result(outcome)


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
        self._cond = threading.Condition()
        self._queue: deque[_Waiting] = deque()
        self._running: set[_Waiting] = set()
        self.closing = False
        threading.Thread(target=self._dispatch, name="sunfish-dispatch", daemon=True).start()

    @property
    def decoding(self) -> int:
        return len(self._running)

    @property
    def waiting(self) -> int:
        return len(self._queue)

    def submit(self, rows: list[Row]) -> list[Future]:
        """Admit all of `rows` or none; each future gives a RowResult (or raises Cancelled)."""
        with self._cond:
            if self.closing:
                raise ShuttingDown("the server is shutting down")
            if len(self._queue) + len(self._running) + len(rows) > self.max_batch + self.max_queue:
                raise QueueFull(f"{len(self._running)} rows are decoding and {len(self._queue)} waiting; retry shortly")
            now = time.perf_counter()
            waiting = [_Waiting(row, Future(), now, self._release) for row in rows]
            self._queue.extend(waiting)
            self._cond.notify_all()
        return [w.future for w in waiting]

    def _dispatch(self) -> None:
        """Start a batch whenever rows wait and slots are free."""
        mixed = self.loaded.mixed_batches and self.loaded.spec.mixed_batches
        while True:
            with self._cond:
                while not (self._queue and len(self._running) < self.max_batch):
                    if self.closing and not self._queue and not self._running:
                        return
                    self._cond.wait(0.5)
                first = self._queue.popleft()
                batch, key = [first], first.key(mixed)
                for w in list(self._queue):
                    if len(self._running) + len(batch) >= self.max_batch:
                        break
                    if w.key(mixed) == key:
                        self._queue.remove(w)
                        batch.append(w)
                self._running.update(batch)
            self._pool.submit(self._run, batch)

    def _run(self, batch: list[_Waiting]) -> None:
        began = time.perf_counter()
        for w in batch:
            w.began = began
        try:
            live = [w for w in batch if not w.row.cancelled.is_set()]
            for w in batch:
                if w not in live:
                    w.fail(Cancelled("the request was cancelled before it started"))
            if live:
                self._decode(live)
        except BaseException as err:  # every row of the batch hears of it
            for w in batch:
                w.fail(err)
        finally:
            for w in batch:
                w.fail(RuntimeError("the decode ended without an answer for this row"))  # none is left unanswered

    def _release(self, w: _Waiting) -> None:
        with self._cond:
            self._running.discard(w)
            self._cond.notify_all()

    def _decode(self, batch: list[_Waiting]) -> None:
        from sunfish.sample.batch import left_pad, row_generators

        first = batch[0].row
        x, padding = left_pad([w.row.ids for w in batch], self.loaded.tokenizer.pad_id, self.device)
        fill_start = x.shape[1] - (len(first.ids) - first.fill_start)
        generators = row_generators([w.row.seed for w in batch], self.device)
        with self.forward.member() as forward:
            step = _stepper(batch, x.shape[1], fill_start, forward)
            try:
                result = self._decode_canvas(self.loaded, x, fill_start, first.cfg, generators, padding=padding,
                                             recorder=step, eos_id=first.stop_id)
            except _Ended:
                return
            # a latent model's sampler calls its own parts, not the merged `hidden`: its count is the sampler's
            passes = forward.passes() or result.nfe
            for b, w in enumerate(batch):
                w.answer(result.tokens[b, fill_start:].tolist(), result.steps, passes)

    def cancel_all(self) -> int:
        with self._cond:
            rows = [w.row for w in (*self._queue, *self._running)]
        for row in rows:
            row.cancelled.set()
        return len(rows)

    def drain(self, grace: float) -> int:
        """Stop admitting rows, wait up to `grace` seconds for the admitted ones, cancel what is left; returns
        how many were cancelled."""
        with self._cond:
            self.closing = True
            self._cond.notify_all()
        deadline = time.monotonic() + grace
        while (self._queue or self._running) and time.monotonic() < deadline:
            time.sleep(0.05)
        cancelled = self.cancel_all()
        with self._cond:
            for w in self._queue:
                w.fail(Cancelled("the server stopped before the request started"))
            self._queue.clear()
            self._cond.notify_all()
        self._pool.shutdown(wait=True, cancel_futures=False)
        return cancelled


def _stepper(batch: list[_Waiting], width: int, fill_start: int, forward: MergedForward):
    """The batch's per-step callback: each open row sees its own row of the step (without its left padding);
    a row whose client left, or whose text is final, is answered now; when none is open, decoding stops."""
    from sunfish.sample.unmask import StepInfo

    def step(info) -> None:
        for b, w in enumerate(batch):
            if w.done:
                continue
            if w.row.cancelled.is_set():
                w.fail(Cancelled("the request was cancelled"))
                continue
            pad = width - len(w.row.ids)
            own = StepInfo(step=info.step, tokens=info.tokens[b : b + 1, pad:], masked=info.masked[b : b + 1, pad:],
                           revealed=info.revealed[b : b + 1, pad:],
                           remasked=None if info.remasked is None else info.remasked[b : b + 1, pad:])
            if w.row.on_step is not None and w.row.on_step(own):
                w.answer(info.tokens[b, fill_start:].tolist(), info.step, forward.passes())
        if all(w.done for w in batch):
            raise _Ended()

    return step
