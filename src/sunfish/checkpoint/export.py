"""`sunfish export`: a run's checkpoint (full or FSDP-sharded) consolidated into one folder, in one of three formats:

* sunfish (default): model.safetensors, config.json, tokenizer.json, state.json and manifest.json, which every
  verb opens like a checkpoint;
* hf: a `transformers` folder of Sunfish's own model class (`import sunfish.hf`; AutoModel.from_pretrained);
* llada: LLaDA's layout, for models inside LLaDA's architecture (its modeling code and Sunfish's loader open it).

The folder is written beside OUT and moved into place when complete; OUT is replaced only when it is empty or an
earlier export.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from safetensors.torch import save_model

from sunfish.checkpoint.files import CheckpointError, best_checkpoint, is_checkpoint, write_manifest, write_tokenizer
from sunfish.checkpoint.hf_formats import PROVENANCE, write_hf, write_llada
from sunfish.config import save_config
from sunfish.fileio import replace_folder


class ExportFormat(str, enum.Enum):
    SUNFISH = "sunfish"  # Sunfish's checkpoint layout
    HF = "hf"  # transformers folder of Sunfish's model class (model_type "sunfish")
    LLADA = "llada"  # LLaDA's layout (model_type "llada")


@dataclass(frozen=True)
class Exported:
    folder: Path  # the export
    source: Path  # the checkpoint it came from
    files: list[str]  # what the folder holds


def _write_sunfish(loaded, folder: Path) -> None:
    """Sunfish's checkpoint layout; a public model keeps its tokenizer files and its config.json (hf_config.json)."""
    save_model(loaded.model, str(folder / "model.safetensors"))
    private = dataclasses.replace(loaded.cfg.train, notify=())  # notification URLs carry tokens: never shared
    save_config(dataclasses.replace(loaded.cfg, train=private), folder / "config.json")
    write_tokenizer(loaded.tokenizer, folder)
    body = {"step": loaded.step or 0, "data_fingerprint": "", "exported_from": str(loaded.path)}
    (folder / "state.json").write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")
    write_manifest(folder)


def _write_provenance(loaded, folder: Path, fmt: ExportFormat) -> None:
    body = {"format": fmt.value, "exported_from": str(loaded.path), "step": loaded.step}
    (folder / PROVENANCE).write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")


WRITERS: dict[ExportFormat, Callable] = {ExportFormat.SUNFISH: _write_sunfish, ExportFormat.HF: write_hf,
                                         ExportFormat.LLADA: write_llada}


def _replaceable(out: Path) -> bool:
    """OUT may be overwritten: absent, empty, or an earlier export (a checkpoint, or a folder with export.json)."""
    return not out.exists() or is_checkpoint(out) or (out / PROVENANCE).is_file() or not any(out.iterdir())


def export_checkpoint(path: str | Path, out: Path, *, best: bool = False, ema: bool | None = None,
                      fmt: ExportFormat | str = ExportFormat.SUNFISH, dtype: str = "fp32") -> Exported:
    """Write the checkpoint of `path` (a run: its newest, or with `best` its lowest validation loss) to OUT in `fmt`."""
    from sunfish.loading import load_model

    fmt, path, out = ExportFormat(fmt), Path(path), Path(out)
    if best:
        chosen = best_checkpoint(path)
        if chosen is None:
            raise CheckpointError(f"no checkpoint in '{path}' records a validation loss; export without --best")
        path = chosen
    if not _replaceable(out):
        raise CheckpointError(f"'{out}' exists and is not an earlier export; choose an empty or new --out folder")
    loaded = load_model(path, "cpu", ema=ema, dtype=dtype)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".tmp-{out.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        WRITERS[fmt](loaded, tmp)
        if fmt is not ExportFormat.SUNFISH:
            _write_provenance(loaded, tmp, fmt)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_folder(tmp, out)
    return Exported(folder=out, source=loaded.path, files=sorted(p.name for p in out.iterdir()))
