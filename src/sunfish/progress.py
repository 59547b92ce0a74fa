"""Progress of long loops: a tqdm bar on a terminal, plain lines in a file or a CI log.

tqdm redraws its bar with carriage returns, so written to a file every redraw stays as a line of its own
(a short training run left a log of hundreds of kilobytes). When the stream is not a terminal, `progress`
returns a `PlainProgress` instead, which writes one line each time the count passes a multiple of
`every`, and a last one on `close`:

    train 40/1,000 (4%) [00:12] loss=3.412 lr=1.00e-03 tok_s=12,345
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from tqdm import tqdm


def progress(*, total: int | None = None, initial: int = 0, desc: str = "", unit: str = "it",
             unit_scale: bool = False, every: int = 1, disable: bool = False,
             stream: TextIO | None = None) -> "tqdm | PlainProgress":
    """A progress display counting `unit`s from `initial` towards `total` (None: unknown) on `stream`
    (default: standard error). Both kinds offer update(n), set_postfix(**figures) and close().

    On a terminal, or when `disable` (then it shows nothing), a tqdm bar; `every` is ignored.
    Elsewhere, a `PlainProgress` writing a line every `every` units (>= 1).
    """
    stream = sys.stderr if stream is None else stream
    if disable or _is_terminal(stream):
        return tqdm(total=total, initial=initial, desc=desc, unit=unit, unit_scale=unit_scale, disable=disable,
                    dynamic_ncols=True, file=stream)
    return PlainProgress(stream, total=total, initial=initial, desc=desc, unit=unit, unit_scale=unit_scale, every=every)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class PlainProgress:
    """Progress as whole lines, without carriage returns: one each time the count passes a multiple of
    `every`, and one on `close` when the count moved since the last line. The line carries the figures
    of the latest `set_postfix`."""

    def __init__(self, stream: TextIO, *, total: int | None, initial: int, desc: str, unit: str,
                 unit_scale: bool, every: int):
        if every < 1:
            raise ValueError(f"progress lines need every >= 1 unit, not {every}")
        self.stream, self.total, self.desc, self.unit, self.unit_scale, self.every = (
            stream, total, desc, unit, unit_scale, every)
        self.n = initial  # units counted so far
        self.shown = initial  # the count the last line showed
        self.postfix: dict[str, object] = {}
        self.started = time.monotonic()

    def update(self, n: int = 1) -> None:
        """Count `n` more units; write a line if the count passed a multiple of `every`."""
        before, self.n = self.n, self.n + n
        if self.n // self.every > before // self.every:
            self._write()

    def set_postfix(self, **figures: object) -> None:
        """Figures (name=value) for the next lines, replacing the previous ones."""
        self.postfix = figures

    def close(self) -> None:
        """Write the last line, unless the previous one already showed the final count."""
        if self.n != self.shown:
            self._write()

    def line(self) -> str:
        """`desc count[/total unit] [(pct%)] [elapsed] name=value ...` for the current count."""
        count = self._amount(self.n) + (f"/{self._amount(self.total)}" if self.total else "")
        if self.unit_scale:
            count += self.unit  # 1.20GB
        elif self.unit != "it":
            count += f" {self.unit}"  # 1,200/24,000 doc
        parts = [self.desc, count] if self.desc else [count]
        if self.total:
            parts.append(f"({100 * self.n // self.total}%)")
        parts.append(f"[{tqdm.format_interval(time.monotonic() - self.started)}]")
        parts += [f"{name}={value}" for name, value in self.postfix.items()]
        return " ".join(parts)

    def _amount(self, n: int) -> str:
        return tqdm.format_sizeof(n) if self.unit_scale else f"{n:,}"

    def _write(self) -> None:
        self.shown = self.n
        print(self.line(), file=self.stream, flush=True)
