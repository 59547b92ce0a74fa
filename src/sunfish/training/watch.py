"""The run's watch: what `training/loop.py` calls at four points of a run so that a long run can be left alone.

- at each logged step (`on_step`): the system figures when due (training/monitor.py: CPU, RAM, GPU every
  `train.monitor_every` steps, by default with every metric line) and the GPU's temperature against
  `train.max_gpu_temp`: above it the run pauses for up to `train.cool_wait` seconds, and if the GPU stays hot
  `stop_reason` is set, so the loop writes a checkpoint and stops;
- at each checkpoint (`on_checkpoint`): a notification every `train.notify_every` checkpoints;
- around the whole run (`run`): a notification when it finishes (steps, final loss, checkpoint, wall time), or
  when it fails or stops (the one-line reason and the newest checkpoint in the run folder).
Notifications go out from rank 0 only (training/notify.py); every rank watches its own GPU's heat.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from sunfish.checkpoint.files import list_checkpoints
from sunfish.config import TrainConfig
from sunfish.training.monitor import GpuReader, HeatGuard, SystemMonitor, open_monitor
from sunfish.training.notify import Level, Notifier, duration, reason_of, where


class RunWatch:
    """System figures, the heat guard and notifications of one run on one rank (see the module docstring)."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, *, monitor: SystemMonitor, heat: HeatGuard | None,
                 notifier: Notifier | None, is_main: bool):
        self.cfg, self.run_dir, self.monitor, self.heat = cfg, run_dir, monitor, heat
        self.notifier, self.is_main = notifier, is_main
        self.stop_reason: str | None = None  # set when the GPU stayed too hot: the loop checkpoints and stops
        self.paused = 0.0  # seconds the latest on_step paused for a hot GPU (not training time)
        self.checkpoints = 0  # checkpoints written by this process

    @classmethod
    def open(cls, cfg: TrainConfig, run_dir: Path, device: torch.device, is_main: bool, log: Callable[[str], None],
             gpu_reader: GpuReader | None = None) -> "RunWatch":
        """Refuses, in one sentence, --notify without apprise or with a URL it cannot read, and a max_gpu_temp
        it cannot watch (no CUDA, no NVML); `gpu_reader` replaces the CUDA device's (tests)."""
        notifier = Notifier(cfg.notify, log) if cfg.notify else None  # checked on every rank: all fail together
        monitor, heat = open_monitor(device, cfg.max_gpu_temp, cfg.cool_wait, gpu_reader, log)
        return cls(cfg, run_dir, monitor=monitor, heat=heat, notifier=notifier if is_main else None, is_main=is_main)

    def on_step(self, step: int, logged: bool) -> dict[str, float]:
        """The system figures due at `step` ({} when none are due or on ranks other than 0), after checking
        the GPU's heat (which may pause here and set `stop_reason`). `logged`: a metric line is written."""
        every = self.cfg.monitor_every
        due = step % every == 0 if every else logged
        self.paused = 0.0
        if not due:
            return {}
        reading = self.monitor.read_gpu() if self.heat is not None else None
        figures = self.monitor.figures(reading) if self.is_main else {}
        if self.heat is not None and self.stop_reason is None:
            self.stop_reason = self.heat.check(reading)
            self.paused = self.heat.paused
        return figures

    def on_checkpoint(self, step: int, path: Path, loss: float, last: bool) -> None:
        """After a checkpoint: a message every `notify_every` checkpoints (not for the last one: the run's
        end or stop has its own)."""
        self.checkpoints += 1
        every = self.cfg.notify_every
        if self.notifier is None or not every or last or self.checkpoints % every:
            return
        self.notifier.send(f"Sunfish run '{self.run_dir.name}': checkpoint at step {step}",
                           f"step {step} of {self.cfg.steps}; loss {loss:.4f}; checkpoint {path}\n"
                           f"{where(self.run_dir, self.notifier.host)}", Level.INFO)

    def run(self, body: Callable[[], object]) -> object:
        """body() (the training), with a message when it returns a TrainResult and when it raises (re-raised)."""
        try:
            result = body()
        except BaseException as err:
            if self.notifier is not None:
                self.notifier.send(*self._failure(err))
            raise
        if self.notifier is not None:
            val = f"; validation loss {result.final_val_loss:.4f}" if result.final_val_loss is not None else ""
            self.notifier.send(f"Sunfish run '{self.run_dir.name}' finished",
                               f"{self.cfg.steps} steps in {duration(result.seconds)}; final loss {result.final_loss:.4f}"
                               f"{val}; checkpoint {result.checkpoint}\n{where(self.run_dir, self.notifier.host)}",
                               Level.SUCCESS)
        return result

    def _failure(self, err: BaseException) -> tuple[str, str, Level]:
        """(title, body, level) of a run that raised `err`: stopped by a signal (KeyboardInterrupt; loop.py's
        TrainingInterrupted after a checkpoint), stopped by a guard (TrainingAborted: non-finite steps, heat),
        or failed."""
        from sunfish.training.robust import TrainingAborted

        name = self.run_dir.name
        found = list_checkpoints(self.run_dir) if self.run_dir.is_dir() else []
        last = f"last checkpoint: {found[-1]}" if found else "no checkpoint was written"
        if isinstance(err, KeyboardInterrupt):
            title, level = f"Sunfish run '{name}' stopped by a signal", Level.WARNING
            reason = str(err) or "interrupted at once (a second signal)"
        else:
            verb = "stopped" if isinstance(err, TrainingAborted) else "failed"
            title, level, reason = f"Sunfish run '{name}' {verb}", Level.FAILURE, reason_of(err)
        return title, f"{reason}\n{last}\n{where(self.run_dir, self.notifier.host)}", level
