"""Run notifications through apprise (https://github.com/caronc/apprise): one library for Slack, Telegram,
Discord, ntfy, e-mail, JSON webhooks and about a hundred other services, each named by a URL
(`json://host:port/path`, `tgram://BOT_TOKEN/CHAT_ID`, `ntfy://topic`, `mailto://user:pass@example.com`, ...).

A run with `--notify URL` (train.notify) says when it finishes (steps, final loss, checkpoint, wall time), fails
(the one-line reason and the newest checkpoint), stops (a signal, too many non-finite steps, a GPU that stayed
too hot) and, with `--train.notify_every N`, at every N-th checkpoint (training/watch.py decides when).
Sending never stops training: a notifier that fails (server down, bad credentials, apprise gone) costs one
warning line. What can be checked before any work is: apprise missing, or a URL apprise cannot read.
"""

from __future__ import annotations

import enum
import socket
from pathlib import Path
from typing import Callable

from sunfish.config import ConfigError

INSTALL = "pip install 'sunfish[notify]' (or pip install apprise)"
REASON_CHARS = 300  # a failure's reason is its first line, cut to this many characters


class Level(enum.Enum):
    """How a message is shown (apprise's notify types: colours and icons on the services that have them)."""

    INFO = "info"
    SUCCESS = "success"
    WARNING = "warning"
    FAILURE = "failure"


def _apprise():
    """The apprise module, or a one-sentence refusal that says what to install."""
    try:
        import apprise
    except ImportError:
        raise ConfigError(f"--notify sends through the apprise library, which is not installed; {INSTALL}") from None
    return apprise


class Notifier:
    """The run's notification targets; `send` delivers one message to all of them and never raises."""

    def __init__(self, urls: tuple[str, ...] | list[str], log: Callable[[str], None]):
        apprise = _apprise()
        self.log = log
        self.targets = apprise.Apprise()
        for url in urls:
            if not self.targets.add(url):
                raise ConfigError(f"apprise cannot use the --notify URL '{url}' (an unknown service, a malformed URL or a "
                                  "service whose own package is missing); see https://github.com/caronc/apprise/wiki")
        self.host = socket.gethostname()

    def send(self, title: str, body: str, level: Level) -> bool:
        """Deliver to every target; on any failure log one warning line and return False (training goes on)."""
        why = ""
        try:
            import apprise

            with apprise.LogCapture(level=apprise.logging.WARNING, fmt="%(message)s") as captured:
                ok = bool(self.targets.notify(title=title, body=body, notify_type=level.value))
            lines = [line for line in captured.getvalue().splitlines() if line.strip()]
            why = lines[-1] if lines else ""
        except Exception as err:  # apprise gone or broken at send time: never the run's problem
            ok, why = False, f"{type(err).__name__}: {err}"
        if not ok:
            self.log(f"warning: the notification '{title}' was not delivered ({why or 'the service refused it'}); "
                     "training goes on")
        return ok


def reason_of(err: BaseException) -> str:
    """One line for a notification: a ValueError's own sentence, else the exception's type and first line."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    if not isinstance(err, ValueError):
        text = f"{type(err).__name__}: {text}" if text else type(err).__name__
    return text[:REASON_CHARS]


def duration(seconds: float) -> str:
    """'1 h 02 min', '3 min 05 s' or '42 s'."""
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 60} min {s % 60:02d} s" if s >= 60 else f"{s} s"


def where(run_dir: Path, host: str) -> str:
    return f"run folder {run_dir} on {host}"
