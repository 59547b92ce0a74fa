"""Tar shards in the WebDataset layout: `sunfish data prepare --format tar` writes them, `sunfish.data.stream` reads them.

A WebDataset shard is a plain tar whose members are grouped into samples by their name up to the first dot
(the key); the rest of the name is the field. Here a sample is one packed sequence of `seq_len` tokens:

    00003-000017.tokens.npy   the (seq_len,) uint16/uint32 token array, NumPy's .npy format
    00003-000017.json         {"stream": "wiki.en", "source": "wiki", "lang": "en", "shard": 3, "row": 17}

Members are written in row order by `webdataset.TarWriter` with a fixed mtime, user and group, so the same
input gives byte-identical shards (the manifest records their SHA-256). Every stream (source x language) and
split gets its own shards, so weights can be applied when reading rather than fixed when preparing; the
sequences are exactly those `ShardWriter` puts in the memory-mapped `.bin` shards (same packing, same
order), only the container differs. A tar member costs a 512-byte header and pads its data to 512 bytes,
so a 2,048-token uint16 sequence (4 KiB) takes about 6 KiB on disk.

Any WebDataset reader opens these shards (`webdataset.WebDataset(url).decode()` yields {"tokens.npy": array,
"json": dict}); Sunfish's own reader parses a fetched shard with the standard `tarfile` module.
"""

from __future__ import annotations

import enum
import io
import json
import tarfile

import numpy as np

from sunfish.data.pack import ShardWriter
from sunfish.data.sources import DataError
from sunfish.fileio import file_sha256

TAR_FORMAT = "sunfish-tar/1"
TOKENS_FIELD = "tokens.npy"
META_FIELD = "json"
MTIME = 0  # fixed member times: reproducible shards


class ShardFormat(str, enum.Enum):
    """How `sunfish data prepare` stores the packed sequences."""

    MMAP = "mmap"  # raw arrays read with numpy.memmap (sunfish.data.shards); the default
    TAR = "tar"  # WebDataset tar shards for streaming from folders and URLs (sunfish.data.stream)


def sample_key(shard: int, row: int) -> str:
    """The WebDataset key of a row: no dot, so readers split name and field where this module does."""
    return f"{shard:05d}-{row:06d}"


class TarShardWriter(ShardWriter):
    """`ShardWriter` with `<stream>-NNNNN.tar` shards of one WebDataset sample per packed sequence."""

    SUFFIX = ".tar"

    @staticmethod
    def check_available() -> None:
        try:
            import webdataset  # noqa: F401
        except ImportError:
            raise DataError("writing tar shards needs the webdataset package; pip install 'sunfish[stream]'") from None

    def _open(self) -> None:
        from webdataset import TarWriter

        super()._open()
        self._tar = TarWriter(self._file, encoder=False, mtime=MTIME, user="sunfish", group="sunfish")

    def _write_rows(self, block: np.ndarray) -> None:
        """One sample per row of `block` (n, L)."""
        source, _, lang = self.prefix.rpartition(".")
        shard = len(self.result.shards)
        for i, row in enumerate(block):
            at = self._in_shard + i
            buffer = io.BytesIO()
            np.save(buffer, row, allow_pickle=False)
            meta = {"stream": self.prefix, "source": source, "lang": lang, "shard": shard, "row": at}
            self._tar.write({"__key__": sample_key(shard, at), TOKENS_FIELD: buffer.getvalue(),
                             META_FIELD: json.dumps(meta).encode()})

    def _end_file(self) -> None:
        self._tar.close()  # writes the end-of-archive blocks; the file stays open (it was passed in)

    def _digest(self) -> str:
        return file_sha256(self._tmp)


def read_tar_shard(data: bytes, sequences: int, seq_len: int, dtype: np.dtype, name: str) -> np.ndarray:
    """(sequences, seq_len) tokens of a tar shard's bytes, in row order; a shard that does not hold what the
    manifest says is refused."""
    rows = []
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for member in tar:
                if member.isfile() and member.name.endswith("." + TOKENS_FIELD):
                    rows.append(np.load(io.BytesIO(tar.extractfile(member).read()), allow_pickle=False))
    except (tarfile.TarError, ValueError, OSError) as err:
        raise DataError(f"the shard '{name}' is not a readable tar of token arrays ({err}); prepare the data again") from None
    if len(rows) != sequences or any(r.shape != (seq_len,) or r.dtype != dtype for r in rows):
        raise DataError(f"the shard '{name}' does not hold {sequences} sequences of {seq_len} {dtype} tokens as its "
                        "manifest says; prepare the data again")
    return np.stack(rows) if rows else np.zeros((0, seq_len), dtype)  # (sequences, L)
