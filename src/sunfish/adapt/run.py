"""`sunfish adapt`: fine-tune a causal LM into a diffusion LM through Sunfish's trainer; helpers around it.

* `adapt_config` fills the run config from the base model (sizes, context, `adapt.base` and `adapt.kind`).
* `adapt` builds the corpus with the base's tokenizer (fixed windows, see windows.py) and calls
  `sunfish.training.loop.train` with a model factory that returns the flipped model with its objective, so
  checkpoints, resume, validation and metrics are the trainer's own.
* `cache_teacher`, `record_trajectories` and `export_hf` are the other verbs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Callable

import torch

from sunfish.adapt.align import parse_layers
from sunfish.config import BaseKind, RunConfig, apply_tree
from sunfish.adapt.model import (HF_BASE, DiffusionLM, base_kind, build_student, flipped_sunfish_config, hf_context,
                                 load_hf_causal, model_config_of)
from sunfish.adapt.windows import adapt_corpus
from sunfish.lora import merge_lora

DEFAULT_SEQ_LEN = 256  # tokens per training window when neither --train.seq_len nor a short context decides


def base_tokenizer(cfg: RunConfig):
    """The base model's tokenizer with its mask token (an HFTokenizer or Sunfish's own)."""
    if cfg.adapt.kind is BaseKind.SUNFISH:
        from sunfish.checkpoint.files import resolve_checkpoint
        from sunfish.tokenizer import Tokenizer

        return Tokenizer.load(resolve_checkpoint(cfg.adapt.base) / "tokenizer.json")
    from sunfish.adapt.tokenizer import HFTokenizer

    return HFTokenizer.load(cfg.adapt.base)


def adapt_config(base: str | Path, cfg: RunConfig) -> RunConfig:
    """`cfg` with the model section and adapt.base/kind taken from the base model folder."""
    kind = base_kind(base)
    base = str(Path(base).resolve())
    if kind is BaseKind.SUNFISH:
        from sunfish.checkpoint.files import read_config, resolve_checkpoint
        from sunfish.registry import spec_of

        base_cfg = read_config(resolve_checkpoint(base))
        if not spec_of(base_cfg.process).causal:
            raise ValueError(f"'{base}' is a diffusion run already; adapt a causal one (`sunfish train --objective ar`)")
        model = flipped_sunfish_config(base_cfg.model)
    else:
        from transformers import AutoConfig

        try:
            hf_config = AutoConfig.from_pretrained(base)
        except (OSError, ValueError, KeyError) as err:
            raise ValueError(f"'{base}/config.json' is not a Hugging Face model config ({str(err).splitlines()[0]})") from None
        model = model_config_of(hf_config, 0, hf_context(hf_config))
    cfg = dataclasses.replace(cfg, model=model, adapt=dataclasses.replace(cfg.adapt, base=base, kind=kind))
    seq_len = cfg.train.seq_len or min(model.context, DEFAULT_SEQ_LEN)
    return apply_tree(cfg, {"process": {"kind": "masked", "block_size": 0}, "train": {"seq_len": seq_len}})


def write_hf_base(run_dir: Path, model: DiffusionLM, tokenizer) -> None:
    """RUN_DIR/hf_base: config (with the resized vocabulary) and tokenizer files, to rebuild the model."""
    tmp = run_dir / f".tmp-{HF_BASE}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.backbone.hf.config.save_pretrained(str(tmp))
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(run_dir / HF_BASE, ignore_errors=True)
    os.replace(tmp, run_dir / HF_BASE)


def student_factory(run_dir: Path, tokenizer, log: Callable[[str], None]):
    """The trainer's model factory: the flipped base (with LoRA and the training objective) on `device`."""
    from sunfish.adapt.model import load_teacher
    from sunfish.adapt.objective import attach

    def build(cfg: RunConfig, device: torch.device) -> DiffusionLM:
        model = build_student(cfg, run_dir, pretrained=True)
        if cfg.adapt.kind is BaseKind.HF:
            write_hf_base(run_dir, model, tokenizer)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        log(f"adapting {cfg.adapt.base} ({cfg.adapt.kind.value}, layout {cfg.adapt.layout.value}"
            f"{', LoRA r=%d' % cfg.adapt.lora_rank if cfg.adapt.lora else ''}): {trainable:,} trainable parameters")
        if not cfg.adapt.qlora:  # 4-bit weights are placed on the GPU when loaded and cannot be moved
            model.to(device)
        attach(model, cfg, lambda: load_teacher(cfg), log)
        return model

    return build


def adapt(cfg: RunConfig, *, run_dir: Path, data: list[str] | None = None, resume: bool = False,
          progress: bool = True, log: Callable[[str], None] = print):
    """Fine-tune cfg.adapt.base with the masked objective; returns the trainer's TrainResult."""
    from sunfish.training.loop import train

    if not cfg.adapt.base:
        raise ValueError("no base model: pass the folder of a causal LM, `sunfish adapt BASE_DIR --data ...`")
    if cfg.adapt.qlora and not cfg.adapt.lora:
        raise ValueError("--adapt.qlora trains LoRA adapters over 4-bit weights; add --lora")
    if cfg.process.causal_warmup or cfg.process.mask_curriculum:
        raise ValueError("process.causal_warmup and process.mask_curriculum are recipes for training from scratch; an "
                         "adapted model starts from a causal one and trains its own objective, so leave them at 0")
    if cfg.adapt.align_weight > 0:
        parse_layers(cfg.adapt.align_layers, cfg.model.n_layers)  # a bad layer list fails before any loading
    tokenizer = base_tokenizer(cfg)
    corpus = adapt_corpus(cfg, data, tokenizer)
    run_dir.mkdir(parents=True, exist_ok=True)
    build = student_factory(run_dir, tokenizer, log)
    return train(cfg, run_dir=run_dir, data=data, resume=resume, progress=progress, log=log, corpus=corpus,
                 model_factory=lambda _model_cfg, device: build(cfg, device))


# ----------------------------------------------------------------------------------- cache and trajectories
def training_windows(cfg: RunConfig, data: list[str] | None, limit: int = 0) -> tuple[torch.Tensor, object]:
    """The fixed training windows (N, L) an adaptation run with `cfg` sees, and the tokenizer."""
    tokenizer = base_tokenizer(cfg)
    corpus = adapt_corpus(cfg, data, tokenizer)
    windows = corpus.train.windows(cfg.train.seq_len)
    return (windows[:limit] if limit else windows), tokenizer


def cache_teacher(cfg: RunConfig, data: list[str] | None, out: Path, *, batch_size: int = 8, limit: int = 0,
                  log: Callable[[str], None] = print) -> int:
    """Precompute the frozen teacher's states of the aligned layers for every training window into `out`."""
    from sunfish.adapt.align import TeacherCache, parse_layers, sequence_key
    from sunfish.adapt.model import load_teacher
    from sunfish.adapt.objective import teacher_name

    windows, _ = training_windows(cfg, data, limit)
    teacher = load_teacher(cfg)
    layers = parse_layers(cfg.adapt.align_layers, teacher.n_layers)
    width = teacher.embedding().weight.shape[1]
    cache = TeacherCache(out, teacher_name(cfg.adapt), layers, width)
    new = sum(1 for w in windows if sequence_key(w) not in cache.index)
    size = new * TeacherCache.entry_bytes(len(layers), windows.shape[1], width)
    log(f"teacher cache: {new:,} new of {len(windows):,} sequences x {len(layers)} layers x {windows.shape[1]} tokens "
        f"x {width} (bfloat16) = {size / 2**20:,.1f} MiB to write into {out}")
    for i in range(0, len(windows), batch_size):
        rows = windows[i : i + batch_size]
        if all(sequence_key(r) in cache.index for r in rows):
            continue
        with torch.no_grad():
            _, states = teacher.states(rows, bidirectional=False, layers=layers)
        cache.put(rows, torch.stack([states[k] for k in layers], dim=1))
    log(f"teacher cache: {len(cache):,} sequences, {cache.size_bytes() / 2**20:,.1f} MiB on disk")
    return len(cache)


def record_trajectories(model_path: str | Path, data: list[str] | None, out: Path, *, seq_len: int = 0,
                        per_step: int = 1, context: int = 1, batch_size: int = 8, limit: int = 0,
                        log: Callable[[str], None] = print) -> int:
    """Decode the training windows of an adapted run with the entropy-ordered rule; save the commit orders."""
    from sunfish.adapt.trajectory import commit_order, save_trajectories
    from sunfish.loading import load_model
    from sunfish.runtime import setup_runtime

    rt = setup_runtime("auto")
    loaded = load_model(model_path, rt.device)
    cfg = loaded.cfg
    if seq_len:
        cfg = apply_tree(cfg, {"train": {"seq_len": seq_len}})
    if not cfg.adapt.base:
        raise ValueError(f"'{model_path}' is not an adapted run; record trajectories with a `sunfish adapt` run")
    windows, _ = training_windows(cfg, data, limit)
    orders = []
    for i in range(0, len(windows), batch_size):
        orders.append(commit_order(loaded.model, windows[i : i + batch_size].to(rt.device), loaded.tokenizer.mask_id,
                                   per_step=per_step, context=context).cpu())
    save_trajectories(out, windows, torch.cat(orders))
    log(f"wrote the commit orders of {len(windows):,} sequences of {windows.shape[1]} tokens to {out}")
    return len(windows)


# ---------------------------------------------------------------------------------------------- export
def export_hf(run_path: str | Path, out: Path) -> Path:
    """Write an adapted run as a Hugging Face folder (merged weights, config, tokenizer) for from_pretrained."""
    from sunfish.loading import load_model

    loaded = load_model(run_path, "cpu")
    cfg = loaded.cfg
    if not cfg.adapt.base:
        raise ValueError(f"'{run_path}' is not an adapted run; `sunfish adapt export` takes the --out folder of `sunfish adapt`")
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"'{out}' is not empty; choose a new --out folder for the export")
    if cfg.adapt.kind is BaseKind.HF:
        hf = loaded.model.backbone.hf
        if cfg.adapt.lora:
            merge_lora(hf)
    else:
        from sunfish.adapt.export import sunfish_to_hf

        if cfg.adapt.lora:
            merge_lora(loaded.model.backbone.model)
        hf = sunfish_to_hf(loaded.model.backbone.model)
    hf.config.sunfish_adapt = {"bidirectional": True, "layout": cfg.adapt.layout.value,
                               "mask_token_id": loaded.tokenizer.mask_id, "base": cfg.adapt.base}
    tmp = out.parent / f".tmp-{out.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    hf.save_pretrained(str(tmp))
    loaded.tokenizer.save_pretrained(tmp)
    (tmp / "sunfish_adapt.json").write_text(json.dumps(hf.config.sunfish_adapt, indent=2) + "\n", encoding="utf-8")
    if out.exists():
        out.rmdir()
    os.replace(tmp, out)
    return out


__all__ = ["adapt", "adapt_config", "cache_teacher", "record_trajectories", "export_hf", "load_hf_causal"]
