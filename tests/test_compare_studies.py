"""benchmarks/compare_objectives.py and compare_processes.py run several seeds in seconds on tiny settings
(--quick, a few steps, Sunfish's built-in stories laid out like ../shared/corpora): one results.json per seed,
every figure as mean (min-max) over the seeds, the unigram row and the plateau columns, the doc's marked block
rewritten with the notes around it kept; and the helpers those columns come from. Times are never checked."""

from __future__ import annotations

import gzip
import json
import math
from collections import Counter
from pathlib import Path

import pytest
import torch

from sunfish.data.synth import generate_stories
from sunfish.eval.likelihood import held_out
from sunfish.tokenizer import train_tokenizer

from conftest import load_benchmark

NOTES = "# Results\n\nA note above.\n\n## Objectives\n\n<!-- {0}: begin -->\nold table\n<!-- {0}: end -->\n\nA note below.\n"


@pytest.fixture(scope="module")
def corpora(tmp_path_factory) -> Path:
    """Built-in stories in the layout of ../shared/corpora."""
    root = tmp_path_factory.mktemp("corpora")
    multiseed = load_benchmark("multiseed")
    for lang, relative in multiseed.CORPUS_FILES.items():
        path = root / relative
        path.parent.mkdir(parents=True)
        lines = "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in generate_stories(lang, 140, seed=3))
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "wt", encoding="utf-8") as f:
            f.write(lines)
    return root


def run(script: str, argv: list[str]) -> int:
    threads = torch.get_num_threads()
    try:
        return load_benchmark(script).main(argv)
    finally:
        torch.set_num_threads(threads)


def table_rows(text: str) -> dict[str, list[str]]:
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines() if line.startswith("| ")]
    return {r[0]: r for r in rows}


def test_objectives_over_two_seeds(corpora, tmp_path):
    doc = tmp_path / "results.md"
    doc.write_text(NOTES.format("compare_objectives"), encoding="utf-8")
    argv = ["--quick", "--steps", "3", "--only", "AR,masked NELBO", "--seeds", "0,1", "--threads", "1",
            "--corpora", str(corpora), "--out", str(tmp_path / "out"), "--doc", str(doc)]
    assert run("compare_objectives", argv) == 0
    per_seed = [json.loads((tmp_path / "out" / f"seed{s}" / "results.json").read_text()) for s in (0, 1)]
    assert all(set(r) == {"AR", "masked NELBO"} for r in per_seed)
    assert all(math.isfinite(r["masked NELBO"]["unigram_en"]) for r in per_seed)
    text = doc.read_text(encoding="utf-8")
    assert text.startswith("# Results\n\nA note above.") and text.endswith("A note below.\n") and "old table" not in text
    rows = table_rows(text)
    header = rows["objective"]
    assert header[-2:] == ["en below unigram, per seed", "plateau seeds"]
    masked = rows["masked NELBO"]
    assert "(" in masked[header.index("en bits/byte")] and "–" in masked[header.index("en bits/byte")]
    assert len(masked[-2].split(" / ")) == 2  # one figure per seed
    assert masked[-1] == "none" or set(masked[-1].split(", ")) <= {"0", "1"}
    assert rows["AR"][-1] == "—" and "unigram (no context)" in rows
    stamp = (tmp_path / "out" / "seed1" / "results.json").stat().st_mtime_ns
    assert run("compare_objectives", argv) == 0  # finished runs are reused, not retrained
    assert (tmp_path / "out" / "seed1" / "results.json").stat().st_mtime_ns == stamp


def test_processes_over_two_seeds(corpora, tmp_path):
    doc = tmp_path / "results_processes.md"
    doc.write_text(NOTES.format("compare_processes"), encoding="utf-8")
    argv = ["--quick", "--steps", "3", "--only", "masked (MDLM NELBO);simplex flow, CE", "--seeds", "0,1",
            "--threads", "1", "--corpora", str(corpora), "--out", str(tmp_path / "out"), "--doc", str(doc)]
    assert run("compare_processes", argv) == 0
    for s in (0, 1):
        assert set(json.loads((tmp_path / "out" / f"seed{s}" / "results.json").read_text())) == {
            "AR", "masked (MDLM NELBO)", "simplex flow, CE"}
    text = doc.read_text(encoding="utf-8")
    assert "A note above." in text and "A note below." in text and "old table" not in text
    rows = table_rows(text)
    assert rows["process"][-2:] == ["below unigram, per seed", "plateau seeds"]
    assert rows["simplex flow, CE"][-2:] == ["n/a / n/a", "—"]  # no bound, no check
    assert rows["process"][1:6] == ["params (trained)", "steps", "train TFLOP", "train min", "held-out (what)"]
    masked, flow = rows["masked (MDLM NELBO)"], rows["simplex flow, CE"]
    assert "–" in masked[5] and len(masked[-2].split(" / ")) == 2  # held-out bits/byte over two seeds
    assert masked[2] == "3" and int(flow[2]) < 3  # equal FLOPs: flow's steps cost more, so it takes fewer


def test_latent_processes_train_the_reference_flops_around_the_seed_ar(corpora, tmp_path):
    """LDLM and VFM rows: their steps make their counted FLOPs equal masked diffusion's, they train around the seed's
    AR run, and their held-out cells say what they report instead of a bound."""
    argv = ["--quick", "--steps", "6", "--only", "LDLM (noise 1.0, 32 latents of the frozen AR);VFM (noise adapter on the frozen AR)",
            "--seeds", "0", "--threads", "1", "--corpora", str(corpora), "--out", str(tmp_path / "out")]
    assert run("compare_processes", argv) == 0
    results = json.loads((tmp_path / "out" / "seed0" / "results.json").read_text())
    m = load_benchmark("compare_processes")
    for name in ("LDLM (noise 1.0, 32 latents of the frozen AR)", "VFM (noise adapter on the frozen AR)"):
        r = results[name]
        assert r["flops_per_step"] > results["AR"]["flops_per_step"]  # the frozen AR's forward is counted
        assert r["steps"] < 6 and r["budget_steps"] == 6
        assert r["generation"] and all(g["scored_tokens"] > 0 for g in r["generation"])
    assert 0.0 <= results["LDLM (noise 1.0, 32 latents of the frozen AR)"]["likelihood"]["reconstruction_accuracy"] <= 1.0
    assert len(results["VFM (noise adapter on the frozen AR)"]["generation"]) == 1  # one pass
    cells = {n: m.held_cell({0: results}, n) for n in results}
    assert "token accuracy" in cells["LDLM (noise 1.0, 32 latents of the frozen AR)"] and "not a bound" in cells["VFM (noise adapter on the frozen AR)"]
    # the sweeps beside the study: a variant trains around the same AR into the same results, and the table shows it
    out, sweeps = tmp_path / "out", ["--quick", "--steps", "6", "--out", str(tmp_path / "out")]
    assert run("latent_sweeps", [*sweeps, "--only", "LDLM, decoder noise 0.5"]) == 0
    variant = json.loads((out / "seed0" / "results.json").read_text())["LDLM, decoder noise 0.5"]
    assert variant["steps"] == results["LDLM (noise 1.0, 32 latents of the frozen AR)"]["steps"]  # the same FLOPs
    assert run("latent_sweeps", [*sweeps, "--prompted", str(tmp_path / "prompted")]) == 0
    assert all((tmp_path / "prompted" / f / "checkpoints").is_dir() for f in ("ldlm-prompted", "cola01-prompted"))
    tables = load_benchmark("latent_sweeps").table([(out, "6")], load_benchmark("latent_sweeps").NOISE_ROWS, "noise")
    assert "| 6 steps | LDLM, 0.5 | 0 |" in tables and "| 6 steps | LDLM, 1.0 (the second row) | 0 |" in tables


def test_spread_and_plateau_helpers():
    m = load_benchmark("multiseed")
    assert m.spread([1.0, 2.0, 6.0], ".1f") == "3.0 (1.0–6.0)"
    assert m.spread([2.5], ".2f", "x") == "2.50x" and m.spread([]) == "n/a"
    assert m.parse_seeds("0, 1,2") == [0, 1, 2]
    with pytest.raises(SystemExit):
        m.parse_seeds("0,0")
    assert m.on_plateau(3.60, 3.55) and m.on_plateau(3.50, 3.55) and not m.on_plateau(3.2, 3.55)
    by_seed = {0: {"x": {"b": 3.60, "u": 3.55}}, 3: {"x": {"b": 3.0, "u": 3.55}}}
    cells = m.plateau_cells(by_seed, "x", lambda r: r["b"], lambda r: r["u"], checked=True)
    assert cells == ["-0.05 / +0.55", "0"]


def test_unigram_bits_per_byte_by_hand():
    m = load_benchmark("multiseed")
    docs = generate_stories("en", 30, seed=5)
    tok = train_tokenizer("char", docs, 0)
    data = held_out(docs[20:], tok, 32)
    counts = Counter()
    for ids in tok.encode_batch(docs[:20]):
        counts.update([tok.bos_id, *ids, tok.eos_id])
    total = sum(counts.values())
    nats = -sum(math.log((counts[t] + 1) / (total + tok.vocab_size)) for w in data.windows for t in w[:, 1:].reshape(-1).tolist())
    assert m.unigram_bits_per_byte(docs[:20], data, tok) == pytest.approx(nats / (math.log(2) * data.bytes))
