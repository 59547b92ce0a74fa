"""Reading documents: every format, compressed or not, folders, names, Hugging Face datasets, errors."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sunfish.data.sources import DataError, HubSpec, Source, parse_sources, read_documents

DOCS = ["First document.\nIt has two lines.", "Второй документ: «ёлка».", "Third 🙂 with a tab\there."]


def write_txt(path, docs):
    path.write_text("\n\n  \t\n".join(docs) + "\n", encoding="utf-8")


def write_jsonl(path, docs, field="text"):
    path.write_text("".join(json.dumps({field: d, "id": i}) + "\n" for i, d in enumerate(docs)), encoding="utf-8")


def write_parquet(path, docs, field="text"):
    pq.write_table(pa.table({field: docs, "id": list(range(len(docs)))}), path, row_group_size=2)


def gzip_file(path):
    target = path.with_name(path.name + ".gz")
    target.write_bytes(gzip.compress(path.read_bytes()))
    path.unlink()
    return target


@pytest.mark.parametrize("writer,suffix", [(write_txt, ".txt"), (write_jsonl, ".jsonl"), (write_parquet, ".parquet")])
@pytest.mark.parametrize("compressed", [False, True])
def test_every_format_reads_the_same_documents(tmp_path, writer, suffix, compressed):
    path = tmp_path / f"corpus{suffix}"
    writer(path, DOCS)
    if compressed:
        path = gzip_file(path)
    assert list(Source("c", str(path)).documents()) == DOCS
    assert parse_sources([str(path)])[0].name == "corpus"


def test_text_field_and_folders(tmp_path):
    write_jsonl(tmp_path / "b.jsonl", DOCS[1:], field="content")
    write_parquet(tmp_path / "a.parquet", DOCS[:1], field="content")
    (tmp_path / "notes.md").write_text("ignored", encoding="utf-8")
    assert list(Source("f", str(tmp_path), text_field="content").documents()) == DOCS  # sorted: a.parquet, b.jsonl
    with pytest.raises(DataError, match='no string field "text"'):
        list(Source("f", str(tmp_path / "b.jsonl")).documents())
    with pytest.raises(DataError, match='no column "text"'):
        list(Source("f", str(tmp_path / "a.parquet")).documents())


def test_crlf_and_blank_documents_are_normalised(tmp_path):
    path = tmp_path / "win.txt"
    path.write_bytes(b"one\r\ntwo\r\n\r\n\r\n   \r\nthree\r\n")
    assert read_documents([path]) == ["one\ntwo", "three"]


def test_source_names(tmp_path):
    write_txt(tmp_path / "ru_books.txt", DOCS)
    sources = parse_sources([f"books={tmp_path / 'ru_books.txt'}", str(tmp_path / "ru_books.txt"), "hf:owner/wiki:20231101.ru/train"])
    assert [s.name for s in sources] == ["books", "ru_books", "wiki"]
    with pytest.raises(DataError, match="both named 'ru_books'"):
        parse_sources([str(tmp_path / "ru_books.txt")] * 2)
    with pytest.raises(DataError, match="does not exist"):
        parse_sources([str(tmp_path / "missing.txt")])


def test_hub_spec_parsing():
    assert HubSpec.parse("hf:wikimedia/wikipedia:20231101.ru/train") == HubSpec("wikimedia/wikipedia", "20231101.ru", "train")
    assert HubSpec.parse("hf:owner/name") == HubSpec("owner/name", None, "train")
    assert HubSpec.parse("hf:imdb/test") == HubSpec("imdb", None, "test")
    assert HubSpec.parse("hf:owner/name/validation[:10%]") == HubSpec("owner/name", None, "validation[:10%]")


def test_hf_local_folder_streams_through_datasets(tmp_path):
    write_jsonl(tmp_path / "part-0.jsonl", DOCS[:2])
    write_jsonl(tmp_path / "part-1.jsonl", DOCS[2:])
    assert list(Source("hub", f"hf:{tmp_path}").documents()) == DOCS


def test_hub_failure_is_one_sentence(monkeypatch):
    import datasets
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # no network here: fail at once, not after retries
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataError) as err:
        list(Source("w", "hf:wikimedia/wikipedia:20231101.ru").documents())
    message = str(err.value)
    assert message.startswith("cannot open the dataset 'hf:wikimedia/wikipedia:20231101.ru'") and "\n" not in message


def test_bad_files_raise_data_errors(tmp_path):
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"text": "ok"}\nnot json\n', encoding="utf-8")
    with pytest.raises(DataError, match="line 2 .* not valid JSON"):
        read_documents([bad_json])
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("café".encode("latin-1"))
    with pytest.raises(DataError, match="not valid UTF-8"):
        read_documents([latin1])
    truncated = tmp_path / "cut.txt.gz"
    truncated.write_bytes(gzip.compress(" ".join(str(i * 7919 % 100003) for i in range(20000)).encode())[:2000])
    with pytest.raises(DataError, match="damaged or truncated"):
        read_documents([truncated])
    other = tmp_path / "table.csv"
    other.write_text("a,b\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"use a \.txt, \.jsonl or \.parquet"):
        read_documents([other])
