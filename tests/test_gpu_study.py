"""benchmarks/gpu_study.py --dry-run runs end to end on the CPU with tiny sizes and Sunfish's built-in stories
(no ../shared needed): each table has its rows and every figure is finite. Times are never checked."""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import load_benchmark



def load_script():
    return load_benchmark("gpu_study")


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """One dry run (--peak-tflops 1 so the MFU columns are filled on a CPU too); its JSON and Markdown."""
    tmp = tmp_path_factory.mktemp("gpu_study")
    threads = torch.get_num_threads()
    try:
        rc = load_script().main(["--dry-run", "--builtin-corpus", "--threads", "1", "--peak-tflops", "1",
                                 "--out", str(tmp / "results.json"), "--workdir", str(tmp / "runs")])
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    return json.loads((tmp / "results.json").read_text()), (tmp / "results.md").read_text()


def finite(*values) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


def test_throughput_row_is_finite_and_ran_flash_attention(study):
    r = study[0]["throughput"]
    assert r["preset"].startswith("dllm-ru-300m")
    assert r["parameters"] > 0 and len(r["step_s_all"]) == 3
    assert finite(r["step_s"], r["tokens_per_s"], r["model_tflops"], r["mfu"], r["mfu_masked_head"],
                  r["peak_memory_gib"])
    assert 0 < r["mfu_masked_head"] < r["mfu"]  # the masked head does less work than 6N credits
    assert "flash" in r["attention"]


def test_objectives_share_one_flop_budget_and_score_both_languages(study):
    rows = study[0]["objectives"]
    assert [r["process"] for r in rows] == ["autoregressive", "masked diffusion", "block diffusion"]
    assert len({r["parameters"] for r in rows}) == 1
    ar = rows[0]
    assert rows[2]["steps"] < ar["steps"]  # block diffusion runs 2L tokens per sequence
    for r in rows:
        assert abs(r["train_flops"] / ar["train_flops"] - 1) < 0.2  # equal up to rounding to whole steps
        assert finite(r["train_s"], r["tokens_per_s"], r["mfu"], r["epochs"], r["final_loss"])
        for lang in ("en", "ru"):
            b = r["bits_per_byte"][lang]
            assert finite(b["bits_per_byte"], b["bits_per_byte_se"]) and b["bits_per_byte"] > 0
    assert ar["bits_per_byte"]["en"]["exact"] and not rows[1]["bits_per_byte"]["en"]["exact"]


def test_sampling_rows_cover_every_model_at_batch_1_and_32(study):
    rows = study[0]["sampling"]
    assert {r["batch"] for r in rows} == {1, 32}
    for batch in (1, 32):
        models = {r["model"] for r in rows if r["batch"] == batch}
        assert models == {"diffusion", "block", "ar"}
    assert all(finite(r["tokens_per_s"], r["nfe_per_token"], r["speedup"], r["gen_ppl"]) for r in rows)
    assert all(r["tokens_per_s"] > 0 for r in rows)


def test_markdown_holds_the_three_tables(study):
    md = study[1]
    for title in ("## Training throughput", "## Objectives at equal training FLOPs", "## Sampling speed"):
        assert title in md
    assert md.count("| autoregressive |") == 1 and md.count("causal model, KV cache") == 2


def test_a_missing_corpus_is_one_sentence(tmp_path, capsys):
    threads = torch.get_num_threads()
    try:
        rc = load_script().main(["--dry-run", "--threads", "1", "--corpora", str(tmp_path / "nowhere"),
                                 "--out", str(tmp_path / "r.json"), "--workdir", str(tmp_path / "runs")])
    finally:
        torch.set_num_threads(threads)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "is absent; pass --corpora" in err
