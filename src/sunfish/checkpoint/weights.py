"""Model weights from a checkpoint into a network of any parallel layout (one process, DDP or FSDP).

Full checkpoints hold model.safetensors (and ema.safetensors); sharded ones hold the shards of every rank
in state/, read through `torch.distributed.checkpoint`. A weight shared under two names (tied embeddings)
is stored once. Parameters that were renamed are read under their old names (`LEGACY_NAMES`).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file

from sunfish.checkpoint.files import SHARDED, CheckpointError, is_sharded, read_state

# old parameter-name prefix -> new one (the learned time warp was once called the learned schedule)
LEGACY_NAMES = (("process_io.schedule.", "process_io.warp."),)


def state_dict_options(full: bool, strict: bool = True):
    """Full (gathered, on the CPU) or sharded state dicts of torch.distributed.checkpoint; `strict` False lets an
    optimizer state leave out parameters that had no state yet."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=full, cpu_offload=full, strict=strict)


def upgrade_names(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`tensors` with parameter names saved before a rename given their current names."""
    out = {}
    for name, value in tensors.items():
        for old, new in LEGACY_NAMES:
            if name.startswith(old):
                name = new + name[len(old):]
        out[name] = value
    return out


def tied_groups(model: torch.nn.Module) -> list[list[str]]:
    """Names under which the same parameter is registered, one list per parameter (first name first)."""
    names: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name.replace("_checkpoint_wrapped_module.", ""))
    return list(names.values())


def tied_aliases(model: torch.nn.Module) -> dict[str, str]:
    """{alias: primary} for parameters registered under two names (tied embeddings)."""
    return {alias: group[0] for group in tied_groups(model) for alias in group[1:]}


def fill_tied(weights: dict[str, torch.Tensor], model: torch.nn.Module) -> None:
    """Fill a tied weight missing from `weights` (a checkpoint stores it once) from its twin."""
    for group in tied_groups(model):
        present = [n for n in group if n in weights]
        for n in group:
            if present and n not in weights:
                weights[n] = weights[present[0]]


def damaged(ckpt: Path, err: Exception) -> CheckpointError:
    first = str(err).splitlines()[0] if str(err) else type(err).__name__
    return CheckpointError(f"the weights in '{ckpt}' cannot be loaded into the model its config describes "
                           f"({first}); the checkpoint is damaged or belongs to another model")


def read_sharded(ckpt: Path, targets: dict) -> None:
    """Fill `targets` (nested dict of plain tensors or DTensors) in place from the sharded state/ folder."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageReader

    try:
        with warnings.catch_warnings():  # in one process DCP warns that it loads without a process group
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.load(targets, storage_reader=HuggingFaceStorageReader(str(ckpt / SHARDED)))
    except Exception as err:  # DCP wraps reader errors in several types
        raise damaged(ckpt, err) from None


def read_full(ckpt: Path, name: str) -> dict[str, torch.Tensor]:
    """The tensors of one safetensors file of the checkpoint, renamed parameters given their current names."""
    try:
        return upgrade_names(load_file(str(ckpt / name)))
    except Exception as err:  # safetensors raises several types for damaged files
        raise damaged(ckpt, err) from None


def has_ema(ckpt: Path) -> bool:
    if is_sharded(ckpt):
        return bool(read_state(ckpt).extra.get("ema"))
    return (ckpt / "ema.safetensors").is_file()


def load_weights(model: torch.nn.Module, ckpt: Path, ema: bool = False) -> None:
    """Weights (or, with `ema`, the averaged weights when saved) into a model of any parallel layout."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

    if is_sharded(ckpt):
        aliases = tied_aliases(model)
        target = {k: v for k, v in get_model_state_dict(model, options=state_dict_options(False)).items() if k not in aliases}
        key = "ema" if ema and has_ema(ckpt) else "model"
        read_sharded(ckpt, {key: target})
        target.update({alias: target[primary] for alias, primary in aliases.items()})
        set_model_state_dict(model, target, options=state_dict_options(False))
        return
    weights = read_full(ckpt, "ema.safetensors" if ema and has_ema(ckpt) else "model.safetensors")
    fill_tied(weights, model)
    current = get_model_state_dict(model, options=state_dict_options(False))
    if set(weights) != set(current):
        raise CheckpointError(f"the weights in '{ckpt}' do not match the model in its config "
                              f"(missing {len(set(current) - set(weights))}, unexpected {len(set(weights) - set(current))} tensors)")
    from sunfish.lora import is_quantized

    kept = {k for k, v in current.items() if is_quantized(v)}  # QLoRA's frozen 4-bit base, rebuilt from the base
    try:
        if kept:
            model.load_state_dict({k: v for k, v in weights.items() if k not in kept}, strict=False)
            return
        set_model_state_dict(model, weights, options=state_dict_options(True))
    except (RuntimeError, ValueError) as err:
        raise damaged(ckpt, err) from None


def load_network(ckpt: Path, device: torch.device | str = "cpu", ema: bool | None = None):
    """(network in eval mode, its RunConfig) of a plain Sunfish checkpoint, built through the process registry.
    `ema` None: the averaged weights when the run kept an EMA. A checkpoint of `sunfish sft --lora` holds the
    adapters: they are rebuilt, loaded and merged into a plain network, whose config says lora = false."""
    from sunfish.checkpoint.files import read_config
    from sunfish.registry import build_network

    cfg = read_config(ckpt)
    model = build_network(cfg.model, cfg.process, device)
    return model.eval(), load_merged(model, cfg, ckpt, ema)


def load_merged(model: torch.nn.Module, cfg, ckpt: Path, ema: bool | None = None):
    """The checkpoint's weights into `model` (built from its config `cfg`); a checkpoint of `sunfish sft --lora`
    holds adapters, which are rebuilt, loaded and merged into the plain layers. Returns the config of the network as
    loaded (sft.lora false once merged)."""
    import dataclasses

    if cfg.sft.lora:
        from sunfish.lora import add_sft_adapters

        add_sft_adapters(model, cfg.sft, cfg.sft.added_tokens)
    load_weights(model, ckpt, ema=has_ema(ckpt) if ema is None else ema)
    if not cfg.sft.lora:
        return cfg
    from sunfish.lora import merge_lora

    merge_lora(model)
    return dataclasses.replace(cfg, sft=dataclasses.replace(cfg.sft, lora=False))
