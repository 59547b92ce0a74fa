"""The loader: one function opens anything Sunfish can run and returns the network, tokenizer, config and what
the model can do.

Sources (`source_kind`):
- a run folder (`sunfish train --out`, `sunfish adapt --out`): its newest checkpoint;
- a checkpoint folder (RUN/checkpoints/step-N) or an exported one (`sunfish export --out`);
- an adapted run (a checkpoint whose config names `adapt.base`): the causal LM rebuilt with bidirectional
  attention (adapt/model.py);
- a Hugging Face model folder (config.json without Sunfish's checkpoint files): recognised and refused with a
  sentence for now.

Training saves and resumes (training/checkpoint.py); it never goes through here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from sunfish.checkpoint.files import CheckpointError, SourceKind, read_config, resolve_checkpoint, source_kind
from sunfish.checkpoint.weights import load_network
from sunfish.config import RunConfig
from sunfish.registry import ProcessSpec, spec_of
from sunfish.tokenizer import Tokenizer


@dataclass
class LoadedModel:
    """A model ready for inference (eval mode) and what it can do."""

    model: torch.nn.Module
    tokenizer: Tokenizer  # Sunfish's own, or an HF tokenizer behind the same interface (adapted runs)
    cfg: RunConfig
    path: Path  # the checkpoint folder it came from
    spec: ProcessSpec = field(init=False)  # the process entry (sunfish/registry.py)
    unavailable: dict[str, str] = field(default_factory=dict)  # sampler fields this network cannot do -> why
    mixed_batches: bool = True  # the network takes left-padded batches of mixed-length prompts

    def __post_init__(self) -> None:
        self.spec = spec_of(self.cfg.process)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def _open_sunfish(ckpt: Path, cfg: RunConfig, device: torch.device, ema: bool | None) -> LoadedModel:
    model, _ = load_network(ckpt, device, ema)
    return LoadedModel(model=model, tokenizer=Tokenizer.load(ckpt / "tokenizer.json"), cfg=cfg, path=ckpt)


def _open_adapted(ckpt: Path, cfg: RunConfig, device: torch.device, ema: bool | None) -> LoadedModel:
    from sunfish.adapt.model import load_adapted

    model, tokenizer = load_adapted(ckpt, cfg, device)
    return LoadedModel(model=model, tokenizer=tokenizer, cfg=cfg, path=ckpt,
                       unavailable=dict(getattr(model, "UNAVAILABLE", {})),
                       mixed_batches=getattr(model, "MIXED_BATCHES", True))


def load_model(path: str | Path, device: torch.device | str = "cpu", ema: bool | None = None) -> LoadedModel:
    """Open what `path` holds for inference (eval mode) on `device`.

    `ema` None: the averaged weights when the run kept an EMA, else the raw weights.
    """
    device = torch.device(device)
    kind = source_kind(path)
    if kind is SourceKind.HF:
        raise CheckpointError(f"'{path}' is a Hugging Face model folder, which Sunfish cannot run as it is; turn a "
                              f"causal LM into a diffusion LM with `sunfish adapt {path} --data ...`")
    ckpt = resolve_checkpoint(path)
    cfg = read_config(ckpt)
    opener = _open_adapted if kind is SourceKind.ADAPTED else _open_sunfish
    return opener(ckpt, cfg, device, ema)
