"""What differs between Linux, macOS and Windows, in one place, so nothing else imports a Unix-only module.

- peak resident memory: `resource.getrusage` (KiB on Linux, bytes on macOS) where it exists, the process's
  peak working set (`GetProcessMemoryInfo`) on Windows;
- the signals that ask a run to stop: SIGTERM and SIGINT (Ctrl+C) everywhere, and SIGBREAK (Ctrl+Break) on
  Windows, where a console delivers Ctrl+C and Ctrl+Break as those signals and nothing can send SIGTERM to
  a Python process (`os.kill(pid, SIGTERM)` there ends it at once, like `kill -9`);
- whether `torch.compile` can work: Inductor emits C++ on the CPU (g++/clang++, or MSVC's `cl` on
  Windows) and Triton kernels on CUDA;
- the start method of worker processes: the one the program chose, else fork on Linux, else spawn;
- text output: Windows writes a redirected stdout (a pipe, a file, an SSH session) in the ANSI code page
  (cp1252, cp866, ...), in which Russian or Chinese text cannot be printed; Sunfish writes UTF-8 there.
"""

from __future__ import annotations

import importlib.util
import io
import multiprocessing
import os
import shutil
import signal
import sys

import torch

WINDOWS = sys.platform == "win32"


def peak_rss_gib() -> float:
    """Peak resident memory of this process in GiB (0.0 where the platform does not tell)."""
    if WINDOWS:
        return _windows_peak_working_set() / 2**30
    try:
        import resource
    except ImportError:
        return 0.0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**30 if sys.platform == "darwin" else rss / 2**20  # bytes on macOS, KiB on Linux


def _windows_peak_working_set() -> int:
    """PeakWorkingSetSize of PROCESS_MEMORY_COUNTERS (psapi.h), in bytes."""
    import ctypes
    from ctypes import wintypes

    class Counters(ctypes.Structure):
        _fields_ = [("cb", wintypes.DWORD), ("PageFaultCount", wintypes.DWORD)] + [
            (name, ctypes.c_size_t) for name in ("PeakWorkingSetSize", "WorkingSetSize", "QuotaPeakPagedPoolUsage",
                                                 "QuotaPagedPoolUsage", "QuotaPeakNonPagedPoolUsage",
                                                 "QuotaNonPagedPoolUsage", "PagefileUsage", "PeakPagefileUsage")]

    kernel32 = ctypes.WinDLL("kernel32")
    kernel32.GetCurrentProcess.restype = wintypes.HANDLE
    query = kernel32.K32GetProcessMemoryInfo
    query.argtypes = [wintypes.HANDLE, ctypes.POINTER(Counters), wintypes.DWORD]
    query.restype = wintypes.BOOL
    counters = Counters()
    counters.cb = ctypes.sizeof(Counters)
    if not query(kernel32.GetCurrentProcess(), ctypes.byref(counters), counters.cb):
        return 0
    return int(counters.PeakWorkingSetSize)


def stop_signals() -> tuple[signal.Signals, ...]:
    """The signals a training run turns into a graceful stop (a checkpoint, then exit)."""
    found = [signal.SIGTERM, signal.SIGINT]
    if hasattr(signal, "SIGBREAK"):  # Windows: Ctrl+Break, or CTRL_BREAK_EVENT sent to the process group
        found.append(signal.SIGBREAK)
    return tuple(found)


def cxx_compiler() -> str | None:
    """The C++ compiler Inductor would use: $CXX when set, else the first of cl/clang-cl (Windows) or
    c++/g++/clang++ on the PATH; None when there is none."""
    given = os.environ.get("CXX")
    if given:
        return shutil.which(given)
    names = ("cl", "clang-cl") if WINDOWS else ("c++", "g++", "clang++")
    return next((found for found in map(shutil.which, names) if found), None)


def compiler_missing(device: torch.device) -> str | None:
    """Why `torch.compile` cannot work on `device` here (one sentence), or None when it can."""
    if device.type == "cuda":
        if importlib.util.find_spec("triton") is None:
            return ("torch.compile needs Triton on CUDA and it is not installed"
                    + (" (on Windows: pip install triton-windows)" if WINDOWS else " (pip install triton)"))
        return None
    if device.type == "cpu":
        if cxx_compiler() is None:
            where = ("MSVC's cl.exe (run from a Visual Studio developer prompt)" if WINDOWS
                     else "a C++ compiler (g++ or clang++)")
            return f"torch.compile needs {where} on the CPU and none was found"
    return None


def worker_start_method() -> str:
    """The start method for worker processes: the one this program set (multiprocessing.set_start_method),
    else fork on Linux (no re-import, no importable __main__ needed), else spawn."""
    chosen = multiprocessing.get_start_method(allow_none=True)
    if chosen is not None:
        return chosen
    return "fork" if sys.platform.startswith("linux") else "spawn"  # macOS: fork is unsafe with its system libraries


def readable_output(streams: tuple[io.TextIOBase, ...] | None = None) -> None:
    """Make stdout and stderr able to print any text: UTF-8 on Windows where they are not already, and
    elsewhere, under an encoding the user chose (PYTHONIOENCODING), escapes for what it cannot encode."""
    for stream in streams if streams is not None else (sys.stdout, sys.stderr):
        encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "")
        if encoding == "utf8" or not hasattr(stream, "reconfigure"):
            continue
        if WINDOWS:
            stream.reconfigure(encoding="utf-8")
        else:
            stream.reconfigure(errors="backslashreplace")
