"""The loader: one function opens anything Sunfish can run and returns the network, tokenizer, config and what
the model can do.

Sources (`source_kind`):
- a run folder (`sunfish train --out`, `sunfish adapt --out`): its newest checkpoint;
- a checkpoint folder (RUN/checkpoints/step-N) or an exported one (`sunfish export --out`);
- an adapted run (a checkpoint whose config names `adapt.base`): the causal LM rebuilt with bidirectional
  attention (adapt/model.py);
- a latent run (a process with a frozen base, e.g. LDLM): its frozen base loaded from `process.base` and the
  trained parts from the checkpoint (adapt/latent.py);
- a Hugging Face folder of a public diffusion LM (LLaDA, Dream; families/): its config.json mapped onto
  Sunfish's Transformer, the safetensors shards streamed in, its own tokenizer; another architecture is one
  sentence naming what was found;
- a converted checkpoint (`sunfish convert`): a Sunfish checkpoint that keeps the original hf_config.json and
  the model's tokenizer files.

Weights are cast to the inference dtype (`dtype`: auto = bf16 on CUDA, fp32 on the CPU).

Training saves and resumes (training/checkpoint.py); it never goes through here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from sunfish.checkpoint.files import SOURCE_CONFIG, SourceKind, read_config, read_state, resolve_checkpoint, source_kind
from sunfish.checkpoint.weights import load_network
from sunfish.config import RunConfig
from sunfish.families.base import family_of
from sunfish.families.open import family_tokenizer, open_family, read_hf_config
from sunfish.registry import ProcessSpec, spec_of
from sunfish.runtime import inference_dtype
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
    step: int | None = None  # training steps of the checkpoint; None for a public model's folder
    hf_config: dict | None = None  # a public model's original config.json (its folder, or a converted checkpoint)
    drafts: dict = field(default_factory=dict)  # draft models opened for speculative decoding, by path (drafter.py)

    def __post_init__(self) -> None:
        self.spec = spec_of(self.cfg.process)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def _open_sunfish(ckpt: Path, cfg: RunConfig, device: torch.device, ema: bool | None) -> LoadedModel:
    model, cfg = load_network(ckpt, device, ema)  # the config of the network as loaded (LoRA adapters merged)
    if not (ckpt / SOURCE_CONFIG).is_file():
        return LoadedModel(model=model, tokenizer=Tokenizer.load(ckpt / "tokenizer.json"), cfg=cfg, path=ckpt,
                           step=read_state(ckpt).step)
    config = read_hf_config(ckpt, SOURCE_CONFIG)  # a converted public model: its own tokenizer and special ids
    return LoadedModel(model=model, tokenizer=family_tokenizer(ckpt, family_of(config, str(ckpt)), config), cfg=cfg,
                       path=ckpt, step=read_state(ckpt).step, hf_config=config)


def _open_hf(folder: Path, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    """A public checkpoint read straight into `dtype` (no fp32 copy on the way)."""
    model, tokenizer, cfg = open_family(folder, device, dtype)
    return LoadedModel(model=model, tokenizer=tokenizer, cfg=cfg, path=folder, hf_config=read_hf_config(folder))


def _open_adapted(ckpt: Path, cfg: RunConfig, device: torch.device, ema: bool | None) -> LoadedModel:
    from sunfish.adapt.model import load_adapted

    model, tokenizer = load_adapted(ckpt, cfg, device)
    return LoadedModel(model=model, tokenizer=tokenizer, cfg=cfg, path=ckpt, step=read_state(ckpt).step,
                       unavailable=dict(getattr(model, "UNAVAILABLE", {})),
                       mixed_batches=getattr(model, "MIXED_BATCHES", True))


def _open_latent(ckpt: Path, cfg: RunConfig, device: torch.device, ema: bool | None) -> LoadedModel:
    from sunfish.adapt.latent import open_latent

    model, tokenizer, cfg = open_latent(ckpt, cfg, device, ema)
    return LoadedModel(model=model, tokenizer=tokenizer, cfg=cfg, path=ckpt, step=read_state(ckpt).step,
                       mixed_batches=False)


def load_model(path: str | Path, device: torch.device | str = "cpu", ema: bool | None = None,
               dtype: str | torch.dtype = "fp32") -> LoadedModel:
    """Open what `path` holds for inference (eval mode) on `device`, weights in `dtype` (auto, fp32, bf16, fp16).

    `ema` None: the averaged weights when the run kept an EMA, else the raw weights.
    """
    device = torch.device(device)
    dtype = dtype if isinstance(dtype, torch.dtype) else inference_dtype(device, dtype)
    kind = source_kind(path)
    if kind is SourceKind.HF:
        loaded = _open_hf(Path(path), device, dtype)
    else:
        ckpt = resolve_checkpoint(path)
        cfg = read_config(ckpt)
        opener = _open_adapted if kind is SourceKind.ADAPTED else _open_latent if spec_of(cfg.process).frozen_base \
            else _open_sunfish
        loaded = opener(ckpt, cfg, device, ema)
    if next(loaded.model.parameters()).dtype != dtype:
        loaded.model.to(dtype)
    return loaded

