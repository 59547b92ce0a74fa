"""Helpers (no tests): tiny random-weight causal LMs saved like Hugging Face checkpoints, for tests/test_adapt*.py."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from sunfish.data.synth import generate_stories

CHAT_TEMPLATE = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"


def stories(n: int = 120) -> list[str]:
    return generate_stories("en", n, 0)


def write_docs(folder: Path, n: int = 120) -> Path:
    path = folder / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in stories(n)), encoding="utf-8")
    return path


def make_tokenizer(folder: Path):
    """A byte-level BPE of ~300 tokens with only an end-of-text special (no mask token), like GPT-2's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(stories(), trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    hf.chat_template = CHAT_TEMPLATE
    hf.save_pretrained(str(folder))
    return hf


def hf_config(kind: str, vocab: int):
    from transformers import GPT2Config, LlamaConfig, Qwen3Config

    if kind == "gpt2":
        return GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=4, n_positions=128, bos_token_id=0, eos_token_id=0)
    shared = dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=128, bos_token_id=0, eos_token_id=0)
    if kind == "qwen3":
        return Qwen3Config(head_dim=8, **shared)
    return LlamaConfig(**shared)


def make_hf_model(folder: Path, kind: str = "llama", seed: int = 0) -> Path:
    """FOLDER with config.json, model.safetensors and tokenizer files of a random tiny causal LM."""
    from transformers import AutoModelForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    tok = make_tokenizer(folder)
    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(hf_config(kind, len(tok))).save_pretrained(str(folder))
    return folder
