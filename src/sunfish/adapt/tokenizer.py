"""A Hugging Face tokenizer behind the interface of `sunfish.tokenizer.Tokenizer`, plus a mask token.

The trainer, the sampler and the prompt builder use `vocab_size`, the special ids, `encode`,
`encode_batch`, `decode`, `token_text`, `to_json` and `save`; this class offers the same over a
`transformers` fast tokenizer, so the base model's vocabulary and chat template are kept unchanged.
Causal LMs rarely have a mask token: `add_mask_token` adds one (or reuses an existing one).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterable, Sequence

from sunfish.fileio import write_text_atomic

MASK_TOKEN = "<|mask|>"


class HFTokenizer:
    """A `transformers.PreTrainedTokenizerFast` with the special ids Sunfish needs."""

    def __init__(self, tok) -> None:
        if not getattr(tok, "is_fast", False):
            raise ValueError("the base model's tokenizer has no fast (tokenizer.json) version; Sunfish needs one")
        if tok.mask_token_id is None:
            raise ValueError("the tokenizer has no mask token; call add_mask_token first")
        self.hf = tok
        self.added_mask = False  # True when the mask token was added here (its embedding row is new)
        self.source_config: dict | None = None  # a public model's config.json (families/open.py: family_tokenizer)

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "HFTokenizer":
        from transformers import AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(str(folder))
        except (OSError, ValueError) as err:
            raise ValueError(f"cannot load a tokenizer from '{folder}' ({str(err).splitlines()[0]}); "
                             "the folder needs tokenizer.json or the files of a Hugging Face tokenizer") from None
        added = tok.mask_token_id is None
        loaded = cls(add_mask_token(tok))
        loaded.added_mask = added
        return loaded

    @property
    def vocab_size(self) -> int:
        return len(self.hf)

    @property
    def eos_id(self) -> int:
        if self.hf.eos_token_id is None:
            raise ValueError("the base model's tokenizer has no EOS token; set eos_token in its tokenizer_config.json")
        return int(self.hf.eos_token_id)

    @property
    def bos_id(self) -> int:
        """BOS, or EOS where the model has none (Qwen): the document separator either way."""
        return int(self.hf.bos_token_id) if self.hf.bos_token_id is not None else self.eos_id

    @property
    def pad_id(self) -> int:
        return int(self.hf.pad_token_id) if self.hf.pad_token_id is not None else self.eos_id

    @property
    def mask_id(self) -> int:
        return int(self.hf.mask_token_id)

    @property
    def chat_template(self) -> str | None:
        return self.hf.chat_template

    def encode(self, text: str) -> list[int]:
        return list(self.hf.encode(text, add_special_tokens=False))

    def encode_batch(self, texts: Iterable[str]) -> list[list[int]]:
        texts = list(texts)
        return [list(ids) for ids in self.hf(texts, add_special_tokens=False)["input_ids"]] if texts else []

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=skip_special)

    def token_text(self, token_id: int) -> str:
        return self.hf.decode([int(token_id)], skip_special_tokens=False)

    def to_json(self) -> str:
        return self.hf.backend_tokenizer.to_str(pretty=True)

    def sha256(self) -> str:
        return hashlib.sha256(self.to_json().encode("utf-8")).hexdigest()

    def save(self, path: str | os.PathLike) -> None:
        """tokenizer.json into `path` (a .json file or a folder), atomically, like Sunfish's tokenizer."""
        path = Path(path)
        write_text_atomic(path if path.suffix == ".json" else path / "tokenizer.json", self.to_json())

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        """All the Hugging Face tokenizer files (special tokens and chat template included)."""
        self.hf.save_pretrained(str(folder))

    def __repr__(self) -> str:
        return f"HFTokenizer({type(self.hf).__name__}, vocab_size={self.vocab_size}, mask_id={self.mask_id})"


def add_mask_token(tok):
    """Give `tok` a mask token: the one it has, else a new special `MASK_TOKEN`. Returns `tok`."""
    if tok.mask_token_id is None:
        if MASK_TOKEN in tok.get_vocab():
            tok.mask_token = MASK_TOKEN
        else:
            tok.add_special_tokens({"mask_token": MASK_TOKEN})
    return tok
