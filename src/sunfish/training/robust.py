"""What keeps a multi-day run alive: a run-folder lock, a graceful stop on a signal or a STOP file, and a guard
that skips steps with a non-finite loss or gradient and stops the run after too many in a row.

The lock is an operating-system file lock (flock on Unix, a byte-range lock on Windows, through the
`filelock` library): the system drops it when its holder dies, even by kill -9 or power loss, so no liveness
check of another process is needed (Windows has no `os.kill(pid, 0)`: there it terminates the process).
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import threading
from pathlib import Path
from types import FrameType

from filelock import FileLock, Timeout

from sunfish.fileio import write_text_atomic
from sunfish.portable import stop_signals

STOP_FILE = "STOP"  # RUN_DIR/STOP: a stop request that needs no signal (a Windows box over SSH, a scheduler)


class RunInUseError(OSError):
    """Another live process is training in the run folder."""


class TrainingAborted(ValueError):
    """Too many bad steps in a row; the message is one sentence."""


class RunLock:
    """RUN_DIR/.lock held for the whole run: a second run in the same folder is refused while the first lives.
    RUN_DIR/.lock.owner ({"pid", "host"}) names the holder in that refusal; a run that died keeps no lock but
    leaves its owner file, which the next run reports as taken over."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / ".lock"
        self.owner_path = run_dir / ".lock.owner"
        self._lock = FileLock(str(self.path))
        self.held = False
        self.took_over: int | None = None  # pid of a run that died holding the folder

    def acquire(self) -> "RunLock":
        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            owner = self._owner()
            who = f" (pid {owner['pid']} on {owner['host']})" if owner else ""
            raise RunInUseError(f"the run folder '{self.path.parent}' is in use by another run{who}; wait for it "
                                "to finish, stop it, or choose another --out") from None
        previous = self._owner()
        self.took_over = previous["pid"] if previous else None
        write_text_atomic(self.owner_path, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
        self.held = True
        return self

    def _owner(self) -> dict | None:
        try:
            body = json.loads(self.owner_path.read_text(encoding="utf-8"))
            return {"pid": int(body["pid"]), "host": str(body["host"])}
        except (OSError, ValueError, KeyError, TypeError):
            return None  # none, or unreadable

    def release(self) -> None:
        if self.held:
            self.owner_path.unlink(missing_ok=True)
            self._lock.release()
            self.held = False


class StopRequest:
    """Turns the first stop signal (SIGTERM, SIGINT, and SIGBREAK on Windows: sunfish/portable.py) or a
    RUN_DIR/STOP file into a flag the loop checks after each step (it then writes a checkpoint and returns);
    a second signal interrupts at once. Handlers are restored, and the STOP file removed, on exit."""

    def __init__(self, run_dir: Path | None = None) -> None:
        self.signum: int | None = None
        self.stop_file = run_dir / STOP_FILE if run_dir is not None else None
        self.by_file = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in stop_signals():
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        if self.by_file:
            self.stop_file.unlink(missing_ok=True)  # so that --resume does not stop again at once

    @property
    def requested(self) -> bool:
        if self.signum is None and not self.by_file and self.stop_file is not None:
            self.by_file = self.stop_file.exists()
        return self.signum is not None or self.by_file

    @property
    def name(self) -> str:
        if self.signum:
            return signal.Signals(self.signum).name
        return f"the {STOP_FILE} file" if self.by_file else ""


class BadStepGuard:
    """Counts consecutive steps whose loss or gradient norm is not finite."""

    def __init__(self, limit: int):
        self.limit = limit
        self.in_a_row = 0
        self.total = 0

    def check(self, step: int, loss: float, grad_norm: float) -> bool:
        """True when the step is good (apply it); False to skip it. Raises after `limit` bad steps in a row."""
        if math.isfinite(loss) and math.isfinite(grad_norm):
            self.in_a_row = 0
            return True
        self.in_a_row += 1
        self.total += 1
        if self.in_a_row >= self.limit:
            raise TrainingAborted(
                f"training stopped at step {step}: {self.in_a_row} steps in a row had a non-finite loss or gradient "
                f"(limit --train.max_bad_steps={self.limit}); lower --optim.lr, check the data, then --resume"
            )
        return False
