"""From documents or prepared shards to training batches.

Two sources of batches share one interface (`next_batch(B)`, `state()`, `restore(state)`):

- `RandomWindows` over an in-memory `TokenStream`: documents split into train and validation by
  document, tokenized, wrapped as [BOS] doc [EOS] and concatenated; a batch is B windows of L tokens at
  offsets drawn from a `torch.Generator`, whose state is the position.
- `ShardBatches` over a folder from `sunfish data prepare`: global sample i (counted over all ranks) is
  a window of L tokens chosen by the mixing schedule (`mix.block_assignment`: which stream) and a seeded
  permutation of that stream's windows per epoch (which window). The position is one integer, the
  number of samples consumed; rank r of W takes samples [p + rB, p + (r+1)B) of each global batch of
  W x B, so ranks never overlap, and together they see what one process with batch W x B would.

Either way a resumed run that restores the state sees exactly the batches the uninterrupted run would
have.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from sunfish.data import mix
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

    def batches(self, seq_len: int, seed: int, rank: int = 0, world: int = 1) -> "RandomWindows":
        return RandomWindows(self, seq_len, seed, rank=rank, world=world)


class RandomWindows:
    """Batches of random windows of an in-memory stream; the position is the generator's state.

    With W ranks every rank draws the same global batch of W x B windows and keeps its own B rows.
    """

    def __init__(self, stream: TokenStream, seq_len: int, seed: int, rank: int = 0, world: int = 1):
        self.stream, self.seq_len, self.rank, self.world = stream, seq_len, rank, world
        self.generator = torch.Generator().manual_seed(seed)

    def next_batch(self, batch_size: int) -> torch.Tensor:
        """(B, L) int64 token ids."""
        rows = self.stream.batch(batch_size * self.world, self.seq_len, self.generator)  # (W*B, L)
        return rows[self.rank * batch_size : (self.rank + 1) * batch_size]

    def state(self) -> torch.Tensor:
        return self.generator.get_state()

    def restore(self, state: Any) -> None:
        if not isinstance(state, torch.Tensor):
            raise DataError("the checkpoint's data position is not from an in-memory corpus; resume with the --data it was trained on")
        self.generator.set_state(state)


class ShardBatches:
    """Resumable, rank-aware, mixture-weighted batches of windows from prepared shards."""

    def __init__(self, split, seq_len: int, seed: int, rank: int = 0, world: int = 1):
        split.check_length(seq_len, split.name)
        self.split, self.seq_len, self.seed, self.rank, self.world = split, seq_len, seed, rank, world
        self.position = 0  # global samples consumed (all ranks)
        self._windows = np.array([s.windows(split.seq_len, seq_len) for s in split.streams])  # (S,)
        weights = np.array([s.weight if n else 0.0 for s, n in zip(split.streams, self._windows)])  # (S,)
        self._counts = mix.block_counts(weights)  # (S,) samples per block
        self._block = None  # (index, stream of each sample, rank of the sample within its stream in the block)
        self._perms: dict[tuple[int, int], np.ndarray] = {}  # (stream, epoch) -> window order

    def next_batch(self, batch_size: int) -> torch.Tensor:
        """(B, L) int64 token ids of this rank's share of the next global batch."""
        first = self.position + self.rank * batch_size
        rows = [self.sample(i) for i in range(first, first + batch_size)]
        self.position += batch_size * self.world
        return torch.from_numpy(np.stack(rows).astype(np.int64))

    def sample(self, index: int) -> np.ndarray:
        """(L,) tokens of global sample `index`."""
        block, at = divmod(index, mix.BLOCK)
        stream, rank_in_block = self._assignment(block)
        s = int(stream[at])
        local = block * int(self._counts[s]) + int(rank_in_block[at])  # samples of stream s before this one
        epoch, j = divmod(local, int(self._windows[s]))
        window = self._permutation(s, epoch)[j]
        return np.asarray(self.split.streams[s].window(window, self.split.seq_len, self.seq_len))

    def _assignment(self, block: int) -> tuple[np.ndarray, np.ndarray]:
        if self._block is None or self._block[0] != block:
            stream = mix.block_assignment(self._counts, self.seed, block)  # (BLOCK,)
            order = np.argsort(stream, kind="stable")
            ranks = np.empty(mix.BLOCK, np.int64)
            ranks[order] = np.concatenate([np.arange(c) for c in self._counts])  # k-th sample of its stream
            self._block = (block, stream, ranks)
        return self._block[1], self._block[2]

    def _permutation(self, stream: int, epoch: int) -> np.ndarray:
        key = (stream, epoch)
        if key not in self._perms:
            self._perms = {k: v for k, v in self._perms.items() if k[0] != stream}  # keep one epoch per stream
            rng = np.random.default_rng([self.seed, 0x7065726D, stream, epoch])  # 0x7065726D = "perm"
            self._perms[key] = rng.permutation(int(self._windows[stream]))
        return self._perms[key]

    def state(self) -> dict:
        return {"position": self.position, "seed": self.seed}

    def restore(self, state: Any) -> None:
        if not isinstance(state, dict) or "position" not in state:
            raise DataError("the checkpoint's data position is not from prepared shards; resume with the --data it was trained on")
        if int(state.get("seed", self.seed)) != self.seed:
            raise DataError(f"the checkpoint's data order was seeded with {state['seed']}, not {self.seed}; resume with the same seed")
        self.position = int(state["position"])
