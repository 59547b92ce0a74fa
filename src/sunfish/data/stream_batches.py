"""Batches from streamed tar shards: weights that change during a run, exact resume, disjoint ranks and workers.

Global sample i (counted over all ranks since the run began) is drawn as follows.

Which stream. The weights in force form a *segment*: (start, base, w), where `start` is the global sample
at which the weights w took effect and base[s] the samples of stream s drawn before it. Inside a
segment samples come in blocks of `mix.BLOCK` holding exactly round(w_s * BLOCK) samples of stream s
(largest remainder), in an order seeded by (seed, start, block). So the stream of sample i, and how
many samples of each stream came before it (`LiveMix.drawn_before`), are pure functions of the segment
and i. At each optimiser step the weights the config asks for (`--data.mix`: fixed, or a schedule of
stages by step) are compared with the segment's; if they differ, a new segment starts at the current
sample, with base = drawn_before(i). New weights given on `--resume` take effect the same way, at the
step the run resumes from.

Which sample of the stream. The j-th sample drawn from stream s is window r = j mod N_s of epoch
e = j div N_s (N_s: the stream's windows, sequences x seq_len/L). An epoch visits the stream's shards in
an order seeded by (seed, s, e), and each shard's windows in an order seeded by (seed, s, e, shard); so a
stream is read one shard at a time (the next shard is fetched while this one is used), every window once
per epoch, and each stream wraps into its next epoch on its own, whatever the other streams do.

Ranks and workers. Rank r of W takes samples [p + rB, p + (r+1)B) of each global batch of W x B, so ranks
never read the same sample, and together they see what one process with batch W x B sees (the
same rule as `loader.ShardBatches`). With `--data.workers` n > 0, DataLoader worker k of a rank reads
the rank's batches c with c mod n == k (c counts batches since the reader started), and the DataLoader
hands them back in order, so workers read disjoint samples and the batches are those of n = 0.

The checkpointed position is {position, step (and the sample it began at), seed, segment}: restoring it
repeats the uninterrupted run batch for batch, and schedule stages begin at the right step even when the
resumed run has another number of ranks or batch size. It is the sampling design of `loader.ShardBatches`
(samples a pure function of an integer position), extended with segments so the weights can change.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch

from sunfish.data import mix
from sunfish.data.sources import DataError

MIX_SALT, SHARD_SALT, ROW_SALT = 0x6D6978, 0x74617273, 0x726F7773  # "mix", "tars", "rows": separate random streams


@dataclass(frozen=True)
class Segment:
    start: int  # global sample at which `weights` took effect
    base: np.ndarray  # (S,) int64 samples drawn from each stream before `start`
    weights: np.ndarray  # (S,) float64, sums to 1


class LiveMix:
    """Stream of each global sample inside one segment, and the count of each stream's samples before it."""

    def __init__(self, seed: int, segment: Segment):
        self.seed, self.segment = seed, segment
        self.counts = mix.block_counts(segment.weights)  # (S,) samples per block
        self._block: tuple[int, np.ndarray, np.ndarray] | None = None

    def _assignment(self, block: int) -> tuple[np.ndarray, np.ndarray]:
        """(stream of each sample in the block (BLOCK,), its rank among its stream's samples in the block (BLOCK,))."""
        if self._block is None or self._block[0] != block:
            rng = np.random.default_rng([self.seed, MIX_SALT, self.segment.start, block])
            stream = rng.permutation(np.repeat(np.arange(len(self.counts)), self.counts))  # (BLOCK,)
            ranks = np.empty(mix.BLOCK, np.int64)
            ranks[np.argsort(stream, kind="stable")] = np.concatenate([np.arange(c) for c in self.counts])
            self._block = (block, stream, ranks)
        return self._block[1], self._block[2]

    def draw(self, index: int) -> tuple[int, int]:
        """(stream s, j): global sample `index` is the j-th sample ever drawn from stream s."""
        block, at = divmod(index - self.segment.start, mix.BLOCK)
        stream, ranks = self._assignment(block)
        s = int(stream[at])
        return s, int(self.segment.base[s] + block * self.counts[s] + ranks[at])

    def drawn_before(self, index: int) -> np.ndarray:
        """(S,) samples of each stream among global samples [0, index)."""
        block, at = divmod(index - self.segment.start, mix.BLOCK)
        stream, _ = self._assignment(block)
        return self.segment.base + block * self.counts + np.bincount(stream[:at], minlength=len(self.counts))

    def switch(self, index: int, weights: np.ndarray) -> "LiveMix":
        return LiveMix(self.seed, Segment(index, self.drawn_before(index), weights))


class StreamOrder:
    """Window j of one stream, counted over epochs -> (shard, sequence in the shard, part of the sequence)."""

    def __init__(self, shards: list[dict], stream: int, seed: int, per: int):
        self.stream, self.seed, self.per = stream, seed, per  # per: windows per packed sequence
        self.sizes = np.array([s["sequences"] * per for s in shards], np.int64)  # (K,) windows per shard
        self.total = int(self.sizes.sum())
        self._epochs: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # epoch -> shard order, windows up to each
        self._rows: dict[tuple[int, int], np.ndarray] = {}  # (epoch, shard) -> window order in the shard

    def _shard_order(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        if epoch not in self._epochs:
            if len(self._epochs) >= 2:
                self._epochs.pop(min(self._epochs))
            order = np.random.default_rng([self.seed, SHARD_SALT, self.stream, epoch]).permutation(len(self.sizes))
            self._epochs[epoch] = (order, np.cumsum(self.sizes[order]))  # (K,) shards, (K,) windows up to each
        return self._epochs[epoch]

    def _row_order(self, epoch: int, shard: int) -> np.ndarray:
        if (epoch, shard) not in self._rows:
            if len(self._rows) >= 4:
                self._rows.pop(next(iter(self._rows)))
            rng = np.random.default_rng([self.seed, ROW_SALT, self.stream, epoch, shard])
            self._rows[epoch, shard] = rng.permutation(int(self.sizes[shard]))
        return self._rows[epoch, shard]

    def locate(self, j: int) -> tuple[int, int, int, int]:
        """(shard, sequence, part, the shard read after this one) of the stream's j-th window."""
        epoch, r = divmod(j, self.total)
        order, ends = self._shard_order(epoch)
        at = int(np.searchsorted(ends, r, side="right"))
        shard = int(order[at])
        window = int(self._row_order(epoch, shard)[r - (ends[at] - self.sizes[shard])])
        following = int(order[at + 1]) if at + 1 < len(order) else int(self._shard_order(epoch + 1)[0][0])
        return shard, *divmod(window, self.per), following


class StreamBatches:
    """`next_batch(B)`, `state()`, `restore(state)` over a `stream.TarSplit` (see the module docstring)."""

    def __init__(self, split, seq_len: int, seed: int, rank: int = 0, world: int = 1, workers: int | None = None):
        split.check_length(seq_len, split.name)
        self.split, self.seq_len, self.seed, self.rank, self.world = split, seq_len, seed, rank, world
        self.workers = split.workers if workers is None else workers
        self.samples_per_step = split.rows_per_step * world  # global samples per optimiser step
        per = split.seq_len // seq_len
        self._windows = np.array([s.windows(split.seq_len, seq_len) for s in split.streams], np.int64)  # (S,)
        self._orders = [StreamOrder(s.shards, i, seed, per) for i, s in enumerate(split.streams)]
        self._stages = self._resolve(split.schedule)
        self.position = 0  # global samples consumed (all ranks)
        self._anchor = (0, 0)  # (step, position) the step count starts from: a resumed run may have another world size
        self.mix = LiveMix(seed, Segment(0, np.zeros(len(self._windows), np.int64), self.weights_at(0)))
        self._ahead: tuple[int, Iterator] | None = None  # (batch size, DataLoader iterator) with workers
        self.log = split.log  # says when the weights change (None: silent)

    def _resolve(self, stages) -> list[tuple[int, np.ndarray]]:
        """[(first step, (S,) weights)]: the manifest's weights first, then each stage of the schedule."""
        manifest = np.array([s.weight for s in self.split.streams]) * (self._windows > 0)  # (S,)
        if manifest.sum() <= 0:
            manifest = self._windows.astype(np.float64)
        resolved = [(0, manifest / manifest.sum())]
        sizes = self.split.stream_sizes(self.seq_len)
        for stage in stages or ():
            _, weights = mix.stream_weights(sizes, stage.weights)
            resolved.append((stage.step, np.array([weights[s.name] for s in self.split.streams])))
        return resolved

    def weights_at(self, step: int) -> np.ndarray:
        """(S,) the weights the config asks for at optimiser step `step` (0-based)."""
        return [w for first, w in self._stages if first <= step][-1]

    def _step(self) -> int:
        """The optimiser step (0-based) the next sample belongs to."""
        return self._anchor[0] + (self.position - self._anchor[1]) // self.samples_per_step

    def plan(self, batch_size: int) -> list[tuple[int, int]]:
        """(stream, j) of each row of this rank's share of the next global batch; advances the position."""
        step = self._step()
        want = self.weights_at(step)
        if not np.array_equal(want, self.mix.segment.weights):
            self.mix = self.mix.switch(self.position, want)
            if self.log is not None:
                shares = ", ".join(f"{s.name} {100 * w:.1f}%" for s, w in zip(self.split.streams, want))
                self.log(f"data mix from step {step} (global sample {self.position:,}): {shares}")
        first = self.position + self.rank * batch_size
        rows = [self.mix.draw(i) for i in range(first, first + batch_size)]
        self.position += batch_size * self.world
        return rows

    def locate(self, stream: int, j: int) -> tuple[int, int, int]:
        """(shard, sequence, part) of the j-th sample of `stream`."""
        return self._orders[stream].locate(j)[:3]

    def read(self, plan: list[tuple[int, int]]) -> torch.Tensor:
        """(B, L) int64 tokens of the planned rows: each shard they need is asked for once, the shards that
        follow them are fetched ahead."""
        where = [(s, *self._orders[s].locate(j)) for s, j in plan]  # (stream, shard, sequence, part, following)
        fetcher, streams = self.split.fetcher, self.split.streams
        needed = {(s, shard) for s, shard, *_ in where}
        for s, shard in sorted(needed):
            fetcher.prefetch(streams[s].shards[shard])
        for s, following in sorted({(s, following) for s, *_, following in where}):
            fetcher.prefetch(streams[s].shards[following])
        arrays = {key: fetcher.get(streams[key[0]].shards[key[1]]) for key in needed}  # (sequences, seq_len) each
        rows = [arrays[s, shard][sequence, part * self.seq_len : (part + 1) * self.seq_len]
                for s, shard, sequence, part, _ in where]
        return torch.from_numpy(np.stack(rows).astype(np.int64))  # (B, L)

    def next_batch(self, batch_size: int) -> torch.Tensor:
        """(B, L) int64 token ids of this rank's share of the next global batch."""
        if self.workers == 0:
            return self.read(self.plan(batch_size))
        if self._ahead is None or self._ahead[0] != batch_size:
            self._ahead = (batch_size, iter(_read_ahead(self, batch_size)))
        batch = next(self._ahead[1])
        if isinstance(batch, DataError):  # a worker's one-sentence error, raised here as it is
            raise batch
        self.plan(batch_size)  # the position advances here, in the training process
        return batch

    def plans(self, batch_size: int, worker: int, workers: int) -> Iterator[list[tuple[int, int]]]:
        """The plans of the batches worker `worker` of `workers` reads (batches c with c mod workers == worker),
        from a copy of this reader's position; this reader does not move."""
        twin = StreamBatches(self.split, self.seq_len, self.seed, self.rank, self.world, workers=0)
        twin.restore(self.state())
        twin.log = None  # the training process reports the changes
        for c in itertools.count():
            plan = twin.plan(batch_size)
            if c % workers == worker:
                yield plan

    def __getstate__(self) -> dict:  # a spawned DataLoader worker gets the reader without the parent's iterator
        return {**self.__dict__, "_ahead": None, "log": None}

    def state(self) -> dict:
        names = [s.name for s in self.split.streams]
        segment = self.mix.segment
        step = self._step()
        began = self._anchor[1] + (step - self._anchor[0]) * self.samples_per_step  # the global sample the step began at
        return {"position": self.position, "step": [step, began], "seed": self.seed, "segment": {
            "start": segment.start, "base": {n: int(b) for n, b in zip(names, segment.base)},
            "weights": {n: float(w) for n, w in zip(names, segment.weights)}}}

    def restore(self, state: Any) -> None:
        if not isinstance(state, dict) or "segment" not in state or "step" not in state:
            raise DataError("the checkpoint's data position is not from streamed tar shards; resume with the --data it was trained on")
        if int(state["seed"]) != self.seed:
            raise DataError(f"the checkpoint's data order was seeded with {state['seed']}, not {self.seed}; resume with the same seed")
        names = [s.name for s in self.split.streams]
        segment = state["segment"]
        if sorted(segment["base"]) != sorted(names):
            raise DataError("the checkpoint's data position names other streams than the data; resume with the --data it was trained on")
        self.position = int(state["position"])
        step, began = state["step"]
        self._anchor = (int(step), int(began))
        self.mix = LiveMix(self.seed, Segment(int(segment["start"]), np.array([segment["base"][n] for n in names], np.int64),
                                              np.array([segment["weights"][n] for n in names], np.float64)))
        self._ahead = None


class _ReadAhead(torch.utils.data.IterableDataset):
    """One rank's batches, read by DataLoader workers: worker k of n reads the batches c with c mod n == k."""

    def __init__(self, batches: StreamBatches, batch_size: int):
        self.batches, self.batch_size = batches, batch_size

    def __iter__(self) -> Iterator[torch.Tensor]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        for plan in self.batches.plans(self.batch_size, worker, workers):
            try:
                yield self.batches.read(plan)
            except DataError as err:  # the DataLoader would wrap it in a traceback; hand the sentence over instead
                yield err
                return


def _read_ahead(batches: StreamBatches, batch_size: int) -> torch.utils.data.DataLoader:
    # batch_size=None: each item is already a batch; the DataLoader takes items from workers 0, 1, ..., n-1 in turn.
    return torch.utils.data.DataLoader(_ReadAhead(batches, batch_size), batch_size=None, num_workers=batches.workers,
                                       prefetch_factor=2, persistent_workers=False)
