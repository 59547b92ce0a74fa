"""Sunfish's own network as a `transformers` model: `import sunfish.hf` registers model_type "sunfish" with
`AutoConfig`, `AutoModel` and `AutoModelForMaskedLM`, so a folder written by `sunfish export --format hf` opens with

    import sunfish.hf
    from transformers import AutoModel
    model = AutoModel.from_pretrained(folder)          # logits = model(input_ids).logits  (B, L, V)

`SunfishConfig` keeps the Sunfish config slices inference needs (model, process, sampler) under the key
`sunfish`, plus the special token ids; `SunfishForMaskedLM` holds Sunfish's `Transformer` under `model`, so the
weights keep their Sunfish names behind the prefix `model.` (`model.blocks.0.attn.qkv.weight`). Attention stays
bidirectional (or causal, for autoregressive runs) exactly as the run was trained; an `attention_mask` (B, L)
only hides padded keys. No code is copied into the folder: the reader needs Sunfish installed.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import MaskedLMOutput

from sunfish.config import AttentionKind, RunConfig, config_from_dict
from sunfish.model.conditioning import AdaLNModulation
from sunfish.model.transformer import RMSNorm, Transformer, rope_tables

MODEL_TYPE = "sunfish"
SECTIONS = ("model", "process", "sampler")  # the RunConfig slices an exported folder keeps
DERIVED = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "max_position_embeddings",
           "initializer_range", "tie_word_embeddings")  # the usual config keys, copied from `sunfish`


class SunfishConfig(PretrainedConfig):
    """`sunfish`: {"model": ModelConfig fields, "process": ..., "sampler": ...} as Sunfish saves them."""

    model_type = MODEL_TYPE

    def __init__(self, sunfish: dict | None = None, **kwargs):
        self.sunfish = {k: dict(v) for k, v in (sunfish or {}).items() if k in SECTIONS}
        model = self.run_config().model
        for key in DERIVED:  # written for tools that read them; `sunfish` is what the model is built from
            kwargs.pop(key, None)
        kwargs["tie_word_embeddings"] = model.tie_embeddings
        self.vocab_size, self.hidden_size = model.vocab_size, model.d_model
        self.num_hidden_layers, self.num_attention_heads = model.n_layers, model.n_heads
        self.max_position_embeddings, self.initializer_range = model.context, model.init_std
        super().__init__(**kwargs)

    @classmethod
    def of(cls, cfg: RunConfig, **special_ids: int) -> "SunfishConfig":
        """The config of a Sunfish run; `special_ids` such as mask_token_id=..., eos_token_id=..."""
        tree = cfg.to_dict()
        return cls(sunfish={k: tree[k] for k in SECTIONS}, architectures=["SunfishForMaskedLM"], **special_ids)

    def run_config(self) -> RunConfig:
        return config_from_dict(self.sunfish)


class SunfishForMaskedLM(PreTrainedModel):
    """Sunfish's Transformer behind the transformers interface: input_ids (B, L) [+ t (B,)] -> logits (B, L, V)."""

    config_class = SunfishConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _no_split_modules = ["Block"]
    _tied_weights_keys = {"model.lm_head.weight": "model.embed.weight"}

    def __init__(self, config: SunfishConfig):
        super().__init__(config)
        self.model = Transformer(config.run_config().model)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        """Sunfish's initialisation for weights a checkpoint lacks, and the RoPE tables (never saved). Children are
        visited before their parent (Module.apply's order), so adaLN's zeros replace its projection's normal init."""
        if isinstance(module, Transformer):
            cos, sin = rope_tables(module.cfg.context, module.cfg.d_model // module.cfg.n_heads, module.cfg.rope_base)
            with torch.no_grad():
                module.rope_cos.copy_(cos)
                module.rope_sin.copy_(sin)
        elif isinstance(module, AdaLNModulation):
            nn.init.zeros_(module.proj.weight)
            nn.init.zeros_(module.proj.bias)
        elif isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, RMSNorm) and module.weight is not None:
            nn.init.ones_(module.weight)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.model.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.model.lm_head = value

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, inputs_embeds: torch.Tensor | None = None,
                t: torch.Tensor | None = None, return_dict: bool | None = None, **kwargs) -> MaskedLMOutput:
        """Logits (B, L, V). attention_mask (B, L): 1 = a token, 0 = padding that no position attends to; position_ids
        (B, L) or (L,): RoPE positions (default 0..L-1); t (B,): diffusion time, for time-conditioned models. Other
        keyword arguments of the transformers interface (token_type_ids, ...) are ignored."""
        if kwargs.get("labels") is not None:
            raise ValueError("SunfishForMaskedLM computes logits only: a diffusion loss needs the noise level and the "
                             "mask; train with `sunfish train` or compute the loss from the logits")
        mask = None
        if attention_mask is not None and not bool(attention_mask.all()):
            mask = padding_mask(attention_mask, causal=self.model.cfg.attention is AttentionKind.CAUSAL)
        logits = self.model(input_ids, t, attn_mask=mask, positions=position_ids, embeds=inputs_embeds)
        if return_dict is False:
            return (logits,)
        return MaskedLMOutput(logits=logits)


def padding_mask(attention_mask: torch.Tensor, causal: bool) -> torch.Tensor:
    """(B, 1, L, L) bool, True = may attend, from a (B, L) padding mask: padded keys hidden from every query, each
    query sees itself (a padded query gets finite logits, never NaN), causal models also no later key."""
    L = attention_mask.shape[-1]
    mask = attention_mask.bool()[:, None, None, :].expand(-1, 1, L, -1)  # (B, 1, L, L)
    if causal:
        mask = mask & torch.ones(L, L, dtype=torch.bool, device=mask.device).tril()
    return mask | torch.eye(L, dtype=torch.bool, device=mask.device)


AutoConfig.register(MODEL_TYPE, SunfishConfig)
AutoModel.register(SunfishConfig, SunfishForMaskedLM)
AutoModelForMaskedLM.register(SunfishConfig, SunfishForMaskedLM)
