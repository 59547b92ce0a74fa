"""The :class:`Tokenizer` wrapper shared by the character-level and BPE tokenizers.

A Sunfish tokenizer is a thin wrapper around a Hugging Face ``tokenizers.Tokenizer``
and is stored as a standard ``tokenizer.json`` that ``tokenizers.Tokenizer.from_file``
and transformers' ``PreTrainedTokenizerFast`` can load unchanged.

Conventions (both kinds):

* ``SPECIAL_TOKENS`` get ids 0..3 in that order; the id properties look them up by string.
* ``encode`` never adds special tokens, and text that spells a special token (a literal
  ``"[MASK]"``) is encoded as ordinary text, never as the special id, so a corpus can't
  inject special tokens. Build special ids from ``pad_id``/``mask_id``/... instead.
* The char tokenizer has one more token, ``UNK_TOKEN`` (id 4), which the library needs to
  map characters outside the vocabulary; ``encode`` never returns it, it raises ValueError.
"""

from __future__ import annotations

import enum
import hashlib
import json
import os
from pathlib import Path
from typing import Iterable, Sequence

import tokenizers

from sunfish.fileio import write_text_atomic

SPECIAL_TOKENS = ("[PAD]", "[BOS]", "[EOS]", "[MASK]")
# Sunfish's chat template (sample/chat.py): a role token opens each turn, END closes it. Added by
# `with_chat_tokens` (what `sunfish sft` does to a pretrained run's tokenizer) after every existing id.
CHAT_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")
UNK_TOKEN = "[UNK]"
TOKENIZER_FILENAME = "tokenizer.json"
HF_CONFIG_FILENAME = "tokenizer_config.json"


class TokenizerKind(str, enum.Enum):
    """Which tokenization scheme a tokenizer uses."""

    CHAR = "char"
    BPE = "bpe"


# The kind is recognised from the model type stored in tokenizer.json.
_KIND_BY_MODEL = {"WordLevel": TokenizerKind.CHAR, "BPE": TokenizerKind.BPE}


def _tokenizer_file(path: str | os.PathLike) -> Path:
    """``path`` if it is a file or ends in ``.json``, else ``path/tokenizer.json`` (a directory)."""
    path = Path(path)
    if path.is_file() or (path.suffix == ".json" and not path.is_dir()):
        return path
    return path / TOKENIZER_FILENAME


class Tokenizer:
    """A character-level or byte-level BPE tokenizer with the Sunfish special tokens."""

    def __init__(self, backend: tokenizers.Tokenizer) -> None:
        """Wrap ``backend``; raise ValueError if it lacks the Sunfish conventions."""
        model_type = type(backend.model).__name__
        if model_type not in _KIND_BY_MODEL:
            raise ValueError(
                f"the tokenizer model type is {model_type!r}, but Sunfish only supports "
                "WordLevel (char) and BPE tokenizers; retrain it with sunfish.tokenizer"
            )
        missing = [t for t in SPECIAL_TOKENS if backend.token_to_id(t) is None]
        if missing:
            raise ValueError(
                f"the tokenizer lacks the special tokens {missing}; "
                f"retrain it with sunfish.tokenizer so it has all of {SPECIAL_TOKENS}"
            )
        self.kind = _KIND_BY_MODEL[model_type]
        self._unk_id = backend.token_to_id(UNK_TOKEN) if self.kind is TokenizerKind.CHAR else None
        if self.kind is TokenizerKind.CHAR and self._unk_id is None:
            raise ValueError(
                f"the character tokenizer lacks the {UNK_TOKEN} token it needs to detect "
                "unknown characters; retrain it with sunfish.tokenizer"
            )
        backend.encode_special_tokens = True  # literal "[MASK]" in text stays text
        self._tok = backend

    # ----------------------------------------------------------------- properties
    @property
    def backend(self) -> tokenizers.Tokenizer:
        """The wrapped ``tokenizers.Tokenizer``."""
        return self._tok

    @property
    def vocab_size(self) -> int:
        """Number of token ids, special tokens included (ids are ``0..vocab_size-1``)."""
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def pad_id(self) -> int:
        """Id of ``[PAD]``."""
        return self._tok.token_to_id("[PAD]")

    @property
    def bos_id(self) -> int:
        """Id of ``[BOS]``."""
        return self._tok.token_to_id("[BOS]")

    @property
    def eos_id(self) -> int:
        """Id of ``[EOS]``."""
        return self._tok.token_to_id("[EOS]")

    @property
    def unk_id(self) -> int | None:
        """[UNK] of the character tokenizer; None for byte-level BPE, which has no unknown input."""
        return self._unk_id

    @property
    def mask_id(self) -> int:
        """Id of ``[MASK]``."""
        return self._tok.token_to_id("[MASK]")

    @property
    def chat_ids(self) -> dict[str, int] | None:
        """{"system", "user", "assistant", "end"} -> id of the chat tokens, or None when they are not all here."""
        ids = [self._tok.token_to_id(t) for t in CHAT_TOKENS]
        if any(i is None for i in ids):
            return None
        return dict(zip(("system", "user", "assistant", "end"), ids))

    def with_chat_tokens(self) -> "Tokenizer":
        """This tokenizer with the chat tokens added as special tokens after every existing id (itself when it has
        them): every earlier id, and so a pretrained model's embeddings, stays valid."""
        if self.chat_ids is not None:
            return self
        backend = tokenizers.Tokenizer.from_str(self.to_json())
        backend.add_special_tokens([tokenizers.AddedToken(t, special=True, normalized=False) for t in CHAT_TOKENS])
        return Tokenizer(backend)

    # ------------------------------------------------------------ encode / decode
    def encode(self, text: str) -> list[int]:
        """Encode ``text`` to ids, without adding special tokens."""
        encoding = self._tok.encode(text, add_special_tokens=False)
        self._check_known(text, encoding)
        return encoding.ids

    def encode_batch(self, texts: Iterable[str]) -> list[list[int]]:
        """Encode many texts in parallel (the library's batch encoding)."""
        texts = list(texts)
        encodings = self._tok.encode_batch(texts, add_special_tokens=False)
        for text, encoding in zip(texts, encodings):
            self._check_known(text, encoding)
        return [encoding.ids for encoding in encodings]

    def _check_known(self, text: str, encoding: tokenizers.Encoding) -> None:
        """Raise ValueError naming the first character the char vocabulary lacks."""
        if self._unk_id is None or self._unk_id not in encoding.ids:
            return
        start, end = encoding.offsets[encoding.ids.index(self._unk_id)]
        raise ValueError(
            f"the text contains {text[start:end]!r} (at character {start}), which the "
            "character vocabulary of this tokenizer does not have; retrain the tokenizer "
            "on text that includes it or use a BPE tokenizer"
        )

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        """Turn ids back into text; special tokens are dropped, or shown by name if not ``skip_special``."""
        ids = [self._checked_id(i) for i in ids]
        return self._tok.decode(ids, skip_special_tokens=skip_special)

    def token_text(self, token_id: int) -> str:
        """The text one token stands for, for display (special tokens by name).

        A BPE token holding part of a multi-byte UTF-8 character shows as ``"\\ufffd"``.
        """
        return self._tok.decode([self._checked_id(token_id)], skip_special_tokens=False)

    def _checked_id(self, token_id: int) -> int:
        """Return ``token_id`` as an int, or raise ValueError if it is out of range."""
        token_id = int(token_id)
        if not 0 <= token_id < self.vocab_size:
            raise ValueError(
                f"token id {token_id} is outside this tokenizer's vocabulary "
                f"(ids 0..{self.vocab_size - 1}); check that the model and tokenizer match"
            )
        return token_id

    # ------------------------------------------------------------- persistence
    def to_json(self) -> str:
        """The tokenizer.json text (exactly what ``save`` writes)."""
        return self._tok.to_str(pretty=True)

    def sha256(self) -> str:
        """Hex SHA-256 of the serialized json; equals the hash of the saved file."""
        return hashlib.sha256(self.to_json().encode("utf-8")).hexdigest()

    def save(self, path: str | os.PathLike) -> None:
        """Write tokenizer.json atomically to ``path`` (a ``.json`` file, or a directory to put it in)."""
        write_text_atomic(_tokenizer_file(path), self.to_json())

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Write tokenizer.json and tokenizer_config.json into ``folder`` and return the folder.

        transformers then loads it with ``PreTrainedTokenizerFast.from_pretrained(folder)`` or
        ``AutoTokenizer.from_pretrained(folder)``, with the special tokens named and
        ``clean_up_tokenization_spaces`` off (its default would turn " ." into "." on decode and break
        the exact round trip).
        """
        folder = Path(folder)
        self.save(folder / TOKENIZER_FILENAME)
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "pad_token": "[PAD]",
            "bos_token": "[BOS]",
            "eos_token": "[EOS]",
            "mask_token": "[MASK]",
            "clean_up_tokenization_spaces": False,
            "add_bos_token": False,
            "add_eos_token": False,
        }
        write_text_atomic(folder / HF_CONFIG_FILENAME, json.dumps(config, indent=2) + "\n")
        return folder

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Tokenizer":
        """Load a tokenizer.json (or a directory containing one); bad files raise ValueError."""
        file = _tokenizer_file(path)
        if not file.is_file():
            raise ValueError(
                f"there is no tokenizer file at {file}; train and save a tokenizer first, "
                "or pass the path to an existing tokenizer.json or its directory"
            )
        try:
            backend = tokenizers.Tokenizer.from_file(str(file))
        except Exception as exc:  # the library raises a bare Exception
            raise ValueError(
                f"{file} is not a valid tokenizer.json ({exc}); "
                "delete it and train or copy the tokenizer again"
            ) from exc
        try:
            return cls(backend)
        except ValueError as exc:
            raise ValueError(f"{file}: {exc}") from None

    def __repr__(self) -> str:
        return f"Tokenizer(kind={self.kind.value!r}, vocab_size={self.vocab_size})"
