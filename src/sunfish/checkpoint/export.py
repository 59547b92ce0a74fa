"""`sunfish export`: a checkpoint (full or FSDP-sharded) consolidated into one folder of model.safetensors,
config.json, tokenizer.json, state.json and manifest.json, which every verb opens like a checkpoint."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from safetensors.torch import save_model

from sunfish.checkpoint.files import CheckpointError, best_checkpoint, is_checkpoint, read_state, write_manifest
from sunfish.config import save_config
from sunfish.fileio import replace_folder


def export_checkpoint(path: str | Path, out: Path, *, best: bool = False, ema: bool | None = None) -> Path:
    """Consolidate a checkpoint (full or sharded) into OUT/model.safetensors + config.json + tokenizer.json."""
    from sunfish.loading import load_model

    path = Path(path)
    if best:
        chosen = best_checkpoint(path)
        if chosen is None:
            raise CheckpointError(f"no checkpoint in '{path}' records a validation loss; export without --best")
        path = chosen
    loaded = load_model(path, "cpu", ema=ema)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".tmp-{out.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_model(loaded.model, str(tmp / "model.safetensors"))
    save_config(loaded.cfg, tmp / "config.json")
    loaded.tokenizer.save(tmp / "tokenizer.json")
    body = {"step": read_state(loaded.path).step, "data_fingerprint": "", "exported_from": str(loaded.path)}
    (tmp / "state.json").write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")
    write_manifest(tmp)
    if out.exists() and not is_checkpoint(out) and any(out.iterdir()):
        shutil.rmtree(tmp)
        raise CheckpointError(f"'{out}' exists and is not an exported checkpoint; choose an empty or new --out folder")
    replace_folder(tmp, out)
    return out
