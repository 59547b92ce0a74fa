"""Reading a folder written by `sunfish data prepare`: the manifest, the tokenizer and memory-mapped shards.

Nothing is loaded into memory up front: each shard is a `numpy.memmap` of shape (sequences, seq_len) and
the operating system pages in only the rows a batch touches.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sunfish.data.sources import DataError
from sunfish.fileio import file_sha256

MANIFEST = "manifest.json"
FORMAT = "sunfish-shards/1"


def is_prepared(path: str | Path) -> bool:
    """True for a folder made by `sunfish data prepare`, finished (a manifest) or not (shards or its .work)."""
    path = Path(path)
    if not path.is_dir():
        return False
    return (path / MANIFEST).is_file() or (path / ".work").is_dir() or any((path / "train").glob("*.bin"))


@dataclass
class StreamShards:
    """One stream's sequences in one split, across its shard files."""

    name: str
    weight: float  # the manifest's mixing weight (train split); normalised again over usable streams
    arrays: list[np.ndarray]  # memory-mapped (sequences_i, seq_len) per shard
    tokens: int

    def __post_init__(self) -> None:
        self.starts = np.cumsum([0] + [len(a) for a in self.arrays])  # (shards + 1,) first sequence of each

    @property
    def sequences(self) -> int:
        return int(self.starts[-1])

    def windows(self, seq_len: int, window: int) -> int:
        """How many windows of `window` tokens the stream offers (each sequence cut into whole windows)."""
        return self.sequences * (seq_len // window)

    def window(self, index: int, seq_len: int, window: int) -> np.ndarray:
        """(window,) tokens of window `index`: sequence index // k, offset (index % k) * window."""
        per = seq_len // window
        sequence, part = divmod(int(index), per)
        shard = int(np.searchsorted(self.starts, sequence, side="right")) - 1
        row = self.arrays[shard][sequence - self.starts[shard]]
        return row[part * window : (part + 1) * window]


class PreparedSplit:
    """The train or val part of a prepared folder, as weighted streams."""

    def __init__(self, name: str, streams: list[StreamShards], seq_len: int, fingerprint: str):
        self.name = name
        self.streams = streams
        self.seq_len = seq_len  # tokens per packed sequence
        self._fingerprint = fingerprint

    def __len__(self) -> int:
        return sum(s.tokens for s in self.streams)

    def fingerprint(self) -> str:
        return self._fingerprint

    def check_length(self, seq_len: int, name: str) -> None:
        if seq_len > self.seq_len:
            raise DataError(
                f"the prepared data holds sequences of {self.seq_len} tokens, shorter than the {seq_len} this run trains on; "
                f"lower --train.seq_len or prepare again with --seq-len {seq_len}"
            )
        if not any(s.windows(self.seq_len, seq_len) and s.weight > 0 for s in self.streams):
            raise DataError(f"the {name} split of the prepared data has no full sequence; add text or lower --seq-len")

    def batches(self, seq_len: int, seed: int, rank: int = 0, world: int = 1):
        from sunfish.data.loader import ShardBatches

        return ShardBatches(self, seq_len, seed, rank=rank, world=world)


class PreparedData:
    """A prepared folder: its manifest, tokenizer and two splits."""

    def __init__(self, folder: Path, manifest: dict):
        self.folder = folder
        self.manifest = manifest
        self.seq_len = int(manifest["seq_len"])
        self.dtype = np.dtype(manifest["dtype"])

    @classmethod
    def open(cls, folder: str | Path) -> "PreparedData":
        folder = Path(folder)
        path = folder / MANIFEST
        if not path.is_file():
            raise DataError(
                f"'{folder}' has no {MANIFEST}, so its preparation did not finish; run `sunfish data prepare` again"
            )
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            raise DataError(f"'{path}' is not valid JSON; prepare the data again") from None
        if manifest.get("format") != FORMAT:
            raise DataError(f"'{path}' has format {manifest.get('format')!r}, not {FORMAT!r}; prepare the data again")
        return cls(folder, manifest)

    def tokenizer(self):
        from sunfish.tokenizer import Tokenizer

        return Tokenizer.load(self.folder / self.manifest["tokenizer"]["file"])

    def _stream(self, entry: dict, split: str) -> StreamShards:
        arrays = []
        for shard in entry[split]["shards"]:
            path = self.folder / shard["file"]
            expected = shard["sequences"] * self.seq_len * self.dtype.itemsize
            if not path.is_file() or path.stat().st_size != expected:
                raise DataError(f"the shard '{path}' is missing or has the wrong size; prepare the data again")
            arrays.append(np.memmap(path, dtype=self.dtype, mode="r", shape=(shard["sequences"], self.seq_len)))
        return StreamShards(name=entry["name"], weight=float(entry["weight"]), arrays=arrays, tokens=entry[split]["tokens"])

    def split(self, split: str) -> PreparedSplit:
        entries = self.manifest["streams"]
        summary = [[e["name"], e["weight"], [s["sha256"] for s in e[split]["shards"]]] for e in entries]
        fingerprint = hashlib.sha256(json.dumps([self.seq_len, summary]).encode()).hexdigest()[:16]
        return PreparedSplit(split, [self._stream(e, split) for e in entries], self.seq_len, fingerprint)

    def verify(self) -> None:
        """Check every shard's SHA-256 against the manifest (reads all the data)."""
        for entry in self.manifest["streams"]:
            for split in ("train", "val"):
                for shard in entry[split]["shards"]:
                    if file_sha256(self.folder / shard["file"]) != shard["sha256"]:
                        raise DataError(f"the shard '{shard['file']}' does not match its checksum; prepare the data again")
