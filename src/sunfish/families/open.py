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


def _custom_class(folder: Path) -> bool:
    """True when the folder's tokenizer_config.json names a tokenizer class of its own code (auto_map, or a class
    transformers does not have): AutoTokenizer would ask to run that code, so it is never called for it."""
    import transformers

    path = folder / "tokenizer_config.json"
    config = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    name = config.get("tokenizer_class")
    return "auto_map" in config or (isinstance(name, str) and not hasattr(transformers, name))


def _hf_tokenizer(folder: Path):
    """The folder's tokenizer without running code from it: AutoTokenizer when its class is transformers' own; for
    a class of its own (Dream's DreamTokenizer, a Qwen2 byte-level BPE), its tokenizer.json, or its vocab.json and
    merges.txt read by transformers' Qwen2Tokenizer (the same ids as Dream's class: tests/test_public_cli.py)."""
    from transformers import PreTrainedTokenizerFast, Qwen2Tokenizer
    from transformers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()  # transformers warns that config.json names a model type it does not know
    try:
        with warnings.catch_warnings():  # ... and that Dream's config still spells rope_scaling the old way
            warnings.simplefilter("ignore", FutureWarning)
            if not _custom_class(folder):
                from transformers import AutoTokenizer

                try:
                    return AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
                except (OSError, ValueError, KeyError) as err:
                    reason = str(err).splitlines()[0]
            else:
                reason = "its tokenizer class is the folder's own code"
            if (folder / "tokenizer.json").is_file():
                return PreTrainedTokenizerFast.from_pretrained(str(folder))
            if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
                return Qwen2Tokenizer.from_pretrained(str(folder))
    finally:
        logging.set_verbosity(level)
    raise UnsupportedModel(f"cannot load the tokenizer in '{folder}' ({reason}); the folder needs tokenizer.json, or "
                           "vocab.json and merges.txt, or a tokenizer class transformers knows")


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
    tokenizer = HFTokenizer(tok)
    tokenizer.source_config = config  # written back beside every checkpoint of this model (checkpoint/files.py)
    return tokenizer


def open_family(folder: Path, device: torch.device, dtype: torch.dtype, config_name: str = HF_CONFIG):
    """(network in eval mode, tokenizer, RunConfig) of a LLaDA- or Dream-family folder."""
    config = read_hf_config(folder, config_name)
    family = family_of(config, str(folder))
    cfg = run_config_of(family, config)
    tokenizer = family_tokenizer(folder, family, config)
    model = load_family_weights(folder, cfg.model, family.recipe(cfg.model, config), device, dtype)
    return model, tokenizer, cfg
