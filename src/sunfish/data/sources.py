"""Reading documents from local files and Hugging Face datasets, streaming.

Formats: `.txt` (documents separated by blank lines), `.jsonl` (one JSON object per line, the text in a
chosen field, "text" by default), `.parquet` (a string column, read in record batches), each optionally
gzip-compressed (`.txt.gz`, `.jsonl.gz`, `.parquet.gz`); a folder reads every such file in it, sorted by
name. `hf:NAME[:CONFIG][/SPLIT]` streams a dataset through the `datasets` library.

Every reader is a generator that holds one document (or one Parquet record batch) at a time, so a corpus
larger than memory streams through `sunfish data prepare`. Problems (missing file, non-UTF-8 bytes, a
record without the text field, an unreachable Hub) raise `DataError` with one sentence.
"""

from __future__ import annotations

import gzip
import io
import json
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from sunfish.fileio import file_sha256

TEXT_SUFFIXES = (".txt", ".jsonl", ".parquet")
SUFFIXES = TEXT_SUFFIXES + tuple(s + ".gz" for s in TEXT_SUFFIXES)
HF_PREFIX = "hf:"
_SPLIT_NAME = re.compile(r"^(train|validation|valid|test|dev)(\[[^\]]*\])?$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_PARQUET_BATCH_ROWS = 1024  # rows per record batch: bounds memory to one batch of documents


class DataError(ValueError):
    """A data problem a person can fix; the message is one sentence."""


def _kind(path: Path) -> str:
    name = path.name.lower()
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return suffix.removesuffix(".gz")
    raise DataError(f"cannot read '{path}': use a .txt, .jsonl or .parquet file (optionally .gz) or a folder of them")


def _open_text(path: Path):
    """A text stream over `path` that decodes UTF-8 strictly (gzip'd or not)."""
    try:
        raw = gzip.open(path, "rb") if path.name.lower().endswith(".gz") else path.open("rb")
    except OSError as err:
        raise DataError(f"cannot read '{path}': {err.strerror or err}") from None
    return io.TextIOWrapper(raw, encoding="utf-8", newline=None)


def _lines(path: Path) -> Iterator[str]:
    """Lines of a text file with their newline stripped; decoding and gzip errors become DataError."""
    with _open_text(path) as stream:
        try:
            for line in stream:
                yield line.rstrip("\n")
        except UnicodeDecodeError as err:
            raise DataError(f"'{path}' is not valid UTF-8 (bad byte near offset {err.start}); convert it to UTF-8 first") from None
        except (OSError, EOFError) as err:
            raise DataError(f"cannot read '{path}': {err}; the file is damaged or truncated") from None


def _txt_documents(path: Path) -> Iterator[str]:
    """Blank-line separated documents; a line of only spaces and tabs counts as blank."""
    block: list[str] = []
    for line in _lines(path):
        if line.strip(" \t"):
            block.append(line)
        elif block:
            yield "\n".join(block)
            block = []
    if block:
        yield "\n".join(block)


def _jsonl_documents(path: Path, field: str) -> Iterator[str]:
    for number, line in enumerate(_lines(path), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise DataError(f"line {number} of '{path}' is not valid JSON; each line must be an object like {{\"{field}\": ...}}") from None
        if not isinstance(record, dict) or not isinstance(record.get(field), str):
            raise DataError(f"line {number} of '{path}' has no string field \"{field}\"; choose the field with --text-field")
        yield record[field]


def _parquet_documents(path: Path, field: str) -> Iterator[str]:
    """One string column, read a record batch at a time (gzip'd files are unpacked to a temporary file)."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"reading '{path}' needs pyarrow; install it with pip install 'sunfish[data]'") from None
    with tempfile.TemporaryDirectory(prefix="sunfish-parquet-") as tmp:
        if path.name.lower().endswith(".gz"):
            plain = Path(tmp) / path.name[:-3]
            with gzip.open(path, "rb") as src, plain.open("wb") as dst:
                shutil.copyfileobj(src, dst)
            path_to_read = plain
        else:
            path_to_read = path
        try:
            table = pq.ParquetFile(path_to_read)
        except Exception as err:  # pyarrow raises ArrowInvalid, OSError, ...
            raise DataError(f"'{path}' is not a readable Parquet file ({str(err).splitlines()[0]})") from None
        if field not in table.schema_arrow.names:
            names = ", ".join(table.schema_arrow.names)
            raise DataError(f"'{path}' has no column \"{field}\" (columns: {names}); choose one with --text-field")
        for batch in table.iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=[field]):
            for value in batch.column(0).to_pylist():
                if isinstance(value, str):
                    yield value


def iter_file_documents(path: Path, text_field: str = "text") -> Iterator[str]:
    """Documents of one file, stripped, empty ones dropped, in file order."""
    kind = _kind(path)
    if kind == ".jsonl":
        docs = _jsonl_documents(path, text_field)
    elif kind == ".parquet":
        docs = _parquet_documents(path, text_field)
    else:
        docs = _txt_documents(path)
    for doc in docs:
        doc = doc.replace("\r\n", "\n").strip()
        if doc:
            yield doc


def read_file_documents(path: Path) -> list[str]:
    """All documents of one file (the simple, in-memory path used by `sunfish train --data FILE`)."""
    return list(iter_file_documents(path))


def expand_paths(paths: list[str | Path]) -> list[Path]:
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            inside = sorted(p for p in path.iterdir() if p.is_file() and p.name.lower().endswith(SUFFIXES))
            if not inside:
                raise DataError(f"the folder '{path}' holds no .txt, .jsonl or .parquet files")
            files += inside
        elif path.is_file():
            _kind(path)
            files.append(path)
        else:
            raise DataError(f"the data path '{path}' does not exist")
    return files


def read_documents(paths: list[str | Path]) -> list[str]:
    """All documents from the given files and folders, in order."""
    docs: list[str] = []
    for path in expand_paths(paths):
        docs += read_file_documents(path)
    if not docs:
        raise DataError(f"no text found in {', '.join(map(str, paths))}; the corpus is empty")
    return docs


@dataclass(frozen=True)
class HubSpec:
    """`hf:NAME[:CONFIG][/SPLIT]`: with a config, everything after its '/' is the split; without one, a
    final '/train', '/validation', '/test' or '/dev' (optionally sliced, 'train[:10%]') is the split."""

    name: str
    config: str | None
    split: str

    @classmethod
    def parse(cls, spec: str) -> "HubSpec":
        body = spec.removeprefix(HF_PREFIX)
        head = body.split("[", 1)[0]  # a split slice such as train[:10%] holds a colon of its own
        name, colon, rest = (body.partition(":") if ":" in head else (body, "", ""))
        if colon:
            config, _, split = rest.partition("/")
        else:
            config, split = None, ""
            head, slash, last = body.rpartition("/")
            if slash and _SPLIT_NAME.match(last):
                name, split = head, last
        if not name:
            raise DataError(f"cannot read '{spec}': write Hugging Face datasets as hf:NAME[:CONFIG][/SPLIT]")
        return cls(name=name, config=config or None, split=split or "train")


def _hub_documents(spec: HubSpec, original: str, text_field: str) -> Iterator[str]:
    try:
        import datasets
    except ImportError:
        raise DataError(f"reading '{original}' needs the datasets library; install it with pip install 'sunfish[data]'") from None
    try:
        stream = iter(datasets.load_dataset(spec.name, spec.config, split=spec.split, streaming=True))
        first = next(stream, None)
    except Exception as err:  # the library raises ConnectionError, FileNotFoundError, ValueError, ...
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(
            f"cannot open the dataset '{original}' ({reason}); check the name, or download it where the Hub is "
            "reachable and pass its local folder as hf:/path/to/folder"
        ) from None
    records = [first] if first is not None else []
    for record in _chain(records, stream):
        value = record.get(text_field) if isinstance(record, dict) else None
        if not isinstance(value, str):
            raise DataError(f"a record of '{original}' has no string field \"{text_field}\"; choose the field with --text-field")
        yield value


def _chain(head: list, tail: Iterator) -> Iterator:
    yield from head
    yield from tail


@dataclass(frozen=True)
class Source:
    """One named input of `sunfish data prepare`: local files (a file or a folder) or a Hugging Face dataset."""

    name: str  # names the output streams and the keys of --mix
    spec: str  # the path or hf:... as given
    text_field: str = "text"  # the JSON field or Parquet column that holds the text

    @property
    def is_hub(self) -> bool:
        return self.spec.startswith(HF_PREFIX)

    def files(self) -> list[Path]:
        return [] if self.is_hub else expand_paths([self.spec])

    def documents(self) -> Iterator[str]:
        """Stripped, non-empty documents in a fixed order."""
        if self.is_hub:
            for doc in _hub_documents(HubSpec.parse(self.spec), self.spec, self.text_field):
                doc = doc.replace("\r\n", "\n").strip()
                if doc:
                    yield doc
            return
        for path in self.files():
            yield from iter_file_documents(path, self.text_field)

    def describe(self) -> dict:
        """What the manifest records about this input: files with sizes and SHA-256, or the dataset id."""
        if self.is_hub:
            hub = HubSpec.parse(self.spec)
            return {"name": self.name, "spec": self.spec, "hub": {"name": hub.name, "config": hub.config, "split": hub.split}}
        files = [{"path": str(p), "bytes": p.stat().st_size, "sha256": file_sha256(p)} for p in self.files()]
        return {"name": self.name, "spec": self.spec, "text_field": self.text_field, "files": files}


def _default_name(spec: str) -> str:
    if spec.startswith(HF_PREFIX):
        stem = HubSpec.parse(spec).name.rstrip("/").split("/")[-1]
    else:
        stem = Path(spec).name
        for suffix in sorted(SUFFIXES, key=len, reverse=True):
            if stem.lower().endswith(suffix):
                stem = stem[: -len(suffix)]
                break
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", stem).strip("._-") or "source"


def parse_sources(args: list[str], text_field: str = "text") -> list[Source]:
    """Turn `PATH`, `NAME=PATH`, `hf:...` and `NAME=hf:...` arguments into uniquely named sources."""
    sources: list[Source] = []
    for arg in args:
        name, eq, spec = arg.partition("=")
        if not eq or name.startswith(HF_PREFIX) or "/" in name or Path(arg).exists():
            name, spec = _default_name(arg), arg
        if not _NAME.match(name):
            raise DataError(f"the source name '{name}' may hold only letters, digits, '_', '.' and '-'")
        if not spec.startswith(HF_PREFIX) and not Path(spec).exists():
            raise DataError(f"the data path '{spec}' does not exist")
        if any(s.name == name for s in sources):
            raise DataError(f"two inputs are both named '{name}'; name them apart as NAME=PATH")
        sources.append(Source(name=name, spec=spec, text_field=text_field))
    if not sources:
        raise DataError("no inputs given; pass files, folders or hf:NAME datasets")
    return sources


def write_documents(path: str | Path, docs: list[str]) -> int:
    """Write documents as .txt (blank-line separated) or .jsonl ({"text": ...}), atomically. Returns the count."""
    path = Path(path)
    kind = _kind(path)
    if path.name.endswith(".gz") or kind == ".parquet":
        raise DataError(f"cannot write '{path}': write a plain .txt or .jsonl file")
    if kind == ".jsonl":
        body = "".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs)
    else:
        body = "\n\n".join(d.strip() for d in docs) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(body, encoding="utf-8")
    tmp.replace(path)
    return len(docs)
