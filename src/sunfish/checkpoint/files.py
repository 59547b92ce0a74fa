"""The checkpoint layout and its small files.

Two layouts share state.json (step, data fingerprint, validation loss, data position), config.json (the
resolved RunConfig), tokenizer.json, rng.safetensors (noise and data generator states) and manifest.json
(size and SHA-256 of every file, checked before anything is loaded):

- full (one process, DDP): model.safetensors, optimizer.safetensors and, with EMA, ema.safetensors;
- sharded (FSDP): state/ holds model, optimizer and EMA shards written through `torch.distributed.checkpoint`.

Loading never unpickles: safetensors and JSON only.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from sunfish.config import RunConfig, config_from_dict
from sunfish.fileio import file_sha256

PREFIX = "step-"
SMALL = ("config.json", "tokenizer.json", "state.json")
MANIFEST = "manifest.json"
SHARDED = "state"
SOURCE_CONFIG = "hf_config.json"  # a converted public model keeps its original config.json under this name


class CheckpointError(ValueError):
    """A checkpoint problem a person can fix; the message is one sentence."""


@dataclass
class TrainingState:
    step: int  # optimiser steps completed
    data_fingerprint: str  # hash of the training token stream, checked on resume
    extra: dict[str, Any]  # val_loss, data position, noise-stream layout, ...


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"{PREFIX}{step:06d}"


def write_tokenizer(tokenizer, folder: Path) -> None:
    """The tokenizer files of a checkpoint: Sunfish's tokenizer.json, or for a public model's tokenizer (one carrying
    its model's config.json as `source_config`) all its Hugging Face files plus that config as hf_config.json, from
    which the loader takes the model's special ids again."""
    source = getattr(tokenizer, "source_config", None)
    if source is None:
        tokenizer.save(folder / "tokenizer.json")
        return
    tokenizer.save_pretrained(folder)
    (folder / SOURCE_CONFIG).write_text(json.dumps(source, indent=2) + "\n", encoding="utf-8")


def is_sharded(path: Path) -> bool:
    return (path / SHARDED).is_dir()


def is_checkpoint(path: Path) -> bool:
    """A complete checkpoint folder (its files may still be damaged: see `verify_checkpoint`)."""
    return (path.is_dir() and all((path / n).is_file() for n in SMALL)
            and ((path / "model.safetensors").is_file() or is_sharded(path)))


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.name.startswith(PREFIX) and is_checkpoint(p)]
    return sorted(found, key=lambda p: p.name)


def run_dir_of(ckpt: Path) -> Path:
    """The run folder holding a checkpoint (RUN/checkpoints/step-N -> RUN); an exported folder is its own."""
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt


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


def manifest_with(ckpt: Path, name: str, body: bytes) -> str | None:
    """The checkpoint's manifest.json text with the entry of `name` describing `body`; None without a manifest."""
    import hashlib

    path = ckpt / MANIFEST
    if not path.is_file():
        return None
    tree = json.loads(path.read_text(encoding="utf-8"))
    tree["files"][name] = {"bytes": len(body), "sha256": hashlib.sha256(body).hexdigest()}
    return json.dumps(tree, indent=1) + "\n"


# ---------------------------------------------------------------------------------------------- finding

class SourceKind(str, enum.Enum):
    SUNFISH = "sunfish"  # a run, checkpoint or exported folder written by Sunfish
    ADAPTED = "adapted"  # a Sunfish checkpoint of a causal LM adapted into a diffusion LM
    HF = "hf"  # a Hugging Face model folder


def _is_hf_folder(path: Path) -> bool:
    return (path / "config.json").is_file() and not (path / "state.json").is_file()


def source_kind(path: str | Path) -> SourceKind:
    """What `path` holds; a path that holds nothing runnable raises CheckpointError (one sentence)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"'{path}' does not exist; pass a run folder (`sunfish train --out`), a checkpoint "
                              "folder or an exported folder")
    if is_checkpoint(path) or list_checkpoints(path):
        ckpt = path if is_checkpoint(path) else list_checkpoints(path)[-1]
        return SourceKind.ADAPTED if read_config(ckpt).adapt.base else SourceKind.SUNFISH
    if _is_hf_folder(path):
        return SourceKind.HF
    resolve_checkpoint(path)  # raises the sentence that says what a run folder looks like
    raise AssertionError("unreachable")


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


def best_of(checkpoints: list[Path]) -> Path | None:
    """The checkpoint with the lowest recorded validation loss, or None when none recorded one."""
    scored = [(read_state(p).extra.get("val_loss"), p) for p in checkpoints]
    scored = [(v, p) for v, p in scored if isinstance(v, (int, float))]
    return min(scored, key=lambda vp: vp[0])[1] if scored else None


def best_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint of a run with the lowest recorded validation loss, if any recorded one."""
    return best_of(list_checkpoints(run_dir))


# ---------------------------------------------------------------------------------------------- reading

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
