"""Checkpoints: RUN_DIR/checkpoints/step-NNNNNN/ holding everything needed to resume or sample.

Files: model.safetensors (weights), optimizer.pt (AdamW state, tensors only), rng.pt (generator
states), state.json (step, data fingerprint), config.json (resolved RunConfig), tokenizer.json.
A checkpoint is written into a hidden temporary folder and renamed into place, so a killed run never
leaves a half checkpoint under a real name. Loading never unpickles arbitrary objects.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model

from sunfish.config import RunConfig, config_from_dict, save_config
from sunfish.model.transformer import Transformer, build_model
from sunfish.tokenizer import Tokenizer

PREFIX = "step-"
REQUIRED = ("model.safetensors", "config.json", "tokenizer.json", "state.json")


class CheckpointError(ValueError):
    """A checkpoint problem a person can fix; the message is one sentence."""


@dataclass
class TrainingState:
    step: int  # optimiser steps completed
    data_fingerprint: str  # hash of the training token stream, checked on resume
    extra: dict[str, Any]


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"{PREFIX}{step:06d}"


def is_checkpoint(path: Path) -> bool:
    return path.is_dir() and all((path / name).is_file() for name in REQUIRED)


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.name.startswith(PREFIX) and is_checkpoint(p)]
    return sorted(found, key=lambda p: p.name)


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder itself, or the newest checkpoint of a run folder."""
    path = Path(path)
    if is_checkpoint(path):
        return path
    found = list_checkpoints(path)
    if found:
        return found[-1]
    raise CheckpointError(
        f"'{path}' is not a Sunfish run or checkpoint folder (no checkpoints/{PREFIX}*/model.safetensors); "
        "pass the --out folder of `sunfish train` or one of its checkpoints"
    )


def save_checkpoint(
    run_dir: Path,
    step: int,
    model: Transformer,
    optimizer: torch.optim.Optimizer,
    rng: dict[str, torch.Tensor],
    state: TrainingState,
    cfg: RunConfig,
    tokenizer: Tokenizer,
) -> Path:
    """Write the checkpoint for `step` atomically and return its folder."""
    final = checkpoint_dir(run_dir, step)
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(model, str(tmp / "model.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(rng, tmp / "rng.pt")
    save_config(cfg, tmp / "config.json")
    tokenizer.save(tmp / "tokenizer.json")
    body = {"step": state.step, "data_fingerprint": state.data_fingerprint, **state.extra}
    (tmp / "state.json").write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")
    if final.exists():
        old = final.parent / f".old-{final.name}-{os.getpid()}"
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(final)
    return final


def read_config(ckpt: Path) -> RunConfig:
    try:
        return config_from_dict(json.loads((ckpt / "config.json").read_text(encoding="utf-8")))
    except (json.JSONDecodeError, ValueError) as err:
        raise CheckpointError(f"the config in '{ckpt}' cannot be read ({err}); the checkpoint is damaged") from None


def read_state(ckpt: Path) -> TrainingState:
    body = json.loads((ckpt / "state.json").read_text(encoding="utf-8"))
    step = int(body.pop("step"))
    return TrainingState(step=step, data_fingerprint=str(body.pop("data_fingerprint", "")), extra=body)


def load_weights(model: Transformer, ckpt: Path) -> None:
    try:
        missing, unexpected = load_model(model, str(ckpt / "model.safetensors"), strict=False)
    except Exception as err:  # safetensors raises several types for damaged or mismatched files
        raise CheckpointError(
            f"the weights in '{ckpt}' cannot be loaded into the model its config describes "
            f"({str(err).splitlines()[0]}); the checkpoint is damaged or belongs to another model"
        ) from None
    if missing or unexpected:
        raise CheckpointError(f"the weights in '{ckpt}' do not match the model in its config (missing {len(missing)}, unexpected {len(unexpected)} tensors)")


def load_training_extras(ckpt: Path, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """Restore the optimizer in place and return the saved generator states."""
    optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True, map_location="cpu"))
    return torch.load(ckpt / "rng.pt", weights_only=True, map_location="cpu")


@dataclass
class LoadedModel:
    model: Transformer
    tokenizer: Tokenizer
    cfg: RunConfig
    path: Path


def load_for_inference(path: str | Path, device: torch.device) -> LoadedModel:
    """Model (eval mode), tokenizer and config from a run or checkpoint folder."""
    ckpt = resolve_checkpoint(path)
    cfg = read_config(ckpt)
    tokenizer = Tokenizer.load(ckpt / "tokenizer.json")
    model = build_model(cfg.model, device)
    load_weights(model, ckpt)
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, cfg=cfg, path=ckpt)
