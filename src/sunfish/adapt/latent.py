"""Networks trained around a frozen base (LDLM, arXiv 2605.07933, process/ldlm.py; the VFM noise adapter,
process/vfm.py): loading the base, building the network around it (the registry's `network`), training through
Sunfish's loop and opening a run for inference.

The base is a `sunfish train --objective ar` run or a local Hugging Face causal LM folder, loaded with
`sunfish adapt`'s own code (adapt/model.py) and kept frozen: no gradient, eval mode, not in the optimiser and
not in the checkpoints (a checkpoint holds the trained parts; the config keeps the base's absolute
path, from which every verb loads it again, so the base folder must stay where it was). The text is cut into
fixed windows of `train.seq_len` tokens with the base's tokenizer (adapt/windows.py); `model.context` is set
to that length, the longest text the decoder writes.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from sunfish.adapt.model import HFBackbone, SunfishBackbone, base_kind, hf_context, load_hf_causal, sunfish_base
from sunfish.adapt.windows import adapt_corpus
from sunfish.checkpoint.files import read_config, resolve_checkpoint
from sunfish.checkpoint.weights import load_merged
from sunfish.config import AdaptConfig, BaseKind, RunConfig, apply_tree

DEFAULT_SEQ_LEN = 64  # tokens per text when neither --train.seq_len nor a shorter context decides


class FrozenBase(nn.Module):
    """A causal LM's final hidden states (causal attention, as it was trained), its input embedding, its states
    of given input embeddings under bidirectional attention (VFM's flow map) and its head; frozen."""

    def __init__(self, backbone: HFBackbone | SunfishBackbone):
        super().__init__()
        self.backbone = backbone
        self.width = int(backbone.embedding().weight.shape[1])
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "FrozenBase":
        return super().train(False)  # never dropout or other training-mode behaviour

    def states(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.backbone.states(tokens, bidirectional=False)[0]

    def embedding(self) -> nn.Embedding:
        return self.backbone.embedding()

    def flow(self, embeds: torch.Tensor) -> torch.Tensor:
        """Final states (B, L, D) of input embeddings (B, L, D) under bidirectional attention, moved one position
        right so that index i holds the state from which the causal head names token i (position 0 reads itself)."""
        B, L, _ = embeds.shape
        if isinstance(self.backbone, SunfishBackbone):
            h = self.backbone.model.hidden(None, embeds=embeds, attn_mask=torch.ones(L, L, dtype=torch.bool,
                                                                                      device=embeds.device))
        else:
            mask = torch.ones(B, 1, L, L, dtype=torch.bool, device=embeds.device)
            decoder = self.backbone.hf.get_decoder()
            h = decoder(inputs_embeds=embeds, attention_mask=mask, use_cache=False).last_hidden_state
        return torch.cat([h[:, :1], h[:, :-1]], dim=1)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        return self.backbone.logits(h)


def _sunfish_checkpoint(base: str) -> Path:
    """The causal Sunfish checkpoint of a base folder; any other process is refused in one sentence."""
    from sunfish.registry import spec_of

    ckpt = resolve_checkpoint(base)
    spec = spec_of(read_config(ckpt).process)
    if not spec.causal:
        raise ValueError(f"'{base}' is {spec.a_label} run; a latent model's base is a causal LM: pass a "
                         "`sunfish train --objective ar` run or a local Hugging Face causal LM folder")
    return ckpt


def base_tokenizer(base: str):
    """The base's tokenizer (Sunfish's own or an HFTokenizer)."""
    if base_kind(base) is BaseKind.SUNFISH:
        from sunfish.tokenizer import Tokenizer

        return Tokenizer.load(_sunfish_checkpoint(base) / "tokenizer.json")
    from sunfish.adapt.tokenizer import HFTokenizer

    return HFTokenizer.load(base)


def load_base(base: str) -> FrozenBase:
    if base_kind(base) is BaseKind.SUNFISH:
        _sunfish_checkpoint(base)
        return FrozenBase(SunfishBackbone(sunfish_base(base)[0]))
    return FrozenBase(HFBackbone(load_hf_causal(base, AdaptConfig())))


def base_context(base: str) -> int:
    if base_kind(base) is BaseKind.SUNFISH:
        return read_config(_sunfish_checkpoint(base)).model.context
    from transformers import AutoConfig

    return hf_context(AutoConfig.from_pretrained(base))


def latent_config(cfg: RunConfig) -> RunConfig:
    """`cfg` with the base's absolute path, the text length (train.seq_len) and model.context set to it, and a
    sampler length that fits (after BOS) when the configured one does not."""
    base = cfg.process.base
    if not base:
        raise ValueError(f"the {cfg.process.kind.value} process works on a frozen causal LM; pass --process.base PATH "
                         "(a `sunfish train --objective ar` run or a local Hugging Face causal LM folder)")
    base = str(Path(base).resolve())
    limit = base_context(base)
    seq_len = cfg.train.seq_len or min(limit, DEFAULT_SEQ_LEN)
    if seq_len > limit:
        raise ValueError(f"--train.seq_len {seq_len} exceeds the base's context of {limit} tokens; lower it")
    tree = {"process": {"base": base}, "train": {"seq_len": seq_len}, "model": {"context": seq_len}}
    if cfg.sampler.length + 1 > seq_len:  # the saved sampler default must fit BOS and the text in the context
        tree["sampler"] = {"length": seq_len - 1}
    return apply_tree(cfg, tree)


def build_latent(cfg: RunConfig, device: torch.device | str) -> nn.Module:
    """The frozen base of cfg.process.base with the process's network (registry: `network`) freshly initialised
    around it, on `device`."""
    from sunfish.registry import spec_of

    base = load_base(cfg.process.base)
    with torch.device(device):
        model = spec_of(cfg.process).network(cfg.model, cfg.process, base)
    return model.to(device)


def latent_train(cfg: RunConfig, *, run_dir: Path, data: list[str] | None = None, resume: bool = False,
                 progress: bool = True, log: Callable[[str], None] = print):
    """Train (or resume) a latent model through Sunfish's loop; returns its TrainResult."""
    from sunfish.training.loop import train

    cfg = latent_config(cfg)
    tokenizer = base_tokenizer(cfg.process.base)
    corpus = adapt_corpus(cfg, data, tokenizer)

    def factory(model_cfg, device: torch.device) -> nn.Module:
        model = build_latent(dataclasses.replace(cfg, model=model_cfg), device)
        base = sum(p.numel() for p in model.base.parameters())
        log(f"{cfg.process.kind.value} model over the frozen base {cfg.process.base} ({base:,} frozen parameters, "
            f"width {model.base.width})")
        return model

    return train(cfg, run_dir=Path(run_dir), data=data, resume=resume, progress=progress, log=log, corpus=corpus,
                 model_factory=factory)


def open_latent(ckpt: Path, cfg: RunConfig, device: torch.device, ema: bool | None):
    """(network in eval mode, tokenizer, config) of a latent run's checkpoint; the base comes from its path."""
    model = build_latent(cfg, device)
    cfg = load_merged(model, cfg, ckpt, ema)
    return model.eval(), base_tokenizer(cfg.process.base), cfg
