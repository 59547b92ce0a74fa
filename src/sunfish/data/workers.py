"""An order-preserving parallel map over worker processes with a bounded number of tasks in flight.

`multiprocessing.Pool.imap` reads its whole input iterator ahead of the workers, which would pull an
entire corpus into memory when reading is faster than cleaning; here at most `2 * workers` chunks are
queued, so memory stays flat in the input size. Results come back in input order, so everything decided
from them (deduplication, shard contents) is the same for any number of workers.

Workers are forked on Linux unless the program chose another start method (`sunfish.portable`): no
re-import, and no need for an importable `__main__`, which "spawn" requires and a script fed on stdin
lacks. Elsewhere (Windows, macOS) they are spawned, so the initializer, its arguments and every task
function are top-level and picklable. They are forked once, before this
process trains a tokenizer, because forking after the Rust tokenizer has used its thread pool makes
the library disable it with a warning; the workers themselves run the tokenizer single-threaded
(TOKENIZERS_PARALLELISM=false) and use no torch. With one worker
everything runs in this process.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from typing import Any, Callable, Iterable, Iterator

from sunfish.portable import worker_start_method


def default_workers() -> int:
    """One worker per CPU this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return max(1, os.cpu_count() or 1)


def _child_init(initializer: Callable[..., None], initargs: tuple) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the pool is the parallelism: one tokenizer thread per worker
    initializer(*initargs)


class Workers:
    """A pool of `n` processes (or this process when n <= 1), set up once by `initializer(*initargs)`."""

    def __init__(self, n: int, initializer: Callable[..., None], initargs: tuple = ()):
        self.n = n
        self._pool = None
        if n <= 1:
            initializer(*initargs)
        else:
            self._pool = multiprocessing.get_context(worker_start_method()).Pool(n, initializer=_child_init, initargs=(initializer, initargs))

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> Iterator[Any]:
        """Yield `fn(item)` for each item, in order, with at most 2n items in flight."""
        if self._pool is None:
            for item in items:
                yield fn(item)
            return
        pending: deque = deque()
        for item in items:
            pending.append(self._pool.apply_async(fn, (item,)))
            if len(pending) >= 2 * self.n:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None

    def __enter__(self) -> "Workers":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
