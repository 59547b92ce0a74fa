"""benchmarks/serve_load.py runs end to end on a tiny setting: real servers, a table with a row per max batch and no
errors (its figures are not checked: tests never assert on time)."""

from __future__ import annotations


import pytest

from serving import needs_serve_extra

from conftest import load_benchmark

needs_serve_extra()
pytest.importorskip("httpx", reason="the benchmark's client needs httpx (pip install -e .[dev])")

TINY = ["--model.d_model=32", "--model.n_layers=1", "--model.n_heads=2", "--model.context=64",
        "--train.batch_size=4", "--train.val_every=0", "--data.synth_docs=200", "--no-progress"]


def load_script():
    return load_benchmark("serve_load")


def table_rows(text: str) -> dict[str, dict[str, str]]:
    """The printed Markdown table, as {max_batch: {column: cell}}."""
    lines = [l for l in text.splitlines() if l.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = [dict(zip(header, (c.strip() for c in l.strip("|").split("|")))) for l in lines[2:]]
    return {r["max_batch"]: r for r in rows}


@pytest.mark.parametrize("stream", [False, True])
def test_the_load_benchmark_prints_a_row_per_max_batch_without_errors(tmp_path, capsys, stream):
    from sunfish.cli import main as sunfish

    model = tmp_path / "run"
    assert sunfish(["train", "--preset", "nano", "--steps", "5", "--out", str(model), *TINY]) == 0
    capsys.readouterr()
    argv = ["--model", str(model), "--requests", "12", "--concurrency", "4", "--max-tokens", "8", "--steps", "4",
            "--batches", "4,1", "--device", "cpu", "--timeout", "60"] + (["--stream"] if stream else [])
    assert load_script().main(argv) == 0
    rows = table_rows(capsys.readouterr().out)
    assert set(rows) == {"4", "1"}
    for row in rows.values():
        assert row["requests done"] == "12" and row["errors"] == "0" and row["exit"] == "0"
        assert float(row["tokens/s"].replace(",", "")) > 0
    assert rows["1"]["vs max_batch 1"] == "1.00x" and rows["1"]["mean batch rows"] == "1.00"
    assert ("p50 first text (s)" in rows["1"]) == stream
