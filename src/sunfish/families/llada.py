"""LLaDA (Nie et al. 2025; GSAI-ML/LLaDA-8B-Base and -Instruct): a Llama-shaped bidirectional Transformer whose
output at position i predicts token i. config.json: model_type "llada", OLMo-style names (`d_model`, `n_layers`,
`mlp_hidden_size`, `rope_theta`, `rms_norm_eps`, `weight_tying`, `mask_token_id`); tensors under
`model.transformer.` (`wte`, `blocks.N.{q,k,v}_proj`, `attn_out`, `ff_proj` (gate), `up_proj`, `ff_out`
(down), `attn_norm`, `ff_norm`, `ln_f`, `ff_out` (head, when untied)).
"""

from __future__ import annotations

from sunfish.config import Layout, ModelConfig, SamplerConfig
from sunfish.families.base import Family, Part, config_special_ids, llama_recipe, refuse


def _detect(c: dict) -> bool:
    return c.get("model_type") == "llada" or "LLaDAModelLM" in (c.get("architectures") or [])


def _check(c: dict) -> None:
    refuse(c, "LLaDA", {"block_type": "llama", "layer_norm_type": lambda v: v in ("rms", None), "rope": True,
                         "alibi": lambda v: not v, "attention_layer_norm": lambda v: not v,
                         "scale_logits": lambda v: not v, "input_emb_norm": lambda v: not v,
                         "include_bias": lambda v: not v, "block_group_size": lambda v: v in (1, None),
                         "activation_type": "silu", "layer_norm_with_affine": lambda v: v in (True, None)})


def _kv_heads(c: dict) -> int:
    if c.get("n_kv_heads") is not None:
        return int(c["n_kv_heads"])
    return 1 if c.get("multi_query_attention") else int(c["n_heads"])


def _model_config(c: dict) -> ModelConfig:
    d = int(c["d_model"])
    return ModelConfig(vocab_size=int(c.get("embedding_size") or c["vocab_size"]), d_model=d, n_layers=int(c["n_layers"]),
                       n_heads=int(c["n_heads"]), n_kv_heads=_kv_heads(c),
                       d_ff=int(c.get("mlp_hidden_size") or c.get("mlp_ratio", 4) * d), mlp="swiglu",
                       context=int(c["max_sequence_length"]), rope_base=float(c.get("rope_theta", 10000.0)),
                       qkv_bias=bool(c.get("include_qkv_bias")), norm_eps=float(c.get("rms_norm_eps", 1e-5)),
                       tie_embeddings=bool(c.get("weight_tying")), layout=Layout.SAME)


def _recipe(cfg: ModelConfig, c: dict) -> dict[str, list[Part]]:
    t = "model.transformer."
    b = t + "blocks.{i}."
    names = {"q": b + "q_proj", "k": b + "k_proj", "v": b + "v_proj", "o": b + "attn_out", "gate": b + "ff_proj",
             "up": b + "up_proj", "down": b + "ff_out", "norm1": b + "attn_norm", "norm2": b + "ff_norm"}
    ends = {"embed": t + "wte.weight", "norm": t + "ln_f.weight", "head": t + "ff_out.weight"}
    return llama_recipe(cfg, ends, names, cfg.qkv_bias)


LLADA = Family(name="llada", label="LLaDA", detect=_detect, check=_check, model_config=_model_config, recipe=_recipe,
               special_ids=config_special_ids,
               sampler=SamplerConfig(length=128, steps=128, block_length=32))
