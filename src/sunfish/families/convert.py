"""`sunfish convert`: a public model's Hugging Face folder written once as a Sunfish checkpoint folder (Sunfish's
parameter names in one model.safetensors, its RunConfig, the model's tokenizer files and the original config.json
kept as hf_config.json), so later loads skip the name mapping and the RoPE row flips."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from safetensors.torch import save_model

from sunfish.checkpoint.files import CheckpointError, is_checkpoint, write_manifest
from sunfish.config import save_config
from sunfish.families.open import HF_CONFIG, SOURCE_CONFIG
from sunfish.fileio import replace_folder


def convert(folder: str | Path, out: Path, dtype: str = "fp32") -> Path:
    """Write the LLaDA/Dream folder `folder` as a Sunfish checkpoint folder `out` (weights in `dtype`)."""
    from sunfish.checkpoint.files import SourceKind, source_kind
    from sunfish.loading import load_model

    folder, out = Path(folder), Path(out)
    if source_kind(folder) is not SourceKind.HF:
        raise CheckpointError(f"'{folder}' is a Sunfish run or checkpoint already; `sunfish convert` reads the Hugging "
                              "Face folder of a public model (LLaDA, Dream)")
    if out.exists() and not is_checkpoint(out) and any(out.iterdir()):
        raise CheckpointError(f"'{out}' exists and is not a converted checkpoint; choose an empty or new --out folder")
    loaded = load_model(folder, "cpu", dtype=dtype)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".tmp-{out.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_model(loaded.model, str(tmp / "model.safetensors"))
    save_config(loaded.cfg, tmp / "config.json")
    loaded.tokenizer.save_pretrained(tmp)  # the model's own tokenizer files (its tokenizer.json among them)
    shutil.copyfile(folder / HF_CONFIG, tmp / SOURCE_CONFIG)
    body = {"step": 0, "data_fingerprint": "", "converted_from": str(folder.resolve())}
    (tmp / "state.json").write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")
    write_manifest(tmp)
    replace_folder(tmp, out)
    return out
