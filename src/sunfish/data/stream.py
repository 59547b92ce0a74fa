"""Reading tar shards (`sunfish data prepare --format tar`) from a local folder or a URL, one shard at a time.

`--data` names the folder or its manifest.json: a plain path, `file://`, `https://`, `s3://` or `gs://` (any
protocol `fsspec` knows; s3 and gs need `s3fs` / `gcsfs`). Shard paths in the manifest are relative to it.
A shard is fetched whole (one GET), checked against the manifest's SHA-256, sample count, shape and dtype,
and kept in memory while its samples are used; the next shard of each stream is fetched in a background
thread while the current one is read (`ShardFetcher`: two shards per stream in memory, per process). Failed fetches are retried with a growing wait before the
run is stopped with one sentence.

Which samples are read, and in what order, is decided by `sunfish.data.stream_batches` (live mixing,
exact resume, disjoint ranks and workers); this module only knows where the bytes are.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sunfish.data.shards import MANIFEST
from sunfish.data.sources import DataError
from sunfish.data.tarshards import TAR_FORMAT, read_tar_shard

URL_SCHEMES = ("http://", "https://", "s3://", "gs://", "gcs://", "file://", "hf://", "az://", "abfs://")
READ_TIMEOUT_S = 60  # longest silence while an HTTP response is read, seconds (a large shard may take longer in all)
CONNECT_TIMEOUT_S = 10
RETRIES = 3  # attempts per shard; waits 1 s, 2 s between them


def is_url(spec: str) -> bool:
    return str(spec).startswith(URL_SCHEMES)


def is_tar_data(spec: str) -> bool:
    """True for a URL, or a local folder (or its manifest.json) whose manifest says tar shards."""
    if is_url(spec):
        return True
    path = Path(spec)
    manifest = path if path.suffix == ".json" else path / MANIFEST
    if not manifest.is_file():
        return False
    try:
        return json.loads(manifest.read_text(encoding="utf-8")).get("format") == TAR_FORMAT
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return False


class Location:
    """Where a prepared tar folder lives: an fsspec filesystem and the folder's URL or path."""

    def __init__(self, spec: str):
        spec, self.manifest_name = str(spec), MANIFEST
        if not is_url(spec):  # a local folder or manifest: an absolute path (fsspec's local filesystem)
            path = Path(spec).expanduser().resolve()
            if path.suffix == ".json":
                path, self.manifest_name = path.parent, path.name
            spec = path.as_posix()
        elif spec.endswith(".json"):
            spec, _, self.manifest_name = spec.rpartition("/")
        self.base = spec.rstrip("/") or "/"
        self._opened = (os.getpid(), _filesystem(self.base))  # a bad URL fails here

    @property
    def fs(self):
        """The filesystem of this process: fsspec's HTTP client is not fork-safe, so a DataLoader worker opens its own."""
        if self._opened[0] != os.getpid():
            self._opened = (os.getpid(), _filesystem(self.base))
        return self._opened[1]

    def url(self, name: str) -> str:
        return f"{self.base}/{name}"

    def read(self, name: str, retries: int = 1) -> bytes:
        """The bytes of `name` under the folder; a failure after `retries` attempts is one sentence."""
        url = self.url(name)
        for attempt in range(retries):
            try:
                return self.fs.cat_file(url)
            except FileNotFoundError:
                raise DataError(f"'{url}' does not exist; check --data (a folder written by `sunfish data prepare "
                                "--format tar`, served as is)") from None
            except Exception as err:  # network errors come from aiohttp, botocore, ... as their own types
                if attempt + 1 == retries:
                    reason = str(err).splitlines()[0] if str(err) else type(err).__name__
                    raise DataError(f"cannot read '{url}' ({reason}); check that the server is reachable and "
                                    "the URL is right") from None
                time.sleep(2**attempt)
        raise AssertionError("unreachable")

    def __getstate__(self) -> dict:  # the filesystem is opened again in each DataLoader worker (spawn)
        return {"base": self.base, "manifest_name": self.manifest_name, "_opened": (None, None)}


def _filesystem(base: str):
    try:
        import fsspec
    except ImportError:
        raise DataError("streaming tar shards needs fsspec; pip install 'sunfish[stream]'") from None
    options = {}
    if base.startswith(("http://", "https://")):
        try:
            import aiohttp
        except ImportError:
            raise DataError("streaming over HTTP needs aiohttp; pip install 'sunfish[stream]'") from None
        options["client_kwargs"] = {"timeout": aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT_S,
                                                                  sock_read=READ_TIMEOUT_S)}
    try:
        return fsspec.core.url_to_fs(base, **options)[0]
    except ImportError as err:
        raise DataError(f"reading '{base}' needs a package fsspec uses for it ({err}); install it with pip") from None
    except ValueError as err:
        raise DataError(f"cannot read '{base}' ({err}); give a folder, file://, https://, s3:// or gs:// URL") from None


@dataclass
class TarStream:
    """One stream's shards in one split."""

    name: str
    weight: float  # the manifest's mixing weight
    shards: list[dict]  # {"file", "sequences", "sha256"} in the manifest's order
    tokens: int

    @property
    def sequences(self) -> int:
        return sum(s["sequences"] for s in self.shards)

    def windows(self, seq_len: int, window: int) -> int:
        return self.sequences * (seq_len // window)


class ShardFetcher:
    """Decoded shards by (stream, shard), fetched whole in background threads, a few kept in memory."""

    def __init__(self, location: Location, seq_len: int, dtype: np.dtype, keep: int):
        self.location, self.seq_len, self.dtype = location, seq_len, dtype
        self.keep = keep  # shards held in memory: each stream's current one and the next
        self._pid = None

    def _start(self) -> None:
        """Threads and the cache belong to one process: a forked DataLoader worker starts its own."""
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="shards")
            self._cache: OrderedDict[str, Future] = OrderedDict()
            self._lock = threading.Lock()

    def _load(self, shard: dict) -> np.ndarray:
        data, url = self.location.read(shard["file"], retries=RETRIES), self.location.url(shard["file"])
        if hashlib.sha256(data).hexdigest() != shard["sha256"]:
            raise DataError(f"the shard '{url}' does not match its manifest's checksum; copy or prepare the data again")
        return read_tar_shard(data, shard["sequences"], self.seq_len, self.dtype, url)

    def prefetch(self, shard: dict) -> None:
        self._start()
        with self._lock:
            if shard["file"] in self._cache:
                self._cache.move_to_end(shard["file"])
                return
            self._cache[shard["file"]] = self._pool.submit(self._load, shard)
            while len(self._cache) > self.keep:
                self._cache.popitem(last=False)

    def get(self, shard: dict) -> np.ndarray:
        """(sequences, seq_len) tokens of the shard."""
        self.prefetch(shard)
        with self._lock:
            pending = self._cache[shard["file"]]
        return pending.result()

    def __getstate__(self) -> dict:
        return {**{k: v for k, v in self.__dict__.items() if not k.startswith("_")}, "_pid": None}


class TarSplit:
    """The train or val part of a tar folder: streams of shards, read through one fetcher."""

    def __init__(self, name: str, streams: list[TarStream], seq_len: int, fetcher: ShardFetcher):
        self.name, self.streams, self.seq_len, self.fetcher = name, streams, seq_len, fetcher
        summary = [[s.name, [shard["sha256"] for shard in s.shards]] for s in streams]  # weights may change
        self._fingerprint = hashlib.sha256(json.dumps([seq_len, summary]).encode()).hexdigest()[:16]
        self.schedule = None  # mix.MixSchedule set by the corpus for the training split; None: the manifest's weights
        self.rows_per_step = 1  # micro-batch rows x gradient accumulation, per rank (the schedule counts steps)
        self.workers = 0  # DataLoader worker processes that read ahead; 0 = read in the training process
        self.log = None  # where a reader of this split says that the weights changed

    def __len__(self) -> int:
        return sum(s.tokens for s in self.streams)

    def __getstate__(self) -> dict:  # a spawned DataLoader worker (Windows, macOS) gets no logger
        return {**self.__dict__, "log": None}

    def fingerprint(self) -> str:
        return self._fingerprint

    def stream_sizes(self, seq_len: int) -> list:
        """mix.StreamSize of each stream, counting windows of `seq_len` tokens."""
        from sunfish.data.mix import StreamSize

        return [StreamSize(s.name, *s.name.rpartition(".")[::2], s.windows(self.seq_len, seq_len)) for s in self.streams]

    def set_schedule(self, stages: list) -> None:
        """Follow these mix stages (mix.parse_schedule); a stage naming an unknown source fails here, before training."""
        from sunfish.data.mix import stream_weights

        for stage in stages:
            stream_weights(self.stream_sizes(self.seq_len), stage.weights)
        self.schedule = stages

    def check_length(self, seq_len: int, name: str) -> None:
        if seq_len > self.seq_len:
            raise DataError(
                f"the prepared data holds sequences of {self.seq_len} tokens, shorter than the {seq_len} this run trains on; "
                f"lower --train.seq_len or prepare again with --seq-len {seq_len}")
        if not any(s.windows(self.seq_len, seq_len) for s in self.streams):
            raise DataError(f"the {name} split of the prepared data has no full sequence; add text or lower --seq-len")

    def batches(self, seq_len: int, seed: int, rank: int = 0, world: int = 1):
        from sunfish.data.stream_batches import StreamBatches

        return StreamBatches(self, seq_len, seed, rank=rank, world=world)


class TarData:
    """A tar folder from `sunfish data prepare --format tar`, local or remote: its manifest, tokenizer and splits."""

    def __init__(self, location: Location, manifest: dict):
        self.location, self.manifest = location, manifest
        self.seq_len = int(manifest["seq_len"])
        self.dtype = np.dtype(manifest["dtype"])

    @classmethod
    def open(cls, spec: str) -> "TarData":
        location = Location(spec)
        raw = location.read(location.manifest_name, retries=1)
        try:
            manifest = json.loads(raw.decode("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise DataError(f"'{location.url(location.manifest_name)}' is not valid JSON; prepare the data again") from None
        if not isinstance(manifest, dict) or manifest.get("format") != TAR_FORMAT:
            found = manifest.get("format") if isinstance(manifest, dict) else None
            raise DataError(f"'{location.url(location.manifest_name)}' has format {found!r}, not {TAR_FORMAT!r}; "
                            "stream a folder written by `sunfish data prepare --format tar`")
        return cls(location, manifest)

    def tokenizer(self):
        import tokenizers

        from sunfish.tokenizer import Tokenizer

        entry = self.manifest["tokenizer"]
        raw = self.location.read(entry["file"], retries=RETRIES)
        if hashlib.sha256(raw).hexdigest() != entry["sha256"]:
            raise DataError(f"'{self.location.url(entry['file'])}' does not match the manifest's checksum; prepare the data again")
        return Tokenizer(tokenizers.Tokenizer.from_str(raw.decode("utf-8")))

    def split(self, split: str) -> TarSplit:
        fetcher = ShardFetcher(self.location, self.seq_len, self.dtype, keep=2 * len(self.manifest["streams"]) + 2)
        streams = [TarStream(name=e["name"], weight=float(e["weight"]), shards=e[split]["shards"],
                             tokens=int(e[split]["tokens"])) for e in self.manifest["streams"]]
        return TarSplit(split, streams, self.seq_len, fetcher)
