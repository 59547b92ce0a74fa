"""Opening a public diffusion LM from its Hugging Face folder: config.json -> family -> Sunfish RunConfig, the
weights streamed into Sunfish's Transformer, and the folder's own tokenizer with the special ids the config
names (mask, EOS, PAD, BOS; never literals)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from sunfish.config import ProcessConfig, RunConfig
from sunfish.families.base import Family, UnsupportedModel, family_of
from sunfish.families.weights import load_family_weights

HF_CONFIG = "config.json"


def read_hf_config(folder: Path, name: str = HF_CONFIG) -> dict:
    try:
        config = json.loads((folder / name).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise UnsupportedModel(f"the {name} in '{folder}' cannot be read ({type(err).__name__}); it should be the "
                               "JSON config of a Hugging Face checkpoint") from None
    if not isinstance(config, dict):
        raise UnsupportedModel(f"the {name} in '{folder}' is not a JSON object; it should be a model config")
    return config


def run_config_of(family: Family, config: dict) -> RunConfig:
    """The RunConfig Sunfish runs a family checkpoint with: its model, masked diffusion with the family's
    schedule, and the family's sampler defaults."""
    return RunConfig(model=family.model_config(config), process=ProcessConfig(kind="masked", eps=family.eps),
                     sampler=family.sampler, preset=f"hf:{family.name}")


def _hf_tokenizer(folder: Path):
    """The folder's tokenizer without running code from it: AutoTokenizer when its class is transformers' own,
    else its tokenizer.json (custom classes such as Dream's wrap a standard byte-level BPE)."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast
    from transformers.utils import logging

    logging.set_verbosity_error()  # AutoTokenizer reads config.json and warns that it names an unknown model type
    try:
        with warnings.catch_warnings():  # ... and that Dream's config still spells rope_scaling the old way
            warnings.simplefilter("ignore", FutureWarning)
            return AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
    except (OSError, ValueError, KeyError) as err:
        if not (folder / "tokenizer.json").is_file():
            raise UnsupportedModel(f"cannot load the tokenizer in '{folder}' ({str(err).splitlines()[0]}); the folder "
                                   "needs tokenizer.json or a tokenizer class transformers knows") from None
    extra = {}
    if (folder / "tokenizer_config.json").is_file():
        tc = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
        extra = {k: tc[k] for k in ("bos_token", "eos_token", "pad_token", "unk_token", "mask_token", "chat_template")
                 if isinstance(tc.get(k), str)}
    return PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"), **extra)


def family_tokenizer(folder: Path, family: Family, config: dict):
    """An HFTokenizer whose mask, EOS, PAD and BOS ids are the ones the model's config names."""
    from sunfish.adapt.tokenizer import HFTokenizer

    tok = _hf_tokenizer(folder)
    ids = family.special_ids(config)
    if "mask" not in ids:
        raise UnsupportedModel(f"the config.json in '{folder}' names no mask_token_id; a diffusion LM needs one")
    for role, token_id in ids.items():
        if not 0 <= token_id < len(tok):
            raise UnsupportedModel(f"the config.json in '{folder}' names {role} id {token_id}, outside the tokenizer's "
                                   f"{len(tok)} tokens; the tokenizer files belong to another model")
    for role in ("mask", "eos", "pad", "bos"):
        if role in ids and getattr(tok, f"{role}_token_id") != ids[role]:
            setattr(tok, f"{role}_token", tok.convert_ids_to_tokens(ids[role]))
    return HFTokenizer(tok)


def open_family(folder: Path, device: torch.device, dtype: torch.dtype, config_name: str = HF_CONFIG):
    """(network in eval mode, tokenizer, RunConfig) of a LLaDA- or Dream-family folder."""
    config = read_hf_config(folder, config_name)
    family = family_of(config, str(folder))
    cfg = run_config_of(family, config)
    tokenizer = family_tokenizer(folder, family, config)
    model = load_family_weights(folder, cfg.model, family.recipe(cfg.model, config), device, dtype)
    return model, tokenizer, cfg
