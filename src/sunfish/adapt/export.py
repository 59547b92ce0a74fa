"""A Sunfish `Transformer` as a Hugging Face Llama (or Qwen3, with QK-norm) model, for adapted Sunfish runs.

Sunfish blocks are Llama blocks with fused projections: `qkv` splits into q/k/v_proj, the SwiGLU `up`
into gate_proj (first half) and up_proj (second half). Two details make the maps exact:

* RoPE: Sunfish rotates channel pairs (i, i + d/2) by -theta, transformers' `rotate_half` by +theta. Negating
  the second half of every head's query and key rows (`families.base.rope_flip`, the one flip that import and
  export share) turns one into the other: both halves of q and k change sign together, so every q . k product
  is unchanged.
* QK-norm: Sunfish normalises after RoPE without a gain, Qwen3 before RoPE with a gain of ones; a rotation
  keeps the norm of each pair, so the order does not matter.

RMSNorm epsilon becomes float32's machine epsilon, the value F.rms_norm uses when given none.
"""

from __future__ import annotations

import torch

from sunfish.config import MLPKind, TimeCond
from sunfish.families.base import rope_flip
from sunfish.model.transformer import Transformer, ff_width, kv_heads


def _check_exportable(model: Transformer) -> None:
    cfg = model.cfg
    if cfg.mlp is not MLPKind.SWIGLU or cfg.time_cond is not TimeCond.NONE or cfg.embed_norm:
        raise ValueError("only Sunfish models with SwiGLU MLPs, no time conditioning and no embedding norm map onto a "
                         "Hugging Face architecture; sample this run with `sunfish sample RUN_DIR` instead")


def hf_config_of(model: Transformer):
    from transformers import LlamaConfig, Qwen3Config

    cfg = model.cfg
    common = dict(vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=ff_width(cfg),
                  num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads, num_key_value_heads=kv_heads(cfg),
                  max_position_embeddings=cfg.context, rms_norm_eps=cfg.norm_eps or torch.finfo(torch.float32).eps,
                  tie_word_embeddings=cfg.tie_embeddings, hidden_act="silu", attention_bias=cfg.qkv_bias)
    rope = {"rope_type": "default", "rope_theta": cfg.rope_base}
    if cfg.qk_norm:
        return Qwen3Config(head_dim=cfg.d_model // cfg.n_heads, rope_parameters=rope, **common)
    return LlamaConfig(rope_parameters=rope, mlp_bias=False, **common)


def _attention(attn, prefix: str, cfg) -> dict[str, torch.Tensor]:
    """q/k/v projections (and biases; o_proj gets a zero bias, as Llama's attention_bias has one) in HF layout."""
    heads = {"q": cfg.n_heads, "k": kv_heads(cfg), "v": 0}
    out = {}
    for name in ("weight", "bias"):
        tensor = getattr(attn.qkv, name)
        if tensor is None:
            continue
        for proj, part in zip("qkv", tensor.split(attn.split, dim=0)):
            out[f"{prefix}{proj}_proj.{name}"] = rope_flip(part, heads[proj]) if heads[proj] else part
    if attn.qkv.bias is not None:
        out[f"{prefix}o_proj.bias"] = torch.zeros(cfg.d_model)
    return out


def hf_state_dict(model: Transformer) -> dict[str, torch.Tensor]:
    """Weights of `model` under Llama/Qwen3 parameter names."""
    cfg = model.cfg
    D, H = cfg.d_model, ff_width(cfg)
    ones = torch.ones(D)
    out = {"model.embed_tokens.weight": model.embed.weight, "lm_head.weight": model.lm_head.weight,
           "model.norm.weight": model.final_norm.weight if model.final_norm.weight is not None else ones}
    for i, block in enumerate(model.blocks):
        p = f"model.layers.{i}."
        out |= _attention(block.attn, p + "self_attn.", cfg)
        gate, up = block.mlp.up.weight.split(H, dim=0)
        out |= {p + "self_attn.o_proj.weight": block.attn.out.weight,
                p + "mlp.gate_proj.weight": gate, p + "mlp.up_proj.weight": up,
                p + "mlp.down_proj.weight": block.mlp.down.weight,
                p + "input_layernorm.weight": block.norm1.weight if block.norm1.weight is not None else ones,
                p + "post_attention_layernorm.weight": block.norm2.weight if block.norm2.weight is not None else ones}
        if cfg.qk_norm:
            out |= {p + "self_attn.q_norm.weight": torch.ones(D // cfg.n_heads),
                    p + "self_attn.k_norm.weight": torch.ones(D // cfg.n_heads)}
    return {k: v.detach().clone().contiguous() for k, v in out.items()}


def sunfish_to_hf(model: Transformer):
    """A transformers causal LM computing what `model` computes (given the same attention mask)."""
    from transformers import AutoModelForCausalLM

    _check_exportable(model)
    hf = AutoModelForCausalLM.from_config(hf_config_of(model))
    weights = hf_state_dict(model)
    if model.cfg.tie_embeddings:
        weights.pop("lm_head.weight")
    missing, unexpected = hf.load_state_dict(weights, strict=False)
    if unexpected or [m for m in missing if m != "lm_head.weight"]:
        raise ValueError(f"the Hugging Face model does not match the Sunfish weights (missing {missing}, unexpected {unexpected})")
    return hf.eval()
