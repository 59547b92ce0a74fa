"""System figures for long runs, recorded beside the training figures (metrics.jsonl, TensorBoard, W&B): CPU and
RAM use through psutil and, on CUDA, the GPU's utilisation, memory and temperature; and a guard that pauses a
run whose GPU is too hot and stops it if the GPU does not cool.

- cpu_percent: the whole machine's CPU use since the previous reading, 0-100 (psutil.cpu_percent);
- rss_gib: this process's resident memory; ram_used_gib / ram_percent: the machine's memory in use
  (total - available, as `free` and the Windows task manager count it);
- gpu_util: percent of the last sample period in which a kernel ran, gpu_temp_c: the die's temperature (both
  from NVIDIA's NVML, the library behind nvidia-smi, through nvidia-ml-py); gpu_mem_gib: the device's memory in
  use by every process (CUDA's own cudaMemGetInfo, no NVML needed).

psutil and nvidia-ml-py are optional (`pip install 'sunfish[monitor]'`); without one the figures it gives are
left out with a one-time note. psutil reads the same on Linux, macOS and Windows (no Unix-only `resource`).
The GPU reader is a plain function, so a test can hand the guard a GPU that is too hot on a CPU-only machine.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch

from sunfish.config import ConfigError

INSTALL = "pip install 'sunfish[monitor]'"
SYSTEM_FIELDS = ("cpu_percent", "rss_gib", "ram_used_gib", "ram_percent", "gpu_util", "gpu_mem_gib", "gpu_temp_c")
COOL_CHECK_S = 10.0  # a paused run re-reads the GPU's temperature this often


@dataclass(frozen=True)
class GpuReading:
    util: float | None  # percent of the last sample period a kernel ran; None: unknown (no NVML)
    memory_gib: float | None  # device memory in use by every process
    temperature: float | None  # deg C of the GPU die; None: unknown (no NVML)


GpuReader = Callable[[], GpuReading]


def cuda_reader(device: torch.device) -> tuple[GpuReader, str]:
    """A reader of a CUDA device's figures, and a note on what it cannot read ('' when it reads everything).

    torch.cuda.utilization/temperature go through NVML and map the device index through CUDA_VISIBLE_DEVICES."""
    note = ""
    try:
        torch.cuda.utilization(device), torch.cuda.temperature(device)
        nvml = True
    except Exception as err:  # nvidia-ml-py missing, or NVML unusable (driver, permissions, a GPU it does not know)
        nvml = False
        missing = isinstance(err, ImportError) or "nvidia-ml-py" in str(err)
        note = (f"GPU utilisation and temperature need nvidia-ml-py ({INSTALL})" if missing else
                f"GPU utilisation and temperature cannot be read (NVML: {type(err).__name__}: {err})")

    def read() -> GpuReading:
        free, total = torch.cuda.mem_get_info(device)
        return GpuReading(util=float(torch.cuda.utilization(device)) if nvml else None,
                          memory_gib=(total - free) / 2**30,
                          temperature=float(torch.cuda.temperature(device)) if nvml else None)

    return read, note


class SystemMonitor:
    """Reads the figures of SYSTEM_FIELDS that this machine offers; each missing source is noted once."""

    def __init__(self, gpu: GpuReader | None, log: Callable[[str], None], gpu_note: str = ""):
        self.log = log
        self.gpu = gpu
        self.noted: set[str] = set()
        try:
            import psutil
        except ImportError:
            psutil = None
            self._note_once("psutil", f"note: CPU and RAM figures need psutil ({INSTALL}); they are left out")
        self.psutil = psutil
        if psutil is not None:
            self.process = psutil.Process()
            psutil.cpu_percent(interval=None)  # starts the interval the first reading covers
        if gpu_note:
            self._note_once("gpu", f"note: {gpu_note}; they are left out of the metrics")

    def _note_once(self, key: str, text: str) -> None:
        if key not in self.noted:
            self.noted.add(key)
            self.log(text)

    def figures(self, reading: GpuReading | None = None) -> dict[str, float]:
        """{field: value} for the fields this machine can read now (see the module docstring); `reading`: the
        GPU's, when the caller has just read it."""
        out: dict[str, float] = {}
        if self.psutil is not None:
            memory = self.psutil.virtual_memory()
            out |= {"cpu_percent": round(self.psutil.cpu_percent(interval=None), 1),
                    "rss_gib": round(self.process.memory_info().rss / 2**30, 3),
                    "ram_used_gib": round((memory.total - memory.available) / 2**30, 3),
                    "ram_percent": round(memory.percent, 1)}
        reading = reading or self.read_gpu()
        if reading is not None:
            for key, value in (("gpu_util", reading.util), ("gpu_mem_gib", reading.memory_gib),
                               ("gpu_temp_c", reading.temperature)):
                if value is not None:
                    out[key] = round(float(value), 3)
        return out

    def read_gpu(self) -> GpuReading | None:
        """The GPU's figures, or None (no GPU, or a reading that failed: noted once, tried again next time)."""
        if self.gpu is None:
            return None
        try:
            return self.gpu()
        except Exception as err:
            self._note_once("gpu-read", f"warning: reading the GPU's figures failed ({type(err).__name__}: {err}); "
                                        "they are left out while it fails")
            return None


class HeatGuard:
    """Pauses while the GPU is above `limit` deg C, re-reading it every COOL_CHECK_S seconds for at most `wait`
    seconds; says why the run must stop if it has not cooled by then."""

    def __init__(self, limit: float, wait: float, read: Callable[[], GpuReading | None], log: Callable[[str], None],
                 sleep: Callable[[float], None] = time.sleep):
        self.limit, self.wait, self.read, self.log, self.sleep = limit, wait, read, log, sleep
        self.paused = 0.0  # seconds the latest check paused

    def check(self, reading: GpuReading | None) -> str | None:
        """None when the GPU is at or below the limit (at once, or after a pause); else the reason to stop."""
        temperature = reading.temperature if reading is not None else None
        self.paused = 0.0
        if temperature is None or temperature <= self.limit:
            return None
        self.log(f"warning: the GPU is at {temperature:.0f} C, above --train.max_gpu_temp={self.limit:g}; pausing up "
                 f"to {self.wait:g} s for it to cool")
        waited = 0.0
        while waited < self.wait:
            pause = min(COOL_CHECK_S, self.wait - waited)
            self.sleep(pause)
            waited += pause
            self.paused = waited
            reading = self.read()
            if reading is not None and reading.temperature is not None:
                temperature = reading.temperature
            if temperature <= self.limit:
                self.log(f"the GPU cooled to {temperature:.0f} C after {waited:g} s; training goes on")
                return None
        return (f"the GPU stayed at {temperature:.0f} C, above --train.max_gpu_temp={self.limit:g}, after a "
                f"{waited:g} s pause")


def open_monitor(device: torch.device, max_temp: float, cool_wait: float, gpu_reader: GpuReader | None,
                 log: Callable[[str], None]) -> tuple[SystemMonitor, HeatGuard | None]:
    """The run's monitor (the GPU's figures on CUDA, or from `gpu_reader` when given) and, when max_temp > 0, its
    heat guard (pauses up to cool_wait s); refuses in one sentence a max_temp it cannot watch."""
    note = ""
    if gpu_reader is None and device.type == "cuda":
        gpu_reader, note = cuda_reader(device)
    if max_temp > 0 and gpu_reader is None:
        raise ConfigError(f"--train.max_gpu_temp watches a CUDA GPU's temperature and this run is on {device}; "
                          "leave it out or train on CUDA")
    if max_temp > 0 and note:
        raise ConfigError(f"--train.max_gpu_temp needs the GPU's temperature: {note}")
    monitor = SystemMonitor(gpu_reader, log, note)
    return monitor, HeatGuard(max_temp, cool_wait, monitor.read_gpu, log) if max_temp > 0 else None
