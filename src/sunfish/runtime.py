"""Device and precision, chosen in one place (../shared/STYLE.md, habit 5)."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    autocast_dtype: torch.dtype | None  # None = plain fp32

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed-precision context for forward passes (a no-op in fp32)."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def generator(self, seed: int) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(seed)


def setup_runtime(device: str = "auto", dtype: str = "auto", threads: int = 0) -> Runtime:
    """Pick the device and precision.

    auto: CUDA when available, else CPU; under torchrun each worker takes GPU LOCAL_RANK. dtype auto: bf16 autocast on CUDA (bf16 matrix units), fp32 on
    CPU, where bf16 matmul runs about 4x slower than fp32 on machines without bf16 units.
    """
    if threads > 0:
        torch.set_num_threads(threads)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device '{device}' was asked for but CUDA is not available; use --train.device=cpu")
    if dev.type == "cuda" and dev.index is None and "LOCAL_RANK" in os.environ:  # one GPU per torchrun worker
        dev = torch.device("cuda", int(os.environ["LOCAL_RANK"]) % torch.cuda.device_count())
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if dtype == "auto":
        dtype = "bf16" if dev.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if dtype not in ("fp32", "bf16"):
        raise ValueError(f"unknown dtype '{dtype}'; use auto, fp32 or bf16")
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return Runtime(device=dev, autocast_dtype=torch.bfloat16 if dtype == "bf16" else None)


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
QUANTIZE = ("none", "int8", "int4")  # weight-only quantization kinds (sunfish/quantize.py)


def inference_dtype(device: torch.device, name: str = "auto") -> torch.dtype:
    """The weights' dtype for inference: auto = bf16 on a CUDA device that has it, else fp32 (CPUs without bf16
    matrix units run bf16 matmul several times slower)."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    if name not in DTYPES:
        raise ValueError(f"unknown dtype '{name}'; use auto, fp32, bf16 or fp16")
    return DTYPES[name]
