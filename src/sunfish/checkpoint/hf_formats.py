"""`sunfish export --format hf|llada`: a Sunfish model written as a Hugging Face folder.

* hf: Sunfish's own network as a `transformers` model (sunfish/hf.py: model_type "sunfish", registered with
  AutoConfig / AutoModel / AutoModelForMaskedLM on `import sunfish.hf`); config.json keeps the model, process and
  sampler sections; the weights keep their Sunfish names under `model.`. Any architecture Sunfish trains.
* llada: LLaDA's own layout (config.json with LLaDA's keys, tensors under `model.transformer.`), which LLaDA's
  released modeling code and Sunfish's loader (families/llada.py) both open. The tensor names and the row cuts
  come from the LLaDA family's import recipe run backwards (`recipe_tensors`), so export and import cannot
  drift apart. Only models inside LLaDA's architecture: anything else is refused in one sentence naming the
  feature (`LLADA_LIMITS`).

Both write the tokenizer files (`save_pretrained`) and export.json (where the weights came from).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from sunfish.config import AttentionKind, Layout, MLPKind, ProcessKind, RunConfig, TimeCond
from sunfish.families.base import Part, rope_flip
from sunfish.model.transformer import Attention, RMSNorm, Transformer, ff_width, kv_heads

PROVENANCE = "export.json"  # {"format", "exported_from", "step"} in an hf or llada export
# where LLaDA's modeling code lives, for `trust_remote_code=True` readers of an exported llada folder
LLADA_CODE = "GSAI-ML/LLaDA-8B-Base"


class ExportRefused(ValueError):
    """The model cannot be written in the chosen format; the message is one sentence naming why."""


@dataclass(frozen=True)
class Limit:
    """A feature a target architecture lacks: `used(cfg)` is True when the model needs it."""

    used: Callable[[RunConfig], bool]
    feature: str  # how the refusal names it


LLADA_LIMITS = (
    Limit(lambda c: c.process.kind is not ProcessKind.MASKED, "a process other than masked diffusion (process.kind)"),
    Limit(lambda c: c.process.block_size > 0, "block diffusion's block-causal attention (process.block_size)"),
    Limit(lambda c: c.model.time_cond is not TimeCond.NONE, "time conditioning (model.time_cond)"),
    Limit(lambda c: c.model.mlp is not MLPKind.SWIGLU, "the squared-ReLU MLP (model.mlp = relu2)"),
    Limit(lambda c: c.model.qk_norm, "QK-norm (model.qk_norm)"),
    Limit(lambda c: c.model.embed_norm, "an embedding norm (model.embed_norm)"),
    Limit(lambda c: c.model.layout is not Layout.SAME, "the shifted output layout (model.layout = shifted)"),
    Limit(lambda c: c.model.attention is not AttentionKind.BIDIRECTIONAL, "causal attention (model.attention)"),
)


def special_ids(tokenizer) -> dict[str, int]:
    """The mask, EOS, PAD and BOS ids as Hugging Face config keys (from the tokenizer, never literals)."""
    return {"mask_token_id": tokenizer.mask_id, "eos_token_id": tokenizer.eos_id, "pad_token_id": tokenizer.pad_id,
            "bos_token_id": tokenizer.bos_id}


def check_network(loaded, fmt: str) -> None:
    """Refuse what is not Sunfish's plain Transformer: networks around a frozen base, adapted causal LMs,
    processes with layers of their own."""
    if loaded.spec.frozen_base:
        raise ExportRefused(f"--format {fmt} writes token-in, logits-out networks, and {loaded.spec.a_label} model "
                            "is a network around a frozen base; export it with --format sunfish instead")
    if not isinstance(loaded.model, Transformer):
        raise ExportRefused(f"--format {fmt} writes Sunfish's own Transformer, and this is an adapted model; export it "
                            "with `sunfish adapt export RUN --out DIR` instead")
    if loaded.spec.layers is not None:
        raise ExportRefused(f"--format {fmt} writes token-in, logits-out networks, and the {loaded.spec.label} process "
                            "adds layers of its own around the Transformer; export it with --format sunfish instead")


def write_hf(loaded, folder: Path) -> None:
    """config.json + model.safetensors of `sunfish.hf.SunfishForMaskedLM`, and the tokenizer files."""
    from sunfish.hf import SunfishConfig, SunfishForMaskedLM

    check_network(loaded, "hf")
    config = SunfishConfig.of(loaded.cfg, **special_ids(loaded.tokenizer))
    with torch.device("meta"):  # the wrapper only; the loaded Transformer goes inside, no second copy
        model = SunfishForMaskedLM(config)
    model.model = loaded.model
    model.save_pretrained(str(folder))
    loaded.tokenizer.save_pretrained(folder)


# ---------------------------------------------------------------------------------------------- LLaDA

def llada_refusal(cfg: RunConfig) -> str | None:
    """The sentence refusing a model LLaDA's architecture does not cover, or None."""
    for limit in LLADA_LIMITS:
        if limit.used(cfg):
            return (f"this model uses {limit.feature}, which LLaDA's architecture does not have; export it with "
                    "--format hf (or sunfish) instead")
    return None


def llada_config(cfg: RunConfig, tokenizer) -> dict:
    """LLaDA's config.json for a model inside its architecture (configuration_llada.py's keys)."""
    m = cfg.model
    return {"architectures": ["LLaDAModelLM"], "model_type": "llada",
            "auto_map": {"AutoConfig": f"{LLADA_CODE}--configuration_llada.LLaDAConfig",
                         "AutoModel": f"{LLADA_CODE}--modeling_llada.LLaDAModelLM",
                         "AutoModelForCausalLM": f"{LLADA_CODE}--modeling_llada.LLaDAModelLM"},
            "block_type": "llama", "activation_type": "silu", "layer_norm_type": "rms", "layer_norm_with_affine": True,
            "rope": True, "rope_full_precision": True, "alibi": False, "flash_attention": False,
            "attention_layer_norm": False, "input_emb_norm": False, "scale_logits": False, "block_group_size": 1,
            "include_bias": False, "bias_for_layer_norm": False, "include_qkv_bias": m.qkv_bias,
            "attention_dropout": 0.0, "residual_dropout": 0.0, "embedding_dropout": 0.0,
            "d_model": m.d_model, "n_heads": m.n_heads, "n_kv_heads": kv_heads(m), "multi_query_attention": None,
            "n_layers": m.n_layers, "mlp_hidden_size": ff_width(m), "mlp_ratio": max(1, ff_width(m) // m.d_model),
            "vocab_size": m.vocab_size, "embedding_size": m.vocab_size, "weight_tying": m.tie_embeddings,
            "max_sequence_length": m.context, "rope_theta": m.rope_base,
            "rms_norm_eps": m.norm_eps or torch.finfo(torch.float32).eps,  # 0: F.rms_norm's own, float32's epsilon
            "init_std": m.init_std, "use_cache": False, "torch_dtype": "float32", **special_ids(tokenizer)}


def _parameter(model: Transformer, name: str) -> torch.Tensor:
    """A Sunfish parameter by name; a norm without a gain gives ones (the same map as no gain)."""
    owner, _, leaf = name.rpartition(".")
    module = model.get_submodule(owner)
    if isinstance(module, RMSNorm) and module.weight is None:
        return torch.ones(module.dim)
    return getattr(module, leaf).detach()


def _row_cuts(model: Transformer, name: str, value: torch.Tensor, parts: int) -> list[int]:
    """Rows of each checkpoint tensor fused in a Sunfish parameter: q, k, v (`Attention.split`) or the SwiGLU
    gate and value halves."""
    if parts == 1:
        return [value.shape[0]]
    module = model.get_submodule(name.rsplit(".", 2)[0])  # blocks.N.attn or blocks.N.mlp
    if isinstance(module, Attention):
        return list(module.split)
    return [value.shape[0] // parts] * parts


def recipe_tensors(model: Transformer, recipe: dict[str, list[Part]]) -> dict[str, torch.Tensor]:
    """A family's import recipe backwards: every Sunfish parameter cut into the checkpoint tensors it was made of,
    RoPE halves flipped back, ready for safetensors (contiguous, unshared)."""
    out = {}
    for name, parts in recipe.items():
        value = _parameter(model, name)
        for part, rows in zip(parts, value.split(_row_cuts(model, name, value, len(parts)), dim=0)):
            out[part.name] = (rope_flip(rows, part.rope_heads) if part.rope_heads else rows).contiguous().clone()
    return out


def write_llada(loaded, folder: Path) -> None:
    """config.json, model.safetensors under LLaDA's tensor names, and the tokenizer files."""
    from safetensors.torch import save_file

    from sunfish.families.llada import LLADA

    check_network(loaded, "llada")
    refusal = llada_refusal(loaded.cfg)
    if refusal:
        raise ExportRefused(refusal)
    config = llada_config(loaded.cfg, loaded.tokenizer)
    tensors = recipe_tensors(loaded.model, LLADA.recipe(loaded.cfg.model, config))
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    loaded.tokenizer.save_pretrained(folder)
