"""Checkpoints: RUN_DIR/checkpoints/step-NNNNNN/ holding everything needed to resume or sample.

Two layouts share the small files state.json (step, data fingerprint, validation loss, data position),
config.json (resolved RunConfig), tokenizer.json, rng.safetensors (noise and data generator states) and
manifest.json (size and SHA-256 of every file, checked before anything is loaded):

- full (one process, DDP): model.safetensors, optimizer.safetensors (AdamW state by parameter name) and,
  with EMA, ema.safetensors; written by rank 0.
- sharded (FSDP): state/ holds model, optimizer and EMA shards written by every rank at once through
  `torch.distributed.checkpoint` in safetensors files, so it loads on any number of ranks, or in one
  process (`sunfish export` consolidates it into one model.safetensors).

A checkpoint is written into a hidden temporary folder and renamed into place, so a killed run never
leaves a half checkpoint under a real name. Loading never unpickles: safetensors and JSON only.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file, save_model

from sunfish.config import RunConfig, config_from_dict, save_config
from sunfish.data.sources import file_sha256
from sunfish.model.transformer import Transformer, build_model
from sunfish.tokenizer import Tokenizer

PREFIX = "step-"
SMALL = ("config.json", "tokenizer.json", "state.json")
MANIFEST = "manifest.json"
SHARDED = "state"


class CheckpointError(ValueError):
    """A checkpoint problem a person can fix; the message is one sentence."""


@dataclass
class TrainingState:
    step: int  # optimiser steps completed
    data_fingerprint: str  # hash of the training token stream, checked on resume
    extra: dict[str, Any]  # val_loss, data position, noise-stream layout, ...


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"{PREFIX}{step:06d}"


def is_sharded(path: Path) -> bool:
    return (path / SHARDED).is_dir()


def is_checkpoint(path: Path) -> bool:
    """A complete checkpoint folder (its files may still be damaged: see `verify_checkpoint`)."""
    return (path.is_dir() and all((path / n).is_file() for n in SMALL)
            and ((path / "model.safetensors").is_file() or is_sharded(path)))


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.name.startswith(PREFIX) and is_checkpoint(p)]
    return sorted(found, key=lambda p: p.name)


# ---------------------------------------------------------------------------------------------- manifest

def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(folder: Path) -> None:
    """manifest.json: the size and SHA-256 of every file in the checkpoint."""
    files = {p.relative_to(folder).as_posix(): {"bytes": p.stat().st_size, "sha256": file_sha256(p)} for p in _files(folder)}
    (folder / MANIFEST).write_text(json.dumps({"format": 1, "files": files}, indent=1) + "\n", encoding="utf-8")


def verify_checkpoint(ckpt: Path) -> None:
    """Raise CheckpointError unless every file matches its manifest entry (size, then SHA-256)."""
    path = ckpt / MANIFEST
    if not path.is_file():
        return  # written before manifests existed: nothing to check against
    try:
        files = json.loads(path.read_text(encoding="utf-8"))["files"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise CheckpointError(f"checkpoint '{ckpt}' is damaged: its manifest.json cannot be read") from None
    for name, entry in files.items():
        f = ckpt / name
        if not f.is_file():
            raise CheckpointError(f"checkpoint '{ckpt}' is damaged: {name} is missing")
        if f.stat().st_size != entry["bytes"]:
            raise CheckpointError(f"checkpoint '{ckpt}' is damaged: {name} has {f.stat().st_size:,} bytes, "
                                  f"its manifest says {entry['bytes']:,}")
        if file_sha256(f) != entry["sha256"]:
            raise CheckpointError(f"checkpoint '{ckpt}' is damaged: the SHA-256 of {name} differs from its manifest")


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder itself, or the newest checkpoint of a run folder (verified either way)."""
    path = Path(path)
    if not is_checkpoint(path):
        found = list_checkpoints(path)
        if not found:
            raise CheckpointError(
                f"'{path}' is not a Sunfish run or checkpoint folder (no checkpoints/{PREFIX}*/model.safetensors); "
                "pass the --out folder of `sunfish train` or one of its checkpoints"
            )
        path = found[-1]
    verify_checkpoint(path)
    return path


def newest_good_checkpoint(run_dir: Path, log: Callable[[str], None]) -> Path | None:
    """The newest checkpoint whose files match their manifest; damaged newer ones are named and skipped."""
    for ckpt in reversed(list_checkpoints(run_dir)):
        try:
            verify_checkpoint(ckpt)
            read_config(ckpt)
            return ckpt
        except CheckpointError as err:
            log(f"warning: {err}; falling back to the previous checkpoint")
    return None


# ---------------------------------------------------------------------------------------------- state dicts

def _options(full: bool):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=full, cpu_offload=full)


def _flatten_optimizer(osd: dict) -> dict[str, torch.Tensor]:
    """{"state": {name: {key: tensor}}} -> {"name/key": tensor} (param groups are rebuilt from the config)."""
    return {f"{name}/{key}": value for name, entry in osd.get("state", {}).items() for key, value in entry.items()}


def _unflatten_optimizer(flat: dict[str, torch.Tensor], template: dict) -> dict:
    state: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in flat.items():
        name, _, field = key.rpartition("/")
        state.setdefault(name, {})[field] = value
    return {"state": state, "param_groups": template["param_groups"]}


def _optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, full: bool) -> dict[str, torch.Tensor]:
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return _flatten_optimizer(get_optimizer_state_dict(model, optimizer, options=_options(full)))


def _full_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Gather DTensor shards (collective under FSDP) into plain CPU tensors."""
    from torch.distributed.tensor import DTensor

    out, seen = {}, set()
    for k, v in tensors.items():
        v = (v.full_tensor() if isinstance(v, DTensor) else v).detach().cpu().contiguous()
        if v.data_ptr() in seen:  # a tied weight: safetensors stores each storage once
            v = v.clone()
        seen.add(v.data_ptr())
        out[k] = v
    return out


def _tied_aliases(model: Transformer) -> dict[str, str]:
    """{alias: primary} for parameters registered under two names (tied embeddings)."""
    names: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name.replace("_checkpoint_wrapped_module.", ""))
    return {alias: group[0] for group in names.values() for alias in group[1:]}


def _alias_tied(weights: dict[str, torch.Tensor], model: Transformer) -> None:
    """Fill a tied weight missing from `weights` (older checkpoints store it once) from its twin."""
    names: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name.replace("_checkpoint_wrapped_module.", ""))
    for group in names.values():
        present = [n for n in group if n in weights]
        for n in group:
            if present and n not in weights:
                weights[n] = weights[present[0]]


def _save_rng(rng: dict[str, Any], folder: Path, body: dict) -> None:
    tensors = {k: v.contiguous() for k, v in rng.items() if isinstance(v, torch.Tensor)}
    save_file(tensors, str(folder / "rng.safetensors"))
    body["rng_json"] = {k: v for k, v in rng.items() if not isinstance(v, torch.Tensor)}


def save_checkpoint(
    run_dir: Path,
    step: int,
    model: Transformer,
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
    from sunfish.train.parallel import DistInfo, barrier

    info = info or DistInfo()
    final = checkpoint_dir(run_dir, step)
    tmp = final.parent / f".tmp-{final.name}"
    if info.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier(info)
    if sharded:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint import HuggingFaceStorageWriter
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        aliases = _tied_aliases(model)  # safetensors stores a shared tensor once
        body = {"model": {k: v for k, v in get_model_state_dict(model, options=_options(False)).items() if k not in aliases},
                "optim": _optimizer_state(model, optimizer, full=False)}
        if ema is not None:
            body["ema"] = ema
        dcp.save(body, storage_writer=HuggingFaceStorageWriter(str(tmp / SHARDED), save_distributed=True))
    else:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        weights = _full_tensors(get_model_state_dict(model, options=_options(True)))
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
        tokenizer.save(tmp / "tokenizer.json")
        (tmp / "state.json").write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")
        write_manifest(tmp)
        _replace_folder(tmp, final)
    barrier(info)
    return final


def _replace_folder(tmp: Path, final: Path) -> None:
    if final.exists():
        old = final.parent / f".old-{final.name}"
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(final)
    fd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(fd)  # make the rename durable before older checkpoints are pruned
    finally:
        os.close(fd)


def prune_checkpoints(run_dir: Path, keep_last: int) -> list[Path]:
    """Delete all but the newest `keep_last` checkpoints and the best by validation loss; returns those removed."""
    found = list_checkpoints(run_dir)
    if keep_last <= 0 or len(found) <= keep_last:
        return []
    keep = set(found[-keep_last:])
    scored = [(read_state(p).extra.get("val_loss"), p) for p in found]
    scored = [(v, p) for v, p in scored if isinstance(v, (int, float))]
    if scored:
        keep.add(min(scored, key=lambda vp: vp[0])[1])
    removed = [p for p in found if p not in keep]
    for p in removed:
        shutil.rmtree(p, ignore_errors=True)
    return removed


def best_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint with the lowest recorded validation loss, if any recorded one."""
    scored = [(read_state(p).extra.get("val_loss"), p) for p in list_checkpoints(run_dir)]
    scored = [(v, p) for v, p in scored if isinstance(v, (int, float))]
    return min(scored, key=lambda vp: vp[0])[1] if scored else None


# ---------------------------------------------------------------------------------------------- loading

def read_config(ckpt: Path) -> RunConfig:
    try:
        return config_from_dict(json.loads((ckpt / "config.json").read_text(encoding="utf-8")))
    except (json.JSONDecodeError, ValueError) as err:
        raise CheckpointError(f"the config in '{ckpt}' cannot be read ({err}); the checkpoint is damaged") from None


def read_state(ckpt: Path) -> TrainingState:
    try:
        body = json.loads((ckpt / "state.json").read_text(encoding="utf-8"))
        step = int(body.pop("step"))
    except (json.JSONDecodeError, KeyError, ValueError, TypeError):
        raise CheckpointError(f"the state.json of '{ckpt}' cannot be read; the checkpoint is damaged") from None
    return TrainingState(step=step, data_fingerprint=str(body.pop("data_fingerprint", "")), extra=body)


def _damaged(ckpt: Path, err: Exception) -> CheckpointError:
    first = str(err).splitlines()[0] if str(err) else type(err).__name__
    return CheckpointError(f"the weights in '{ckpt}' cannot be loaded into the model its config describes "
                           f"({first}); the checkpoint is damaged or belongs to another model")


def _read_sharded(ckpt: Path, targets: dict) -> None:
    """Fill `targets` (nested dict of plain tensors or DTensors) in place from the sharded state/ folder."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageReader

    try:
        with warnings.catch_warnings():  # in one process DCP warns that it loads without a process group
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.load(targets, storage_reader=HuggingFaceStorageReader(str(ckpt / SHARDED)))
    except Exception as err:  # DCP wraps reader errors in several types
        raise _damaged(ckpt, err) from None


def _read_full(ckpt: Path, name: str) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(ckpt / name))
    except Exception as err:  # safetensors raises several types for damaged files
        raise _damaged(ckpt, err) from None


def load_weights(model: Transformer, ckpt: Path, ema: bool = False) -> None:
    """Weights (or, with `ema`, the averaged weights when saved) into a model of any parallel layout."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

    if is_sharded(ckpt):
        aliases = _tied_aliases(model)
        target = {k: v for k, v in get_model_state_dict(model, options=_options(False)).items() if k not in aliases}
        key = "ema" if ema and has_ema(ckpt) else "model"
        _read_sharded(ckpt, {key: target})
        target.update({alias: target[primary] for alias, primary in aliases.items()})
        set_model_state_dict(model, target, options=_options(False))
        return
    name = "ema.safetensors" if ema and has_ema(ckpt) else "model.safetensors"
    weights = _read_full(ckpt, name)
    _alias_tied(weights, model)
    expected = set(get_model_state_dict(model, options=_options(False)))
    if set(weights) != expected:
        raise CheckpointError(f"the weights in '{ckpt}' do not match the model in its config "
                              f"(missing {len(expected - set(weights))}, unexpected {len(set(weights) - expected)} tensors)")
    try:
        set_model_state_dict(model, weights, options=_options(True))
    except (RuntimeError, ValueError) as err:
        raise _damaged(ckpt, err) from None


def has_ema(ckpt: Path) -> bool:
    if is_sharded(ckpt):
        return bool(read_state(ckpt).extra.get("ema"))
    return (ckpt / "ema.safetensors").is_file()


def load_training_extras(ckpt: Path, model: Transformer, optimizer: torch.optim.Optimizer,
                         ema: dict[str, torch.Tensor] | None) -> dict[str, Any]:
    """Restore the optimizer (and EMA) in place; return the saved generator states and data position."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    if (ckpt / "optimizer.pt").is_file() and not (ckpt / "optimizer.safetensors").is_file():
        return _load_legacy_extras(ckpt, optimizer)
    template = get_optimizer_state_dict(model, optimizer, options=_options(False))  # initialises empty state
    if is_sharded(ckpt):
        flat = _flatten_optimizer(template)
        targets: dict = {"optim": flat}
        if ema is not None and has_ema(ckpt):
            targets["ema"] = ema
        _read_sharded(ckpt, targets)
        set_optimizer_state_dict(model, optimizer, _unflatten_optimizer(flat, template), options=_options(False))
    else:
        flat = _read_full(ckpt, "optimizer.safetensors")
        set_optimizer_state_dict(model, optimizer, _unflatten_optimizer(flat, template), options=_options(True))
        if ema is not None and has_ema(ckpt):
            _copy_into(ema, _read_full(ckpt, "ema.safetensors"))
    rng: dict[str, Any] = dict(_read_full(ckpt, "rng.safetensors"))
    rng.update(read_state(ckpt).extra.get("rng_json", {}))
    return rng


def _load_legacy_extras(ckpt: Path, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Checkpoints written before manifests (optimizer.pt, rng.pt: tensors only, loaded with weights_only)."""
    try:
        optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True, map_location="cpu"))
        return torch.load(ckpt / "rng.pt", weights_only=True, map_location="cpu")
    except Exception as err:  # unpickling errors, shape mismatches
        raise _damaged(ckpt, err) from None


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


@dataclass
class LoadedModel:
    model: Transformer
    tokenizer: Tokenizer
    cfg: RunConfig
    path: Path


def load_for_inference(path: str | Path, device: torch.device, ema: bool | None = None) -> LoadedModel:
    """Model (eval mode), tokenizer and config from a run or checkpoint folder.

    `ema` None: the averaged weights when the run kept an EMA, else the raw weights.
    """
    ckpt = resolve_checkpoint(path)
    cfg = read_config(ckpt)
    if cfg.adapt.base:  # an adapted causal LM (`sunfish adapt`) rebuilds its own model and tokenizer
        from sunfish.adapt.model import load_adapted

        return load_adapted(ckpt, cfg, device)
    tokenizer = Tokenizer.load(ckpt / "tokenizer.json")
    model = build_model(cfg.model, device, cfg.process)
    load_weights(model, ckpt, ema=has_ema(ckpt) if ema is None else ema)
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, cfg=cfg, path=ckpt)


def export_checkpoint(path: str | Path, out: Path, *, best: bool = False, ema: bool | None = None) -> Path:
    """Consolidate a checkpoint (full or sharded) into OUT/model.safetensors + config.json + tokenizer.json."""
    path = Path(path)
    if best:
        chosen = best_checkpoint(path)
        if chosen is None:
            raise CheckpointError(f"no checkpoint in '{path}' records a validation loss; export without --best")
        path = chosen
    loaded = load_for_inference(path, torch.device("cpu"), ema=ema)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".tmp-{out.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_model(loaded.model, str(tmp / "model.safetensors"))
    save_config(loaded.cfg, tmp / "config.json")
    loaded.tokenizer.save(tmp / "tokenizer.json")
    step = read_state(loaded.path).step
    body = {"step": step, "data_fingerprint": "", "exported_from": str(loaded.path)}
    (tmp / "state.json").write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")
    write_manifest(tmp)
    if out.exists() and not is_checkpoint(out) and any(out.iterdir()):
        shutil.rmtree(tmp)
        raise CheckpointError(f"'{out}' exists and is not an exported checkpoint; choose an empty or new --out folder")
    _replace_folder(tmp, out)
    return out
