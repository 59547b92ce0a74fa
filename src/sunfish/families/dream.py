"""Dream (Ye et al. 2025; Dream-org/Dream-v0-Base-7B and -Instruct-7B): Qwen2.5's architecture (grouped-query
attention, biases on the query, key and value projections, untied head) made bidirectional, whose output at
position i - 1 predicts token i (the shift kept from the causal model it was adapted from). config.json:
model_type "Dream", Qwen2 names; tensors `model.embed_tokens`, `model.layers.N.self_attn.{q,k,v,o}_proj`,
`mlp.{gate,up,down}_proj`, `input_layernorm`, `post_attention_layernorm`, `model.norm`, `lm_head`.
"""

from __future__ import annotations

from sunfish.config import CommitRule, Layout, ModelConfig, Policy, SamplerConfig
from sunfish.families.base import Family, Part, config_special_ids, llama_recipe, refuse


def _detect(c: dict) -> bool:
    return str(c.get("model_type", "")).lower() == "dream" or "DreamModel" in (c.get("architectures") or [])


def _check(c: dict) -> None:
    refuse(c, "Dream", {"hidden_act": "silu", "rope_scaling": lambda v: v is None,
                        "use_sliding_window": lambda v: not v})


def _model_config(c: dict) -> ModelConfig:
    return ModelConfig(vocab_size=int(c["vocab_size"]), d_model=int(c["hidden_size"]),
                       n_layers=int(c["num_hidden_layers"]), n_heads=int(c["num_attention_heads"]),
                       n_kv_heads=int(c.get("num_key_value_heads") or c["num_attention_heads"]),
                       d_ff=int(c["intermediate_size"]), mlp="swiglu", context=int(c["max_position_embeddings"]),
                       rope_base=float(c.get("rope_theta", 10000.0)), qkv_bias=True,
                       norm_eps=float(c.get("rms_norm_eps", 1e-6)), tie_embeddings=bool(c.get("tie_word_embeddings")),
                       layout=Layout.SHIFTED)


def _recipe(cfg: ModelConfig, c: dict) -> dict[str, list[Part]]:
    b = "model.layers.{i}."
    names = {"q": b + "self_attn.q_proj", "k": b + "self_attn.k_proj", "v": b + "self_attn.v_proj",
             "o": b + "self_attn.o_proj", "gate": b + "mlp.gate_proj", "up": b + "mlp.up_proj",
             "down": b + "mlp.down_proj", "norm1": b + "input_layernorm", "norm2": b + "post_attention_layernorm"}
    ends = {"embed": "model.embed_tokens.weight", "norm": "model.norm.weight", "head": "lm_head.weight"}
    return llama_recipe(cfg, ends, names, bias=True)


# Dream's own decoding: the whole canvas as one block, the ancestral step's expected count per step, in order
# of negative entropy (docs/upstream_samplers.md). top_k 50: `diffusion_generate` builds its generation config
# from the model config, which under transformers 4.46 (Dream's pin) carries PretrainedConfig's top_k = 50, so
# unless a caller passes top_k, Dream keeps the 50 likeliest tokens and computes confidences and entropies on them.
DREAM = Family(name="dream", label="Dream", detect=_detect, check=_check, model_config=_model_config, recipe=_recipe,
               special_ids=config_special_ids,
               sampler=SamplerConfig(length=128, steps=128, rule=CommitRule.ANCESTRAL_TOPK, policy=Policy.ENTROPY,
                                     top_k=50))
