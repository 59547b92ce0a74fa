"""Saving checkpoints and resuming training from them (the layout: sunfish/checkpoint/files.py).

A checkpoint is written into a hidden temporary folder and renamed into place, so a killed run never leaves
a half checkpoint under a real name. With node-local run folders every node's folder receives the complete
checkpoint before its rename (training/nodes.py). Besides the weights it holds what a resume needs: the optimizer state
(AdamW moments by parameter name), the EMA weights, the generators' states and the data position.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from sunfish.checkpoint.files import (SHARDED, CheckpointError, TrainingState, best_of, checkpoint_dir, is_sharded,
                                      list_checkpoints, read_state, write_manifest, write_tokenizer)
from sunfish.checkpoint.weights import damaged, has_ema, read_full, read_sharded, state_dict_options, tied_aliases
from sunfish.config import RunConfig, save_config
from sunfish.fileio import replace_folder
from sunfish.tokenizer import Tokenizer


def _flatten_optimizer(osd: dict) -> dict[str, torch.Tensor]:
    """{"state": {name: {key: tensor}}} -> {"name/key": tensor} (param groups are rebuilt from the config)."""
    return {f"{name}/{key}": value for name, entry in osd.get("state", {}).items() for key, value in entry.items()}


def _unflatten_optimizer(flat: dict[str, torch.Tensor], template: dict) -> dict:
    state: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in flat.items():
        name, _, field = key.rpartition("/")
        state.setdefault(name, {})[field] = value
    return {"state": state, "param_groups": template["param_groups"]}


def _restore_optimizer(model, optimizer, saved: dict, template: dict, full: bool) -> None:
    """Load `saved` into the optimizer. A parameter without saved state had none when the checkpoint was written
    (it had not had a gradient yet: a learned time warp before `time_warp_after`), so it gets none now, as in the
    run that was not interrupted; a saved name the model lacks is a CheckpointError."""
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    unknown = set(saved["state"]) - set(template.get("state", {}))
    if unknown:
        raise CheckpointError(f"the checkpoint's optimizer state names parameters this model lacks ({sorted(unknown)[:3]}); "
                              "resume with the configuration it was written with")
    missing = set(template.get("state", {})) - set(saved["state"])
    set_optimizer_state_dict(model, optimizer, saved, options=state_dict_options(full, strict=not missing))
    params = dict(model.named_parameters())
    for name in missing:  # the template's placeholder state (step 1, zero moments) would shift Adam's bias correction
        optimizer.state.pop(params.get(name), None)


def _optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, full: bool) -> dict[str, torch.Tensor]:
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return _flatten_optimizer(get_optimizer_state_dict(model, optimizer, options=state_dict_options(full)))


def _full_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Gather DTensor shards (collective under FSDP) into plain CPU tensors; QLoRA's 4-bit base weights are stored
    dequantised (sunfish/lora.py: quantize_base)."""
    from torch.distributed.tensor import DTensor

    from sunfish.lora import is_quantized

    out, seen = {}, set()
    for k, v in tensors.items():
        v = v.full_tensor() if isinstance(v, DTensor) else v
        v = (v.get_original_weight() if is_quantized(v) else v).detach().cpu().contiguous()
        if v.data_ptr() in seen:  # a tied weight: safetensors stores each storage once
            v = v.clone()
        seen.add(v.data_ptr())
        out[k] = v
    return out


def _save_rng(rng: dict[str, Any], folder: Path, body: dict) -> None:
    tensors = {k: v.contiguous() for k, v in rng.items() if isinstance(v, torch.Tensor)}
    save_file(tensors, str(folder / "rng.safetensors"))
    body["rng_json"] = {k: v for k, v in rng.items() if not isinstance(v, torch.Tensor)}


def _write_sharded(tmp: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                   ema: dict[str, torch.Tensor] | None) -> None:
    """Every rank writes its shards of the weights, moments and EMA (torch.distributed.checkpoint) under tmp."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageWriter
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    aliases = tied_aliases(model)  # safetensors stores a shared tensor once
    body = {"model": {k: v for k, v in get_model_state_dict(model, options=state_dict_options(False)).items() if k not in aliases},
            "optim": _optimizer_state(model, optimizer, full=False)}
    if ema is not None:
        body["ema"] = ema
    dcp.save(body, storage_writer=HuggingFaceStorageWriter(str(tmp / SHARDED), save_distributed=True))


def save_checkpoint(
    run_dir: Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    rng: dict[str, Any],
    state: TrainingState,
    cfg: RunConfig,
    tokenizer: Tokenizer,
    *,
    ema: dict[str, torch.Tensor] | None = None,
    sharded: bool = False,
    info=None,
) -> Path:
    """Write the checkpoint for `step` atomically and return its folder (every rank calls this)."""
    from sunfish.training.nodes import sync_folder
    from sunfish.training.parallel import DistInfo, barrier

    info = info or DistInfo()
    final = checkpoint_dir(run_dir, step)
    tmp = final.parent / f".tmp-{final.name}"
    if info.writes_files:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier(info)
    if sharded:
        _write_sharded(tmp, model, optimizer, ema)
    else:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        weights = _full_tensors(get_model_state_dict(model, options=state_dict_options(True)))
        moments = _full_tensors(_optimizer_state(model, optimizer, full=True))
        averaged = _full_tensors(ema) if ema is not None else None
        if info.is_main:
            save_file(weights, str(tmp / "model.safetensors"))
            save_file(moments, str(tmp / "optimizer.safetensors"))
            if averaged is not None:
                save_file(averaged, str(tmp / "ema.safetensors"))
    barrier(info)
    if info.is_main:
        body = {"step": state.step, "data_fingerprint": state.data_fingerprint, **state.extra}
        _save_rng(rng, tmp, body)
        save_config(cfg, tmp / "config.json")
        write_tokenizer(tokenizer, tmp)
        (tmp / "state.json").write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")
    sync_folder(tmp, info)  # nodes with folders of their own: each receives the files another node wrote
    if info.writes_files:
        write_manifest(tmp)
        replace_folder(tmp, final)
    barrier(info)
    return final


def prune_checkpoints(run_dir: Path, keep_last: int) -> list[Path]:
    """Delete all but the newest `keep_last` checkpoints and the best by validation loss; returns those removed."""
    found = list_checkpoints(run_dir)
    if keep_last <= 0 or len(found) <= keep_last:
        return []
    keep = set(found[-keep_last:]) | {best_of(found)}
    removed = [p for p in found if p not in keep]
    for p in removed:
        shutil.rmtree(p, ignore_errors=True)
    return removed


def load_training_extras(ckpt: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                         ema: dict[str, torch.Tensor] | None) -> dict[str, Any]:
    """Restore the optimizer (and EMA) in place; return the saved generator states and data position."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    if (ckpt / "optimizer.pt").is_file() and not (ckpt / "optimizer.safetensors").is_file():
        return _load_legacy_extras(ckpt, optimizer)
    template = get_optimizer_state_dict(model, optimizer, options=state_dict_options(False))  # initialises empty state
    if is_sharded(ckpt):
        flat = _flatten_optimizer(template)
        targets: dict = {"optim": flat}
        if ema is not None and has_ema(ckpt):
            targets["ema"] = ema
        read_sharded(ckpt, targets)
        _restore_optimizer(model, optimizer, _unflatten_optimizer(flat, template), template, full=False)
    else:
        flat = read_full(ckpt, "optimizer.safetensors")
        _restore_optimizer(model, optimizer, _unflatten_optimizer(flat, template), template, full=True)
        if ema is not None and has_ema(ckpt):
            _copy_into(ema, read_full(ckpt, "ema.safetensors"))
    rng: dict[str, Any] = dict(read_full(ckpt, "rng.safetensors"))
    rng.update(read_state(ckpt).extra.get("rng_json", {}))
    return rng


def _load_legacy_extras(ckpt: Path, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Checkpoints written before manifests (optimizer.pt, rng.pt: tensors only, loaded with weights_only)."""
    try:
        optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True, map_location="cpu"))
        return torch.load(ckpt / "rng.pt", weights_only=True, map_location="cpu")
    except Exception as err:  # unpickling errors, shape mismatches
        raise damaged(ckpt, err) from None


def _copy_into(targets: dict[str, torch.Tensor], full: dict[str, torch.Tensor]) -> None:
    """Copy full tensors into (possibly sharded) targets of the same names."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    for name, target in targets.items():
        value = full[name]
        if isinstance(target, DTensor):
            value = distribute_tensor(value.to(target.device), target.device_mesh, target.placements)
            target.to_local().copy_(value.to_local())
        else:
            target.copy_(value)
