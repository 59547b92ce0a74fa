"""Public diffusion LMs in their Hugging Face layout, mapped onto Sunfish's own Transformer at load time.

A family (`Family`) recognises its `config.json`, refuses options Sunfish's model does not cover (one
sentence naming them), turns the config into a ModelConfig and says where each Sunfish weight comes from
in the checkpoint's tensors. `families/weights.py` streams the safetensors shards into a model built on
the meta device, one tensor at a time, in the inference dtype; `families/open.py` puts model, tokenizer and
config together. No code from the checkpoint folder is run (no trust_remote_code).

  llada.py   LLaDA-8B (Base/Instruct) and models in its layout: GSAI-ML's `LLaDAModelLM`
  dream.py   Dream-v0-7B and Qwen2-shaped models: `DreamModel` (grouped-query attention, q/k/v biases,
             logits shifted by one)
"""

from __future__ import annotations

from sunfish.families.base import Family, UnsupportedModel, family_of
from sunfish.families.dream import DREAM
from sunfish.families.llada import LLADA

FAMILIES: dict[str, Family] = {f.name: f for f in (LLADA, DREAM)}

__all__ = ["FAMILIES", "Family", "UnsupportedModel", "family_of"]
