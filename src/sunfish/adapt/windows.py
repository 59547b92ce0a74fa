"""Fixed training windows: the token stream cut into non-overlapping sequences, visited in epochs.

Adaptation reuses per-sequence artefacts (cached teacher states, decoding trajectories), so it trains on
fixed windows rather than random offsets: window j is tokens [j L, (j + 1) L), and each epoch visits all
windows in a seeded permutation. The position (sequences consumed over all ranks) is the resumable state;
rank r of W takes rows [p + r B, p + (r + 1) B) of each global batch, like the shard loader.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from sunfish.data.loader import TokenStream
from sunfish.config import RunConfig
from sunfish.data.sources import DataError


class FixedWindowStream:
    """A `TokenStream` offering fixed windows; same interface as the trainer's data sources."""

    def __init__(self, stream: TokenStream):
        self.stream = stream

    def __len__(self) -> int:
        return len(self.stream)

    def fingerprint(self) -> str:
        return self.stream.fingerprint()

    def check_length(self, seq_len: int, name: str) -> None:
        self.stream.check_length(seq_len, name)

    def windows(self, seq_len: int) -> torch.Tensor:
        """All windows (N, L), in order."""
        n = len(self.stream) // seq_len
        return self.stream.ids[: n * seq_len].view(n, seq_len)

    def batches(self, seq_len: int, seed: int, rank: int = 0, world: int = 1) -> "EpochWindows":
        return EpochWindows(self.windows(seq_len), seed, rank, world)


class EpochWindows:
    """Batches of fixed windows in a fresh seeded order each epoch."""

    def __init__(self, windows: torch.Tensor, seed: int, rank: int = 0, world: int = 1):
        self.windows, self.seed, self.rank, self.world = windows, seed, rank, world
        self.position = 0
        self._perm: tuple[int, np.ndarray] | None = None

    def _row(self, index: int) -> torch.Tensor:
        epoch, j = divmod(index, len(self.windows))
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, np.random.default_rng([self.seed, epoch]).permutation(len(self.windows)))
        return self.windows[int(self._perm[1][j])]

    def next_batch(self, batch_size: int) -> torch.Tensor:
        first = self.position + self.rank * batch_size
        rows = torch.stack([self._row(i) for i in range(first, first + batch_size)])  # (B, L)
        self.position += batch_size * self.world
        return rows

    def state(self) -> dict:
        return {"position": self.position, "seed": self.seed}

    def restore(self, state: Any) -> None:
        if not isinstance(state, dict) or "position" not in state:
            raise DataError("the checkpoint's data position is not from an adaptation run; resume with `sunfish adapt`")
        self.position = int(state["position"])


def adapt_corpus(cfg: RunConfig, data: list[str] | None, tokenizer):
    """Train/validation splits tokenized by the base's tokenizer, as fixed windows."""
    from sunfish.data.shards import is_prepared
    from sunfish.data.stream import is_url
    from sunfish.training.corpus import Corpus, build_corpus, load_corpus_documents

    if data and len(data) == 1 and (is_prepared(data[0]) or is_url(data[0])):
        raise ValueError(f"'{data[0]}' is a prepared shard folder with its own tokenizer; adaptation keeps the base "
                         "model's tokenizer, so pass the .txt/.jsonl documents instead")
    if cfg.data.mix or cfg.data.workers:
        raise ValueError("--data.mix and --data.workers apply to streamed tar shards, which adaptation does not read; drop them")
    corpus = build_corpus(cfg, load_corpus_documents(cfg, data), tokenizer)
    return Corpus(tokenizer=tokenizer, train=FixedWindowStream(corpus.train), val=FixedWindowStream(corpus.val))
