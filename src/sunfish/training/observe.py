"""Training metrics: RUN_DIR/metrics.jsonl always, TensorBoard or Weights & Biases scalars on request,
and the figures they carry (tokens/s, model FLOP utilisation, memory)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from sunfish.config import LogKind
from sunfish.portable import peak_rss_gib

# Dense bf16 tensor-core peaks (TFLOP/s) from the vendors' data sheets, matched against the device name.
GPU_PEAK_TFLOPS = (("H200", 989.0), ("H100", 989.0), ("H800", 989.0), ("A100", 312.0), ("A800", 312.0),
                   ("L40S", 362.0), ("L4", 121.0), ("A10", 125.0), ("4090", 165.0), ("3090", 71.0), ("V100", 125.0))


def flops_per_token(params: int, layers: int, width: int, seq_len: int) -> float:
    """Training FLOPs per token: 6 N for the matmuls of forward and backward, plus 12 x layers x width x
    sequence for attention scores and values (Chowdhery et al. 2022, PaLM, appendix B)."""
    return 6.0 * params + 12.0 * layers * width * seq_len


def peak_flops(device: torch.device, configured_tflops: float) -> float | None:
    """Per-device peak FLOP/s for MFU: the configured figure, else the GPU's data-sheet figure, else None."""
    if configured_tflops > 0:
        return configured_tflops * 1e12
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, tflops in GPU_PEAK_TFLOPS:
            if key in name:
                return tflops * 1e12
    return None


def peak_memory_gib(device: torch.device) -> float:
    """Peak memory so far: allocated GPU memory on CUDA, the process's peak resident set on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return peak_rss_gib()


class MetricsLog:
    """RUN_DIR/metrics.jsonl: one JSON object per logged step, plus the optional TensorBoard/W&B sink."""

    def __init__(self, run_dir: Path, resume_step: int | None, sink: LogKind = LogKind.JSONL, config: dict | None = None):
        self.path = run_dir / "metrics.jsonl"
        if resume_step is None:
            self.path.write_text("", encoding="utf-8")
        elif self.path.exists():  # drop lines a killed run logged after its last checkpoint
            lines = self.path.read_text(encoding="utf-8").splitlines()
            keep = [l for l in lines if l and _step_of(l) is not None and _step_of(l) <= resume_step]
            tmp = self.path.with_name(f".{self.path.name}.tmp")
            tmp.write_text("".join(l + "\n" for l in keep), encoding="utf-8")
            os.replace(tmp, self.path)  # a kill during the rewrite never loses lines
        self.tb = self.wandb = None
        if sink is LogKind.TENSORBOARD:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ValueError("--train.log=tensorboard needs the tensorboard package; pip install 'sunfish[tensorboard]'") from None
            self.tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=None if resume_step is None else resume_step + 1)
        elif sink is LogKind.WANDB:
            try:
                import wandb
            except ImportError:
                raise ValueError("--train.log=wandb needs the wandb package; pip install 'sunfish[wandb]'") from None
            os.environ.setdefault("WANDB_MODE", "offline")
            self.wandb = wandb.init(project="sunfish", dir=str(run_dir), name=run_dir.name, config=config,
                                    id=_wandb_id(run_dir), resume="allow")

    def write(self, record: dict) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        scalars = {k: v for k, v in record.items() if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self.tb is not None:
            for key, value in scalars.items():
                self.tb.add_scalar(f"train/{key}", value, record["step"])
            self.tb.flush()
        if self.wandb is not None:
            self.wandb.log(scalars, step=record["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def _step_of(line: str) -> int | None:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None  # a half-written last line from a killed run


def _wandb_id(run_dir: Path) -> str:
    """A stable W&B run id kept in the run folder, so a resumed run continues the same W&B run."""
    path = run_dir / "wandb_id.txt"
    if not path.exists():
        import uuid

        path.write_text(uuid.uuid4().hex[:12], encoding="utf-8")
    return path.read_text(encoding="utf-8").strip()
