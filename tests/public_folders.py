"""Hugging Face folders of tiny LLaDA- and Dream-shaped models written without the upstream code (random
weights under the upstream tensor names and config keys, a byte-level tokenizer with a chat template), for
tests of loading, converting, chat and precision. The upstream code itself checks the mapping in
tests/test_public_models.py."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

VOCAB, MASK, PAD, BOS, EOS, EOT = 300, 299, 0, 1, 2, 3
CHAT_TEMPLATE = ("{% for m in messages %}<bos>{{ m['role'] }}: {{ m['content'] }}<eot>{% endfor %}"
                 "{% if add_generation_prompt %}<bos>assistant: {% endif %}")


def write_tokenizer(folder: Path) -> None:
    """A byte-level BPE without merges: <pad> <bos> <eos> <eot> at 0..3, the 256 byte symbols, fillers, <mask> 299."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["<pad>", "<bos>", "<eos>", "<eot>"])}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    vocab |= {f"<extra_{i}>": i for i in range(len(vocab), MASK)} | {"<mask>": MASK}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    tok.add_special_tokens(["<pad>", "<bos>", "<eos>", "<eot>", "<mask>"])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   mask_token="<mask>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(folder))


def _random(shape, g) -> torch.Tensor:
    return torch.randn(*shape, generator=g) * 0.1


def write_llada(folder: Path, *, d=64, heads=4, kv=4, layers=2, ff=128, tied=False, seed=0, **extra) -> Path:
    """A LLaDA folder: config.json with LLaDA's keys, weights under `model.transformer.`, the tokenizer."""
    folder.mkdir(parents=True, exist_ok=True)
    g, hd = torch.Generator().manual_seed(seed), d // heads
    t = "model.transformer."
    w = {t + "wte.weight": _random((VOCAB, d), g), t + "ln_f.weight": 1 + _random((d,), g)}
    if not tied:
        w[t + "ff_out.weight"] = _random((VOCAB, d), g)
    for i in range(layers):
        b = f"{t}blocks.{i}."
        w |= {b + "q_proj.weight": _random((d, d), g), b + "k_proj.weight": _random((kv * hd, d), g),
              b + "v_proj.weight": _random((kv * hd, d), g), b + "attn_out.weight": _random((d, d), g),
              b + "ff_proj.weight": _random((ff, d), g), b + "up_proj.weight": _random((ff, d), g),
              b + "ff_out.weight": _random((d, ff), g), b + "attn_norm.weight": 1 + _random((d,), g),
              b + "ff_norm.weight": 1 + _random((d,), g)}
    save_file(w, str(folder / "model.safetensors"))
    config = {"model_type": "llada", "architectures": ["LLaDAModelLM"], "d_model": d, "n_heads": heads, "n_kv_heads": kv,
              "n_layers": layers, "mlp_hidden_size": ff, "vocab_size": VOCAB, "embedding_size": VOCAB,
              "max_sequence_length": 128, "rope": True, "rope_theta": 500000.0, "rms_norm_eps": 1e-5,
              "block_type": "llama", "layer_norm_type": "rms", "activation_type": "silu", "weight_tying": tied,
              "include_bias": False, "include_qkv_bias": False, "mask_token_id": MASK, "eos_token_id": EOS,
              "pad_token_id": PAD, **extra}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    write_tokenizer(folder)
    return folder


def write_dream(folder: Path, *, d=64, heads=4, kv=2, layers=2, ff=128, seed=1) -> Path:
    """A Dream folder: Qwen2-style names with q/k/v biases and grouped-query attention, the tokenizer."""
    folder.mkdir(parents=True, exist_ok=True)
    g, hd = torch.Generator().manual_seed(seed), d // heads
    w = {"model.embed_tokens.weight": _random((VOCAB, d), g), "model.norm.weight": 1 + _random((d,), g),
         "lm_head.weight": _random((VOCAB, d), g)}
    for i in range(layers):
        b = f"model.layers.{i}."
        for name, rows in (("q", d), ("k", kv * hd), ("v", kv * hd)):
            w[f"{b}self_attn.{name}_proj.weight"] = _random((rows, d), g)
            w[f"{b}self_attn.{name}_proj.bias"] = _random((rows,), g)
        w |= {b + "self_attn.o_proj.weight": _random((d, d), g), b + "mlp.gate_proj.weight": _random((ff, d), g),
              b + "mlp.up_proj.weight": _random((ff, d), g), b + "mlp.down_proj.weight": _random((d, ff), g),
              b + "input_layernorm.weight": 1 + _random((d,), g), b + "post_attention_layernorm.weight": 1 + _random((d,), g)}
    save_file(w, str(folder / "model.safetensors"))
    config = {"model_type": "Dream", "architectures": ["DreamModel"], "hidden_size": d, "num_attention_heads": heads,
              "num_key_value_heads": kv, "num_hidden_layers": layers, "intermediate_size": ff, "vocab_size": VOCAB,
              "max_position_embeddings": 128, "rope_theta": 10000.0, "rms_norm_eps": 1e-6, "hidden_act": "silu",
              "tie_word_embeddings": False, "rope_scaling": None, "use_sliding_window": False,
              "mask_token_id": MASK, "pad_token_id": PAD, "bos_token_id": BOS, "eos_token_id": EOS}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    write_tokenizer(folder)
    return folder


def write_dream_tokenizer(folder: Path) -> None:
    """Dream's own tokenizer files: vocab.json + merges.txt of a byte-level BPE (a few merges), specials in
    tokenizer_config.json's added_tokens_decoder, and the tokenizer class of the folder's own code
    (DreamTokenizer through auto_map), as the released Dream folders have them (no tokenizer.json)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {ch: i for i, ch in enumerate(bytes_to_unicode().values())}
    merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("Ġ", "a")]
    vocab |= {a + b: len(vocab) + i for i, (a, b) in enumerate(merges)}
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|mask|>"]
    added = {str(len(vocab) + i): {"content": t, "lstrip": False, "rstrip": False, "normalized": False,
                                   "single_word": False, "special": True} for i, t in enumerate(specials)}
    config = {"tokenizer_class": "DreamTokenizer", "auto_map": {"AutoTokenizer": ["tokenization_dream.DreamTokenizer", None]},
              "added_tokens_decoder": added, "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
              "mask_token": "<|mask|>", "bos_token": None, "errors": "replace", "clean_up_tokenization_spaces": False,
              "chat_template": "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                               "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=1), encoding="utf-8")
