"""The adapted model: a pretrained causal LM with bidirectional attention behind Sunfish's model interface.

`DiffusionLM` offers what the trainer and every sampler call: `hidden(tokens)` (B, L, D), `head(h)` and
`needs_time`. Two backbones:

* `HFBackbone`: any transformers causal LM (Llama, Qwen2/3, GPT-2, ...). Attention becomes bidirectional
  by passing a 4D all-True boolean mask (B, 1, L, L): transformers' mask builders return a 4D mask as it
  is, and the attention kernels then take no causal flag (tests/test_adapt.py shows logits at i react to a
  later token only after the flip, for sdpa and eager attention).
* `SunfishBackbone`: a Sunfish `Transformer` trained with `--objective ar`, rebuilt with bidirectional
  attention from the same weights.

Layouts (config `adapt.layout`): SAME (LLaDA) reads the prediction of token i at position i; SHIFTED
(Dream, Ye et al. 2025) reads it at i - 1, where the causal model already predicted its next token, so the
pretrained head stays aligned; position 0 (always BOS) reads itself.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn

from sunfish.checkpoint.files import CheckpointError, SourceKind, resolve_checkpoint, run_dir_of, source_kind
from sunfish.checkpoint.weights import load_merged, load_network
from sunfish.config import AdaptConfig, AttentionKind, BaseKind, Layout, ModelConfig, RunConfig
from sunfish.lora import apply_lora, require_qlora
from sunfish.model.transformer import Transformer, build_model

HF_BASE = "hf_base"  # RUN_DIR/hf_base: the adapted model's HF config and tokenizer (weights live in checkpoints)


class HFBackbone(nn.Module):
    """A transformers causal LM; `states` runs its decoder with a causal or an all-True attention mask."""

    def __init__(self, hf: nn.Module):
        super().__init__()
        self.hf = hf
        self.n_layers = int(hf.config.num_hidden_layers)

    def states(self, tokens: torch.Tensor, bidirectional: bool, layers: Sequence[int] = ()) -> tuple[torch.Tensor, dict]:
        """Final normalised hidden states (B, L, D) and the outputs of `layers` (1-based), each (B, L, D)."""
        B, L = tokens.shape
        mask = torch.ones(B, 1, L, L, dtype=torch.bool, device=tokens.device) if bidirectional else None
        out = self.hf.get_decoder()(input_ids=tokens, attention_mask=mask, output_hidden_states=bool(layers),
                                    use_cache=False)
        return out.last_hidden_state, {k: out.hidden_states[k] for k in layers}

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.hf.get_output_embeddings()(h)

    def embedding(self) -> nn.Embedding:
        return self.hf.get_input_embeddings()


class SunfishBackbone(nn.Module):
    """A Sunfish `Transformer`; `states` overrides its attention pattern with an explicit mask."""

    def __init__(self, model: Transformer):
        super().__init__()
        self.model = model
        self.n_layers = model.cfg.n_layers

    def states(self, tokens: torch.Tensor, bidirectional: bool, layers: Sequence[int] = ()) -> tuple[torch.Tensor, dict]:
        L = tokens.shape[1]
        mask = torch.ones(L, L, dtype=torch.bool, device=tokens.device)
        mask = mask if bidirectional else mask.tril()
        captured: dict[int, torch.Tensor] = {}
        hooks = [self.model.blocks[k - 1].register_forward_hook(lambda m, i, o, k=k: captured.__setitem__(k, o))
                 for k in layers]
        try:
            h = self.model.hidden(tokens, attn_mask=mask)
        finally:
            for hook in hooks:
                hook.remove()
        return h, captured

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.model.head(h)

    def embedding(self) -> nn.Embedding:
        return self.model.embed


class DiffusionLM(nn.Module):
    """tokens (B, L) -> logits (B, L, V) with bidirectional attention and the configured layout."""

    # what the loader tells samplers this network cannot do (sunfish/loading.py)
    UNAVAILABLE = {"cache": "an adapted causal LM decodes without a key/value cache; use --cache none"}
    MIXED_BATCHES = False  # no per-row attention masks or positions: prompts of one length per batch

    def __init__(self, backbone: HFBackbone | SunfishBackbone, cfg: ModelConfig, layout: Layout):
        super().__init__()
        self.backbone = backbone
        self.cfg = cfg  # context and sizes, for samplers and prompt checks
        self.layout = layout
        # set by `sunfish.adapt.objective.attach` for training; never saved. While training, the registry's
        # training_loss calls objective.loss (NELBO + alignment); in eval mode the plain masked NELBO, so
        # validation stays comparable with scratch runs.
        self.objective = None

    @property
    def needs_time(self) -> bool:
        return False

    def align(self, h: torch.Tensor) -> torch.Tensor:
        """Hidden states (B, L, D) moved so that index i holds the state that predicts token i."""
        if self.layout is Layout.SHIFTED:
            return torch.cat([h[:, :1], h[:, :-1]], dim=1)
        return h

    def hidden(self, tokens: torch.Tensor, t: torch.Tensor | None = None, kv_cache=None, *,
               attn_mask: torch.Tensor | None = None, positions: torch.Tensor | None = None) -> torch.Tensor:
        if kv_cache is not None or attn_mask is not None or positions is not None:
            raise ValueError("an adapted causal LM decodes without a key/value cache or custom attention; "
                             "sample it with --cache none (the default) and without block diffusion")
        if tokens.shape[1] > self.cfg.context:
            raise ValueError(f"sequence of {tokens.shape[1]} tokens is longer than the model's context of {self.cfg.context}")
        h, _ = self.backbone.states(tokens, bidirectional=True)
        return self.align(h)

    def hidden_and_layers(self, tokens: torch.Tensor, layers: Sequence[int]) -> tuple[torch.Tensor, dict]:
        """Aligned final states (B, L, D) and the raw outputs of `layers` (1-based), for representation alignment."""
        h, states = self.backbone.states(tokens, bidirectional=True, layers=layers)
        return self.align(h), states

    def head(self, h: torch.Tensor) -> torch.Tensor:
        return self.backbone.logits(h)

    def forward(self, tokens: torch.Tensor, t: torch.Tensor | None = None, kv_cache=None, **attention) -> torch.Tensor:
        return self.head(self.hidden(tokens, t, kv_cache, **attention))


# ----------------------------------------------------------------------------------------------- loading
def base_kind(path: str | Path) -> BaseKind:
    """HF when the folder holds a transformers config.json, SUNFISH when it is a Sunfish run or checkpoint."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"the base model folder '{path}' does not exist; pass a local Hugging Face model "
                                "folder or a `sunfish train --objective ar` run")
    try:
        return BaseKind.HF if source_kind(path) is SourceKind.HF else BaseKind.SUNFISH
    except CheckpointError:
        raise ValueError(f"'{path}' is neither a Hugging Face model folder (no config.json) nor a Sunfish run; "
                         "pass the folder of a causal LM") from None


def load_hf_causal(folder: str | Path, cfg: AdaptConfig, *, weights: bool = True) -> nn.Module:
    """A transformers causal LM from a local folder (weights, or the config alone), in fp32 or 4-bit."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(str(folder))
        if not weights:
            return AutoModelForCausalLM.from_config(config)
        extra = ({"quantization_config": _qlora_config(cfg), "device_map": {"": torch.cuda.current_device()}}
                 if cfg.qlora else {"dtype": torch.float32})
        return AutoModelForCausalLM.from_pretrained(str(folder), **extra)
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"cannot load a causal LM from '{folder}' ({str(err).splitlines()[0]}); "
                         "pass a folder written by save_pretrained of a causal LM (Llama, Qwen, GPT-2, ...)") from None


def _qlora_config(cfg: AdaptConfig):
    """4-bit NF4 base weights (QLoRA, Dettmers et al. 2023); needs CUDA and bitsandbytes."""
    require_qlora(cfg)
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)


def init_mask_row(embedding: nn.Embedding, mask_id: int) -> None:
    """Set the mask token's input embedding to the mean of all other rows (a neutral starting point)."""
    with torch.no_grad():
        weight = embedding.weight
        others = torch.cat([weight[:mask_id], weight[mask_id + 1 :]])
        weight[mask_id] = others.float().mean(0).to(weight.dtype)


def model_config_of(hf_config, vocab_size: int, context: int) -> ModelConfig:
    """Sunfish's ModelConfig describing an HF model (sizes for display; context bounds the canvases)."""
    return ModelConfig(vocab_size=vocab_size, d_model=int(hf_config.hidden_size),
                       n_layers=int(hf_config.num_hidden_layers), n_heads=int(hf_config.num_attention_heads),
                       context=context)


def hf_context(hf_config) -> int:
    for name in ("max_position_embeddings", "n_positions"):
        if getattr(hf_config, name, None):
            return int(getattr(hf_config, name))
    return 2048


def prepare_hf_student(hf: nn.Module, tokenizer, new_mask: bool) -> None:
    """Make room for the mask token in the embeddings (and head) and initialise its row."""
    rows = hf.get_input_embeddings().weight.shape[0]
    if tokenizer.mask_id >= rows:
        hf.resize_token_embeddings(len(tokenizer.hf), mean_resizing=False)
    if new_mask:
        init_mask_row(hf.get_input_embeddings(), tokenizer.mask_id)


def flipped_sunfish_config(base: ModelConfig) -> ModelConfig:
    return dataclasses.replace(base, attention=AttentionKind.BIDIRECTIONAL)


# ------------------------------------------------------------------------------------------ entry points
def sunfish_base(path: str | Path) -> tuple[Transformer, int]:
    """A Sunfish causal run's network (eval mode) and its tokenizer's mask id."""
    from sunfish.tokenizer import Tokenizer

    ckpt = resolve_checkpoint(path)
    model, _ = load_network(ckpt)
    return model, Tokenizer.load(ckpt / "tokenizer.json").mask_id


def build_student(cfg: RunConfig, run_dir: Path | None, *, pretrained: bool) -> DiffusionLM:
    """The adapted model for `cfg`: from the base's weights (`pretrained`) or as an empty shell to load a
    checkpoint into (HF: the saved RUN_DIR/hf_base config)."""
    a = cfg.adapt
    if a.kind is BaseKind.SUNFISH:
        model = build_model(cfg.model)
        if pretrained:
            base, mask_id = sunfish_base(a.base)
            model.load_state_dict(base.state_dict())
            init_mask_row(model.embed, mask_id)
        backbone: nn.Module = SunfishBackbone(model)
        target = model
    else:
        from sunfish.adapt.tokenizer import HFTokenizer

        if pretrained:
            hf = load_hf_causal(a.base, a)
            tokenizer = HFTokenizer.load(a.base)
            prepare_hf_student(hf, tokenizer, tokenizer.added_mask)
        else:
            hf = load_hf_causal(run_dir / HF_BASE, a, weights=False)
        backbone = HFBackbone(hf)
        target = hf
    if a.lora:
        apply_lora(target, a)
    return DiffusionLM(backbone, cfg.model, a.layout)


def load_teacher(cfg: RunConfig) -> HFBackbone | SunfishBackbone:
    """The original causal model, frozen (the representation-alignment teacher)."""
    a = cfg.adapt
    if a.kind is BaseKind.SUNFISH:
        teacher: nn.Module = SunfishBackbone(sunfish_base(a.base)[0])
    else:
        teacher = HFBackbone(load_hf_causal(a.base, dataclasses.replace(a, qlora=False)))
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


def load_adapted(ckpt: Path, cfg: RunConfig, device: torch.device):
    """(network in eval mode, tokenizer) from a checkpoint of an adapted run, for sampling and evaluation."""
    from sunfish.adapt.tokenizer import HFTokenizer
    from sunfish.tokenizer import Tokenizer

    run_dir = run_dir_of(ckpt)
    if cfg.adapt.kind is BaseKind.HF:
        if not (run_dir / HF_BASE / "config.json").is_file():
            raise ValueError(f"'{run_dir}' lacks {HF_BASE}/config.json, which an adapted run keeps next to its "
                             "checkpoints; pass the whole run folder of `sunfish adapt`")
        tokenizer = HFTokenizer.load(run_dir / HF_BASE)
    else:
        tokenizer = Tokenizer.load(ckpt / "tokenizer.json")
    model = build_student(cfg, run_dir, pretrained=False)
    load_merged(model, cfg, ckpt, ema=False)  # a `sunfish sft --lora` run of an adapted model merges its adapters
    return model.to(device).eval(), tokenizer
