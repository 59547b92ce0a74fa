"""Reading documents from local files.

`.txt`: documents separated by blank lines. `.jsonl`: one JSON object per line with a "text" field.
Either may be gzip-compressed (`.txt.gz`, `.jsonl.gz`). A folder reads every such file in it, sorted.
Problems (missing file, non-UTF-8 bytes, no text) raise `DataError` with one sentence.
"""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path
from typing import Iterator

SUFFIXES = (".txt", ".jsonl", ".txt.gz", ".jsonl.gz")
_BLANK_LINES = re.compile(r"\n[ \t]*\n+")


class DataError(ValueError):
    """A data problem a person can fix; the message is one sentence."""


def _kind(path: Path) -> str:
    name = path.name.lower()
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return suffix.removesuffix(".gz")
    raise DataError(f"cannot read '{path}': use a .txt or .jsonl file (optionally .gz) or a folder of them")


def _read_text(path: Path) -> str:
    try:
        raw = gzip.open(path, "rb").read() if path.name.endswith(".gz") else path.read_bytes()
    except OSError as err:
        raise DataError(f"cannot read '{path}': {err.strerror or err}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(
            f"'{path}' is not valid UTF-8 (bad byte at offset {err.start}); convert it to UTF-8 first"
        ) from None


def _jsonl_documents(path: Path, text: str) -> Iterator[str]:
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise DataError(f"line {number} of '{path}' is not valid JSON; each line must be an object like {{\"text\": ...}}") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise DataError(f"line {number} of '{path}' has no string field \"text\"")
        yield record["text"]


def read_file_documents(path: Path) -> list[str]:
    """Documents of one file, stripped, empty ones dropped."""
    kind = _kind(path)
    text = _read_text(path).replace("\r\n", "\n")
    docs = _jsonl_documents(path, text) if kind == ".jsonl" else _BLANK_LINES.split(text)
    return [d.strip() for d in docs if d.strip()]


def expand_paths(paths: list[str | Path]) -> list[Path]:
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            inside = sorted(p for p in path.iterdir() if p.is_file() and p.name.lower().endswith(SUFFIXES))
            if not inside:
                raise DataError(f"the folder '{path}' holds no .txt or .jsonl files")
            files += inside
        elif path.is_file():
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


def write_documents(path: str | Path, docs: list[str]) -> int:
    """Write documents as .txt (blank-line separated) or .jsonl ({"text": ...}), atomically. Returns the count."""
    path = Path(path)
    kind = _kind(path)
    if path.name.endswith(".gz"):
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
