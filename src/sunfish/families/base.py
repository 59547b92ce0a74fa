"""What a model family declares (`Family`) and the weight recipes it uses.

A recipe maps each Sunfish parameter name to the checkpoint tensors it is made of, concatenated along
rows: Sunfish fuses the query, key and value projections into `attn.qkv` and the SwiGLU gate and value into
`mlp.up`. RoPE: Sunfish rotates channel pairs (i, i + d/2) by -theta where the Hugging Face models' `rotate_half`
rotates by +theta; negating the second half of every head's query and key rows (and biases) turns one into the
other while every q . k product stays the same (`Part.rope`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from sunfish.config import ModelConfig, SamplerConfig


class UnsupportedModel(ValueError):
    """A checkpoint Sunfish cannot map; the message is one sentence naming what was found."""


@dataclass(frozen=True)
class Part:
    """One checkpoint tensor that makes (part of) a Sunfish parameter."""

    name: str  # tensor name in the checkpoint
    rope_heads: int = 0  # > 0: negate the second half of each of this many heads' rows (query / key)


@dataclass(frozen=True)
class Family:
    name: str  # "llada", "dream"
    label: str  # for messages: "LLaDA", "Dream"
    detect: Callable[[dict], bool]  # config.json -> is it this family's
    check: Callable[[dict], None]  # raises UnsupportedModel for options Sunfish's model does not cover
    model_config: Callable[[dict], ModelConfig]
    recipe: Callable[[ModelConfig, dict], dict[str, list[Part]]]  # Sunfish parameter -> checkpoint parts
    special_ids: Callable[[dict], dict[str, int]]  # mask / bos / eos / pad ids the config names
    sampler: SamplerConfig = field(default_factory=SamplerConfig)  # defaults for `sunfish sample`
    eps: float = 1e-3  # the smallest time of its diffusion schedule (Dream's generation eps)


def family_of(config: dict, where: str) -> Family:
    """The family of a checkpoint's config.json, or UnsupportedModel naming what was found."""
    from sunfish.families import FAMILIES

    for family in FAMILIES.values():
        if family.detect(config):
            family.check(config)
            return family
    found = config.get("model_type") or ",".join(config.get("architectures") or []) or "no model_type"
    known = ", ".join(f.label for f in FAMILIES.values())
    raise UnsupportedModel(f"'{where}' holds a '{found}' model, which Sunfish cannot run; supported families: "
                           f"{known} (their config.json model_type)")


def refuse(config: dict, family: str, rules: dict[str, Any]) -> None:
    """UnsupportedModel for the first config key whose value differs from what Sunfish's model covers."""
    for key, allowed in rules.items():
        value = config.get(key)
        ok = allowed(value) if callable(allowed) else value == allowed
        if not ok:
            raise UnsupportedModel(f"this {family} checkpoint sets {key} = {value!r}, which Sunfish's model does "
                                   "not cover; supported are the settings of the released checkpoints")


def rope_flip(w: torch.Tensor, heads: int) -> torch.Tensor:
    """Negate the second half of every head's rows of a (heads * d, ...) weight or (heads * d,) bias.

    Sunfish's RoPE <-> `rotate_half`'s, both ways: the flip is its own inverse, so reading a checkpoint
    (families/weights.py) and writing one (checkpoint/hf_formats.py, adapt/export.py) share this one function."""
    rows = w.reshape(heads, w.shape[0] // heads, *w.shape[1:]).clone()
    rows[:, rows.shape[1] // 2 :] *= -1
    return rows.reshape(w.shape)


def config_special_ids(config: dict) -> dict[str, int]:
    """The mask / EOS / PAD / BOS ids a config.json names (the keys both families use)."""
    keys = {"mask": "mask_token_id", "eos": "eos_token_id", "pad": "pad_token_id", "bos": "bos_token_id"}
    return {k: int(config[v]) for k, v in keys.items() if config.get(v) is not None}


def llama_recipe(cfg: ModelConfig, ends: dict[str, str], names: dict[str, str], bias: bool) -> dict[str, list[Part]]:
    """A Llama-shaped model's recipe: `ends` names the checkpoint's embedding, final norm and (untied) head
    tensors ("embed", "norm", "head"); `names` the per-block ones (see block_recipe)."""
    out = {"embed.weight": [Part(ends["embed"])], "final_norm.weight": [Part(ends["norm"])],
           **block_recipe(cfg, names, bias)}
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = [Part(ends["head"])]
    return out


def block_recipe(cfg: ModelConfig, names: dict[str, str], bias: bool) -> dict[str, list[Part]]:
    """The per-block entries of a Llama-shaped recipe; `names` maps q, k, v, o, gate, up, down, norm1, norm2 to
    checkpoint names containing `{i}`."""
    from sunfish.model.transformer import kv_heads

    out: dict[str, list[Part]] = {}
    for i in range(cfg.n_layers):
        n = {k: v.format(i=i) for k, v in names.items()}
        p = f"blocks.{i}."
        qkv = [Part(n["q"], cfg.n_heads), Part(n["k"], kv_heads(cfg)), Part(n["v"])]
        out[p + "attn.qkv.weight"] = [Part(x.name + ".weight", x.rope_heads) for x in qkv]
        if bias:
            out[p + "attn.qkv.bias"] = [Part(x.name + ".bias", x.rope_heads) for x in qkv]
        out[p + "attn.out.weight"] = [Part(n["o"] + ".weight")]
        out[p + "mlp.up.weight"] = [Part(n["gate"] + ".weight"), Part(n["up"] + ".weight")]
        out[p + "mlp.down.weight"] = [Part(n["down"] + ".weight")]
        out[p + "norm1.weight"] = [Part(n["norm1"] + ".weight")]
        out[p + "norm2.weight"] = [Part(n["norm2"] + ".weight")]
    return out
