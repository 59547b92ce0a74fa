"""From documents to training batches.

Documents are split into train and validation by document (deterministic for a seed), tokenized,
wrapped as [BOS] doc [EOS] and concatenated into one token stream per split. A batch is B windows of L
tokens at positions drawn from a `torch.Generator`; the generator's state is the loader's position, so a
resumed run that restores it sees exactly the batches the uninterrupted run would have.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

import numpy as np
import torch

from sunfish.data.sources import DataError


@dataclass(frozen=True)
class Split:
    train: list[str]
    val: list[str]


def split_documents(docs: list[str], val_fraction: float, seed: int) -> Split:
    """Hold out about `val_fraction` of the documents (at least one) for validation."""
    if len(docs) < 2:
        raise DataError("the corpus has fewer than 2 documents; training needs at least one for validation")
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    n_val = min(len(docs) - 1, max(1, round(val_fraction * len(docs))))
    held = set(order[:n_val])
    return Split(
        train=[d for i, d in enumerate(docs) if i not in held],
        val=[d for i, d in enumerate(docs) if i in held],
    )


class TokenStream:
    """One split as a flat token array; draws random windows of `seq_len` tokens."""

    def __init__(self, ids: np.ndarray):
        self.ids = torch.from_numpy(ids.astype(np.int64))  # (N,)

    @classmethod
    def from_documents(cls, docs: list[str], encode_batch, bos_id: int, eos_id: int) -> "TokenStream":
        pieces = [np.asarray([bos_id, *ids, eos_id], dtype=np.int64) for ids in encode_batch(docs)]
        return cls(np.concatenate(pieces))

    def __len__(self) -> int:
        return int(self.ids.numel())

    def fingerprint(self) -> str:
        return hashlib.sha256(self.ids.numpy().tobytes()).hexdigest()[:16]

    def check_length(self, seq_len: int, name: str) -> None:
        if len(self) <= seq_len:
            raise DataError(
                f"the {name} split has only {len(self)} tokens, fewer than one sequence of {seq_len}; "
                "add more text or lower --train.seq_len"
            )

    def batch(self, batch_size: int, seq_len: int, generator: torch.Generator) -> torch.Tensor:
        """(B, L) windows starting at uniform random offsets."""
        starts = torch.randint(0, len(self) - seq_len, (batch_size,), generator=generator)
        index = starts[:, None] + torch.arange(seq_len)[None, :]  # (B, L)
        return self.ids[index]
