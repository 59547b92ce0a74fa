"""LoRA adapters (Hu et al. 2021, arXiv:2106.09685) through peft.

A wrapped linear layer computes W x + (alpha / r) B A x with A (r, in), B (out, r) trained and W frozen; B starts
at zero, so a fresh adapter leaves the model unchanged. Settings come from any config section holding the fields
lora, lora_rank, lora_alpha, lora_targets and qlora (AdaptConfig); its SECTION names the flags in messages
(--adapt.lora_targets).

* `apply_lora` wraps the target layers in place and freezes everything else (any torch module: a transformers
  causal LM or a Sunfish `Transformer`);
* `merge_lora` folds every update into its weight and puts the plain layers back.
"""

from __future__ import annotations

import importlib.util
from typing import Protocol

import torch
import torch.nn as nn

SKIP = {"lm_head", "head", "embed", "wte", "wpe"}  # never wrapped by all-linear: embeddings and output heads


class LoraSettings(Protocol):
    SECTION: str
    lora: bool
    lora_rank: int
    lora_alpha: float
    lora_targets: str
    qlora: bool


def _wrappable(module: nn.Module) -> dict[str, nn.Module]:
    """The layers peft can wrap by qualified name: linear (and GPT-2's Conv1D, which stores W transposed) and
    embedding layers."""
    return {name: m for name, m in module.named_modules()
            if isinstance(m, (nn.Linear, nn.Embedding)) or type(m).__name__ == "Conv1D"}


def lora_targets(module: nn.Module, cfg: LoraSettings, frozen: frozenset[str] = frozenset()) -> list[str]:
    """Module names LoRA wraps: the configured list (each a layer's name or its dotted tail), or every linear layer
    except the embeddings and the output head. Layers named in `frozen` are never wrapped."""
    layers = _wrappable(module)
    if cfg.lora_targets == "all-linear":
        return sorted({n.rsplit(".", 1)[-1] for n, m in layers.items() if not isinstance(m, nn.Embedding)} - SKIP)
    offered = {n.rsplit(".", 1)[-1] for n in layers} - frozen
    targets = [t.strip() for t in cfg.lora_targets.split(",") if t.strip()]
    for t in targets:
        if t.rsplit(".", 1)[-1] in frozen or not any(n == t or n.endswith("." + t) for n in layers):
            raise ValueError(f"--{cfg.SECTION}.lora_targets names '{t}', which is not a layer LoRA can wrap in this "
                             f"model; name some of {', '.join(sorted(offered))}, or all-linear")
    return targets


def apply_lora(module: nn.Module, cfg: LoraSettings, frozen: frozenset[str] = frozenset()) -> None:
    """Inject LoRA adapters (peft) in place and freeze everything else (`frozen`: layer names never wrapped)."""
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError:
        raise ValueError(f"--{cfg.SECTION}.lora needs the peft package; install it with pip install 'sunfish[adapt]'") from None
    targets = lora_targets(module, cfg, frozen)
    if not targets:
        raise ValueError(f"no linear layers match --{cfg.SECTION}.lora_targets; name modules of the base model, e.g. q_proj,v_proj")
    fan_in_fan_out = any(type(m).__name__ == "Conv1D" for m in module.modules())  # GPT-2 stores W transposed
    config = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, target_modules=targets, lora_dropout=0.0,
                        fan_in_fan_out=fan_in_fan_out)
    try:
        inject_adapter_in_model(config, module)
    except ValueError as err:
        raise ValueError(f"LoRA cannot wrap {targets} ({str(err).splitlines()[0]}); choose --{cfg.SECTION}.lora_targets") from None
    for name, p in module.named_parameters():
        p.requires_grad = "lora_" in name


def require_qlora(cfg: LoraSettings) -> None:
    """4-bit base weights (QLoRA, Dettmers et al. 2023) need CUDA and bitsandbytes: one sentence without them."""
    if not torch.cuda.is_available() or importlib.util.find_spec("bitsandbytes") is None:
        raise ValueError(f"--{cfg.SECTION}.qlora needs a CUDA GPU and the bitsandbytes package; without them use "
                         "--lora (16/32-bit base weights) instead")


def merge_lora(module: nn.Module) -> None:
    """Fold every LoRA update into its base weight and put the plain layers back (for export)."""
    from peft.tuners.lora import LoraLayer

    for name, child in list(module.named_modules()):
        if isinstance(child, LoraLayer):
            child.merge()
            parent_name, _, attr = name.rpartition(".")
            setattr(module.get_submodule(parent_name) if parent_name else module, attr, child.get_base_layer())
