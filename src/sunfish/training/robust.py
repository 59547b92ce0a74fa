"""What keeps a multi-day run alive: a run-folder lock, a graceful stop on SIGTERM/SIGINT, and a guard that
skips steps with a non-finite loss or gradient and stops the run after too many in a row."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import threading
from pathlib import Path
from types import FrameType


class RunInUseError(OSError):
    """Another live process is training in the run folder."""


class TrainingAborted(ValueError):
    """Too many bad steps in a row; the message is one sentence."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


class RunLock:
    """RUN_DIR/.lock holding {"pid", "host"}: a second live run in the same folder is refused; a lock left
    by a dead process (kill -9, power loss) on this host is taken over."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / ".lock"
        self.held = False
        self.took_over: int | None = None  # pid of the dead owner whose stale lock was replaced

    def acquire(self) -> "RunLock":
        me = {"pid": os.getpid(), "host": socket.gethostname()}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner is not None and owner["pid"] != me["pid"] and (owner["host"] != me["host"] or _alive(owner["pid"])):
                    raise RunInUseError(
                        f"the run folder '{self.path.parent}' is in use by another run (pid {owner['pid']} on "
                        f"{owner['host']}); wait for it to finish, stop it, or choose another --out"
                    ) from None
                self.took_over = owner["pid"] if owner else None
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(me))
            self.held = True
            return self
        raise RunInUseError(f"could not take the lock '{self.path}' (another run keeps creating it); choose another --out")

    def _owner(self) -> dict | None:
        try:
            body = json.loads(self.path.read_text(encoding="utf-8"))
            return {"pid": int(body["pid"]), "host": str(body["host"])}
        except (OSError, ValueError, KeyError, TypeError):
            return None  # half-written or unreadable: treat as stale

    def release(self) -> None:
        if self.held:
            owner = self._owner()
            if owner and owner["pid"] == os.getpid():
                self.path.unlink(missing_ok=True)
            self.held = False


class StopRequest:
    """Turns the first SIGTERM or SIGINT into a flag the loop checks after each step (it then writes a
    checkpoint and returns); a second signal interrupts at once. Handlers are restored on exit."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""


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
