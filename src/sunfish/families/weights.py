"""Streaming a Hugging Face checkpoint's safetensors shards into Sunfish's Transformer.

The model is built on the meta device (no memory), each Sunfish parameter is made from its checkpoint tensors
(read memory-mapped with `safe_open`, converted to the inference dtype, rows concatenated, RoPE halves flipped)
and assigned in place, so the peak is one copy of the model in the inference dtype plus one layer's tensors;
an 8B checkpoint in bf16 never exists in fp32. A missing shard, a missing tensor or a tensor of the wrong
shape is one sentence.
"""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path

import torch

from sunfish.config import ModelConfig
from sunfish.families.base import Part, UnsupportedModel, rope_flip
from sunfish.model.transformer import Transformer, rope_tables

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"


def shard_map(folder: Path) -> dict[str, Path]:
    """Tensor name -> the shard file holding it, from model.safetensors.index.json or the one model.safetensors."""
    index = folder / INDEX
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
        files = {name: folder / file for name, file in weight_map.items()}
        missing = sorted({p.name for p in files.values() if not p.is_file()})
        if missing:
            raise UnsupportedModel(f"'{folder}' lacks {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}, "
                                   f"listed in its {INDEX}; copy every shard of the checkpoint")
        return files
    if (folder / SINGLE).is_file():
        from safetensors import safe_open

        with safe_open(str(folder / SINGLE), "pt") as f:
            return {name: folder / SINGLE for name in f.keys()}
    raise UnsupportedModel(f"'{folder}' holds no {SINGLE} and no {INDEX}; Sunfish reads the safetensors weights of a "
                           "Hugging Face checkpoint")


class _Reader:
    """Open shards once each and read tensors by name, in `dtype`."""

    def __init__(self, files: dict[str, Path], stack: ExitStack, dtype: torch.dtype):
        from safetensors import safe_open

        self.files, self.dtype = files, dtype
        self.handles = {p: stack.enter_context(safe_open(str(p), "pt")) for p in set(files.values())}

    def get(self, name: str, folder: Path) -> torch.Tensor:
        if name not in self.files:
            raise UnsupportedModel(f"the checkpoint in '{folder}' has no tensor '{name}', which its config implies; "
                                   "the files belong to another architecture or are incomplete")
        return self.handles[self.files[name]].get_tensor(name).to(self.dtype)


def _make(parts: list[Part], reader: _Reader, folder: Path) -> torch.Tensor:
    """One Sunfish parameter from its checkpoint parts (rows concatenated, RoPE halves flipped)."""
    tensors = []
    for part in parts:
        t = reader.get(part.name, folder)
        tensors.append(rope_flip(t, part.rope_heads) if part.rope_heads else t)
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors, dim=0)


def load_family_weights(folder: Path, cfg: ModelConfig, recipe: dict[str, list[Part]], device: torch.device,
                        dtype: torch.dtype) -> Transformer:
    """A Transformer for `cfg` with the checkpoint's weights, in eval mode, on `device` in `dtype`."""
    with torch.device("meta"):
        model = Transformer(cfg)
    expected = {name: p.shape for name, p in model.named_parameters()}
    with ExitStack() as stack:
        reader = _Reader(shard_map(folder), stack, dtype)
        state = {}
        for name, parts in recipe.items():
            value = _make(parts, reader, folder)
            if tuple(value.shape) != tuple(expected[name]):
                raise UnsupportedModel(f"the weights for '{name}' in '{folder}' have shape {tuple(value.shape)}, "
                                       f"but its config.json implies {tuple(expected[name])}; the checkpoint is "
                                       "damaged or its config does not match it")
            state[name] = value.to(device)
    if cfg.tie_embeddings:
        state["lm_head.weight"] = state["embed.weight"]
    model.load_state_dict(state, strict=True, assign=True)
    if cfg.tie_embeddings:
        model.lm_head.weight = model.embed.weight
    cos, sin = rope_tables(cfg.context, cfg.d_model // cfg.n_heads, cfg.rope_base)
    model.rope_cos, model.rope_sin = cos.to(device), sin.to(device)
    return model.eval()
