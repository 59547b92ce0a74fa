"""`sunfish convert`: a public model's Hugging Face folder written once as a Sunfish checkpoint folder (Sunfish's
parameter names in one model.safetensors, its RunConfig, the model's tokenizer files and the original config.json
kept as hf_config.json), so later loads skip the name mapping and the RoPE row flips. It is `sunfish export` in
Sunfish's format, refused for what is not a public model's folder."""

from __future__ import annotations

from pathlib import Path

from sunfish.checkpoint.files import CheckpointError, SourceKind, source_kind


def convert(folder: str | Path, out: Path, dtype: str = "fp32") -> Path:
    """Write the LLaDA/Dream folder `folder` as a Sunfish checkpoint folder `out` (weights in `dtype`)."""
    from sunfish.checkpoint.export import export_checkpoint

    if source_kind(folder) is not SourceKind.HF:
        raise CheckpointError(f"'{folder}' is a Sunfish run or checkpoint already; `sunfish convert` reads the Hugging "
                              "Face folder of a public model (LLaDA, Dream)")
    return export_checkpoint(folder, Path(out), dtype=dtype).folder
