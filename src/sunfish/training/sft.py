"""`sunfish sft BASE --data CONVERSATIONS --out RUN`: supervised fine-tuning of a trained run on conversations.

The run starts from BASE's weights and config (train/optim/sft settings on top), adds the chat tokens to its
tokenizer (`Tokenizer.with_chat_tokens`: the embedding and output rows of the new tokens start at the mean of
the existing ones), and trains through Sunfish's trainer (checkpoints, resume, validation, metrics) on the
conversations of `data/sft.py` with its process's SFT loss (`process/sft.py`). The finished run chats through
Sunfish's template: `sunfish sample RUN --chat`, `Model.chat`, `sunfish serve`.

With --lora only LoRA adapters (sunfish/lora.py) and the embedding and output rows of the added chat tokens train;
every other weight stays BASE's. Checkpoints hold the adapter-wrapped network (`sft.lora` in their config), so a
resumed run continues the same adapters; every loader rebuilds the adapters from the config and merges them
(`checkpoint/weights.py: load_network`), so sampling, serving and `sunfish export` see plain merged weights.
"""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path
from typing import Callable

import torch

from sunfish.config import BaseKind, RunConfig, apply_tree
from sunfish.fileio import write_text_atomic


def sft_config(base: str | Path, tree: dict | None = None) -> tuple[RunConfig, object]:
    """(the SFT run's config: BASE's with `tree` applied and sft.base set, BASE's network loaded on the CPU)."""
    from sunfish.flags import given_keys
    from sunfish.loading import load_model
    from sunfish.validate import validate

    loaded = load_model(base, "cpu")
    if loaded.spec.sft is None:
        raise ValueError(f"supervised fine-tuning is not defined for {loaded.spec.label} models; fine-tune a masked, "
                         "block or autoregressive run")
    if loaded.cfg.adapt.lora:  # an adapted run's LoRA is folded in: the SFT run starts from plain weights
        from sunfish.lora import merge_lora

        merge_lora(loaded.model)
    start = dataclasses.replace(loaded.cfg, adapt=dataclasses.replace(loaded.cfg.adapt, lora=False, qlora=False))
    cfg = apply_tree(start, {**(tree or {}), "sft": {**(tree or {}).get("sft", {}), "base": str(Path(base).resolve())}})
    validate(cfg, given_keys(tree or {}))
    if "process.block_forcing" in given_keys(tree or {}):
        raise ValueError("supervised fine-tuning trains block models with BD3-LM's loss on conversations; "
                         "process.block_forcing applies to `sunfish train`")
    check_lora(cfg, loaded.model)
    return cfg, loaded


def chat_tokenizer(loaded):
    """BASE's tokenizer as the SFT run uses it: Sunfish's with its chat tokens added (their rows are new); a public
    model's as it is (its own chat template, or the plain default where it has none: sample/chat.py)."""
    return loaded.tokenizer.with_chat_tokens() if hasattr(loaded.tokenizer, "with_chat_tokens") else loaded.tokenizer


def check_lora(cfg: RunConfig, network: torch.nn.Module) -> None:
    """Refuse, in one sentence, LoRA settings this run cannot train with (`network`: BASE's, for the layer names)."""
    from sunfish.config import ParallelKind
    from sunfish.lora import SFT_FROZEN, check_qlora, lora_targets

    if cfg.sft.lora:
        lora_targets(network, cfg.sft, SFT_FROZEN)
    if cfg.sft.qlora and cfg.adapt.base and cfg.adapt.kind is BaseKind.HF:
        raise ValueError("--sft.qlora quantizes Sunfish networks; an adapted transformers model takes 4-bit weights "
                         "through `sunfish adapt --adapt.qlora` (CUDA), so fine-tune this one with --lora")
    if cfg.sft.qlora and cfg.train.ema:
        raise ValueError("--sft.qlora keeps the base weights in 4 bits, which an EMA of the weights would copy in "
                         "full precision; drop --train.ema")
    if cfg.sft.qlora:
        check_qlora(network, cfg.sft, SFT_FROZEN)
    if cfg.sft.lora and cfg.train.parallel is ParallelKind.FSDP:
        raise ValueError("LoRA fine-tuning runs in one process or under --train.parallel=ddp; FSDP does not shard "
                         "adapter-wrapped networks yet")


def check_resume(out: Path, cfg: RunConfig) -> None:
    """A run resumes with the LoRA settings it was trained with (its checkpoints hold that network)."""
    from sunfish.checkpoint.files import list_checkpoints, read_config

    found = list_checkpoints(out)
    keys = ("lora", "lora_rank", "lora_alpha", "lora_targets")
    if found and any(getattr(read_config(found[-1]).sft, k) != getattr(cfg.sft, k) for k in keys):
        saved = read_config(found[-1]).sft
        used = (f"with --lora --sft.lora_rank={saved.lora_rank} --sft.lora_alpha={saved.lora_alpha:g} "
                f"--sft.lora_targets={saved.lora_targets}") if saved.lora else "without --lora"
        raise ValueError(f"the run in '{out}' was trained {used}; resume it with the same LoRA settings")


def sft_corpus(cfg: RunConfig, data: list[str], tokenizer, log: Callable[[str], None]):
    """Train and validation conversations (split by conversation), encoded for the run's sequence length."""
    from sunfish.data.sft import describe_skipped, encode_conversations, read_conversations
    from sunfish.data.sources import DataError
    from sunfish.training.corpus import Corpus, seq_len_of

    conversations, skipped = read_conversations(data)
    if len(conversations) < 2:
        raise DataError(f"{len(conversations)} usable conversations in {', '.join(data)}; SFT needs at least 2 "
                        f"(one for validation); skipped: {describe_skipped(skipped)}")
    order = list(range(len(conversations)))
    random.Random(cfg.train.seed).shuffle(order)
    n_val = min(len(order) - 1, max(1, round(cfg.data.val_fraction * len(order))))
    seq_len = seq_len_of(cfg)
    val = encode_conversations([conversations[i] for i in order[:n_val]], tokenizer, seq_len, cfg.sft.pad)
    train = encode_conversations([conversations[i] for i in order[n_val:]], tokenizer, seq_len, cfg.sft.pad, skipped)
    skipped.update(val.skipped)
    log(f"sft data: {train.tokens.shape[0]:,} training and {val.tokens.shape[0]:,} validation conversations of "
        f"{seq_len} tokens ({int((train.roles == 1).sum()):,} training response tokens, padding {cfg.sft.pad.value}); "
        f"skipped: {describe_skipped(skipped)}")
    return Corpus(tokenizer=tokenizer, train=train, val=val), skipped


def grown(state: dict[str, torch.Tensor], shapes: dict[str, torch.Size]) -> dict[str, torch.Tensor]:
    """BASE's weights for a network whose vocabulary grew: rows of the new tokens (embedding, output layer) start at
    the mean of the existing rows; every other tensor is copied as is."""
    out = {}
    for name, value in state.items():
        want = shapes.get(name)
        if want is None or value.shape == want:
            out[name] = value
        elif value.dim() >= 1 and value.shape[1:] == want[1:] and want[0] > value.shape[0]:
            extra = value.mean(0, keepdim=True).expand(want[0] - value.shape[0], *value.shape[1:])
            out[name] = torch.cat([value, extra])
        else:
            raise ValueError(f"the base's '{name}' {tuple(value.shape)} does not fit {tuple(want)}")
    return out


def adapted_network(cfg: RunConfig, model_cfg, out: Path, device):
    """The empty network of an adapted base (adapt/model.py) with the SFT run's vocabulary, to load BASE into."""
    from sunfish.adapt.model import build_student

    return build_student(dataclasses.replace(cfg, model=model_cfg), out, pretrained=False).to(device)


def sft(base: str | Path, data: list[str], *, out: Path, tree: dict | None = None, resume: bool = False,
        progress: bool = True, log: Callable[[str], None] = print):
    """Fine-tune BASE on the conversations in `data` into the run folder `out`; returns the trainer's TrainResult."""
    from sunfish.model.transformer import build_model
    from sunfish.training.loop import train

    if not data:
        raise ValueError("no conversations: pass --data FILE.jsonl (rows of prompt/response or messages)")
    cfg, loaded = sft_config(base, tree)
    if resume:
        check_resume(out, cfg)
    tokenizer = chat_tokenizer(loaded)
    added = max(0, tokenizer.vocab_size - loaded.cfg.model.vocab_size)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=tokenizer.vocab_size),
                              sft=dataclasses.replace(cfg.sft, added_tokens=added))
    corpus, skipped = sft_corpus(cfg, data, tokenizer, log)
    base_state = {k: v.detach().float() for k, v in loaded.model.state_dict().items()}

    if cfg.adapt.base:
        from sunfish.adapt.run import write_hf_base

        out.mkdir(parents=True, exist_ok=True)
        if cfg.adapt.kind is BaseKind.HF:  # the SFT run is an adapted model too: its loader reads RUN/hf_base
            write_hf_base(out, loaded.model, tokenizer)

    def factory(model_cfg, device):
        model = build_model(model_cfg, device) if not cfg.adapt.base else adapted_network(cfg, model_cfg, out, device)
        model.load_state_dict(grown(base_state, {k: v.shape for k, v in model.state_dict().items()}))
        if cfg.sft.lora:
            from sunfish.lora import add_sft_adapters

            log(add_sft_adapters(model, cfg.sft, added, quantize=cfg.sft.qlora))
        return model

    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "sft_data.json", json.dumps({"data": [str(d) for d in data], "skipped": dict(skipped),
                                                         "train": int(corpus.train.tokens.shape[0]),
                                                         "val": int(corpus.val.tokens.shape[0])}, indent=2) + "\n")
    return train(cfg, run_dir=out, resume=resume, progress=progress, log=log, corpus=corpus, model_factory=factory)
