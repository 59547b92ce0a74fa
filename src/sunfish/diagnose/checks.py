"""The environment checks of `sunfish doctor`: versions, devices, bf16, torch.compile's compiler, the optional
extras and free disk. Each check is one `Check` (ok / warn / FAIL, what was found, what to do).

An extra is "installed" when every module it brings can be found (importlib.util.find_spec: nothing is
imported, so the check stays fast); an extra the user says they need (`--need serve,adapt`) is imported for
real, so a broken install (a library built for another torch, say) fails there too.
"""

from __future__ import annotations

import enum
import importlib
import importlib.util
import os
import platform
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from sunfish.portable import cxx_compiler

MIN_PYTHON = (3, 10)
MIN_TORCH = (2, 4)
DISK_FAIL_GIB = 1.0  # below this a run cannot write its checkpoints
DISK_WARN_GIB = 10.0  # below this a long run's checkpoints may fill the disk

# extra (pyproject.toml's [project.optional-dependencies]) -> (what it enables, the modules it brings)
EXTRAS: dict[str, tuple[str, tuple[str, ...]]] = {
    "trace": ("--trace FILE.gif|.mp4: the denoising as an animation", ("PIL", "imageio", "imageio_ffmpeg")),
    "data": ("`sunfish data prepare` (dedup, language id, Parquet and HF datasets) and `tokenizer extend`",
             ("datasketch", "lingua", "xxhash", "pyarrow", "datasets", "transformers", "regex")),
    "adapt": ("`sunfish adapt` (a causal LM made a diffusion LM) and LoRA in `sunfish sft`", ("transformers", "peft")),
    "eval": ("`sunfish eval`, `compare` and `lm-eval` (BLEU/chrF, plots, lm-evaluation-harness)",
             ("sacrebleu", "matplotlib", "lm_eval", "transformers")),
    "serve": ("`sunfish serve`: the OpenAI-compatible HTTP API and its metrics",
              ("fastapi", "uvicorn", "prometheus_client")),
    "tensorboard": ("--train.log=tensorboard", ("tensorboard",)),
    "wandb": ("--train.log=wandb", ("wandb",)),
    "quantize": ("--quantize int8|int4 and --sft.qlora (torchao)", ("torchao",)),
    "notify": ("--notify URL: messages when a run finishes, fails or stops", ("apprise",)),
    "monitor": ("CPU/RAM/GPU figures in the metrics and --train.max_gpu_temp", ("psutil", "pynvml")),
    "stream": ("`data prepare --format tar` and streaming tar shards from folders and URLs (--data.mix)",
               ("webdataset", "fsspec", "aiohttp")),
}


class Status(enum.Enum):
    OK = "ok"
    WARN = "warn"
    FAIL = "FAIL"


@dataclass(frozen=True)
class Check:
    name: str  # what was checked: "python", "device", "extra serve", ...
    status: Status
    detail: str  # what was found
    fix: str = ""  # what to do (warn and FAIL)

    def line(self) -> str:
        """`ok    name: detail` (and `; fix` for warn and FAIL): the doctor's one line."""
        return f"{self.status.value:<5} {self.name}: {self.detail}" + (f"; {self.fix}" if self.fix else "")

    def as_json(self) -> dict:
        return {"name": self.name, "status": self.status.value, "detail": self.detail, "fix": self.fix}


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split("+")[0].split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def versions() -> list[Check]:
    """Python, torch and Sunfish."""
    from importlib import metadata

    py = ".".join(map(str, sys.version_info[:3]))
    checks = [Check("python", Status.OK, f"{py} ({platform.system()} {platform.machine()})") if sys.version_info >= MIN_PYTHON
              else Check("python", Status.FAIL, py, "Sunfish needs Python 3.10 or newer")]
    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else ("ROCm " + torch.version.hip if torch.version.hip else "CPU-only build")
    ok = _version_tuple(torch.__version__) >= MIN_TORCH
    checks.append(Check("torch", Status.OK if ok else Status.FAIL, f"{torch.__version__} ({build})",
                        "" if ok else "Sunfish needs torch 2.4 or newer: pip install -U torch"))
    here = Path(__file__).resolve().parents[1]
    try:
        version = metadata.version("sunfish")
    except metadata.PackageNotFoundError:
        version = "not installed as a package"
    checks.append(Check("sunfish", Status.OK, f"{version} ({here})"))
    return checks


def devices() -> list[Check]:
    """The CUDA devices (name, compute capability, memory), or the CPU (threads, vector units)."""
    if torch.cuda.is_available():
        found = []
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            found.append(f"cuda:{i} {p.name} (capability {p.major}.{p.minor}, {p.total_memory / 2**30:.0f} GiB)")
        return [Check("device", Status.OK, "; ".join(found))]
    cpu = (f"CPU, {torch.get_num_threads()} torch threads of {os.cpu_count()} cores, "
           f"{torch.backends.cpu.get_cpu_capability()}")
    if torch.version.cuda:
        return [Check("device", Status.WARN, f"{cpu}; torch is built for CUDA {torch.version.cuda} but sees no GPU",
                      "check the driver with nvidia-smi and CUDA_VISIBLE_DEVICES, or train on the CPU (slow)")]
    return [Check("device", Status.OK, f"{cpu} (no CUDA in this torch build: training runs on the CPU, fine for "
                                       "the nano and micro presets)")]


def bf16() -> list[Check]:
    """bf16 autocast where training would run."""
    if torch.cuda.is_available():
        if torch.cuda.is_bf16_supported():
            return [Check("bf16", Status.OK, "supported on the GPU (training autocasts to bf16)")]
        return [Check("bf16", Status.WARN, "this GPU has no bf16", "training runs in fp32: --train.dtype=fp32")]
    try:
        x = torch.ones(8, 8, dtype=torch.bfloat16)
        ok = bool(torch.isfinite((x @ x).float()).all())
    except RuntimeError:
        ok = False
    if not ok:
        return [Check("bf16", Status.WARN, "bf16 matmul fails on this CPU", "keep the default fp32 (--train.dtype=auto)")]
    return [Check("bf16", Status.OK, "runs on the CPU (training keeps fp32 there by default: bf16 is fast only with "
                                     "AMX or AVX512-BF16)")]


def compiler() -> list[Check]:
    """What --train.compile (torch.compile, the Inductor backend) needs: a C++ compiler, and Triton on CUDA."""
    found = cxx_compiler()
    if found is None:
        return [Check("compile", Status.WARN, "no C++ compiler found, so --train.compile trains uncompiled",
                      "install one (g++ / build-essential; MSVC Build Tools on Windows) or leave compile off")]
    if torch.cuda.is_available() and importlib.util.find_spec("triton") is None:
        return [Check("compile", Status.WARN, f"C++ compiler {found}, but no Triton for GPU kernels",
                      "pip install triton (Linux) or triton-windows, or leave --train.compile off")]
    gpu = " and Triton" if torch.cuda.is_available() else ""
    return [Check("compile", Status.OK, f"torch.compile can build kernels (C++ compiler {found}{gpu})")]


def _present(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a module left as None in sys.modules
        return False


def _import_error(module: str) -> str:
    """'' when `module` imports, else the error's first line."""
    try:
        importlib.import_module(module)
    except Exception as err:
        return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}".rstrip(": ")
    return ""


def extras(need: tuple[str, ...] = ()) -> list[Check]:
    """One check per extra: ok when installed; missing is a warning, or a FAIL for an extra in `need`."""
    checks = []
    for name, (enables, modules) in EXTRAS.items():
        missing = [m for m in modules if not _present(m)]
        if name in need and not missing:
            broken = [f"{m} ({e})" for m in modules if (e := _import_error(m))]
            if broken:
                checks.append(Check(f"extra {name}", Status.FAIL, f"needed, but {', '.join(broken)} does not import",
                                    f"reinstall: pip install --force-reinstall 'sunfish[{name}]'"))
                continue
        if not missing:
            checks.append(Check(f"extra {name}", Status.OK, f"installed: {enables}"))
            continue
        status = Status.FAIL if name in need else Status.WARN
        what = "needed, but missing" if name in need else "not installed"
        checks.append(Check(f"extra {name}", status, f"{what} ({', '.join(missing)}): {enables}",
                            f"pip install 'sunfish[{name}]'"))
    return checks


def disk(out: Path) -> list[Check]:
    """Free space where runs are written (the nearest folder of `out` that exists)."""
    where = Path(out).resolve()
    while not where.exists() and where != where.parent:
        where = where.parent
    free = shutil.disk_usage(where).free / 2**30
    detail = f"{free:.1f} GiB free at {where}" + ("" if where == Path(out).resolve() else f" (for {out})")
    if free < DISK_FAIL_GIB:
        return [Check("disk", Status.FAIL, detail, "free some space or choose another --out: checkpoints will not fit")]
    if free < DISK_WARN_GIB:
        return [Check("disk", Status.WARN, detail, "a long run's checkpoints may fill it; use --train.keep_last K")]
    return [Check("disk", Status.OK, detail)]
