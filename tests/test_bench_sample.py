"""`sunfish bench sample`: every row of the table for a tiny length, figures that follow from the settings,
and the target verdicts computed from the rows (never from wall-clock time in a test)."""

import dataclasses
import json

import pytest

from sunfish.cli import main
import torch

from sunfish.sample.bench import BenchError, BenchRow, agreement, confidence_profile, unigram_entropy
from sunfish.sample.bench_targets import target_report, within_quality
from sunfish.loading import load_model

from conftest import cli_error
from test_train import DOCS

TINY = ["--model.d_model=32", "--model.n_layers=1", "--model.n_heads=2", "--model.context=48",
        "--train.batch_size=4", "--train.val_every=0", "--data.val_fraction=0.2", "--no-progress"]
METHODS = ["baseline: LLaDA 1 token/step", "+ threshold 0.9", "+ prefix cache", "+ dual cache",
           "block diffusion 1 token/step, exact cache", "block diffusion threshold 0.9, exact cache",
           "block diffusion pipelined (D2F, start 0.5), threshold 0.9", "causal model, KV cache", "self-speculative K=2",
           "block diffusion self-speculative K=2"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    corpus = root / "corpus.txt"
    corpus.write_text("\n\n".join(DOCS), encoding="utf-8")
    kinds = {"diffusion": [], "ar": ["--objective", "ar"], "block": ["--process.block_size=4"]}
    out = {}
    for name, extra in kinds.items():
        out[name] = root / name
        assert main(["train", "--preset", "nano", "--data", str(corpus), "--out", str(out[name]), "--steps", "4", *TINY, *extra]) == 0
    prompts = root / "prompts.txt"
    prompts.write_text("the cat\na little girl\n", encoding="utf-8")
    out["prompts"] = prompts
    return out


def table_rows(out: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in out.splitlines()
            if line.startswith("| ") and not line.startswith("| length")]


def test_table_has_every_row(runs, capsys):
    capsys.readouterr()
    argv = ["bench", "sample", str(runs["diffusion"]), "--ar", str(runs["ar"]), "--block", str(runs["block"]),
            "--lengths", "8", "--batch", "1,2", "--repeats", "1", "--prompts", str(runs["prompts"]), "--block-length", "4"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    rows = table_rows(out)
    assert [(r[0], r[1], r[2]) for r in rows] == [("8", b, m) for b in ("1", "2") for m in METHODS]
    for r in rows:
        speed, nfe, tpf, speedup = float(r[3].replace(",", "")), float(r[4]), float(r[5]), float(r[6].rstrip("x"))
        speculative = "speculative" in r[2]  # several commits per target pass
        assert speed > 0 and (nfe >= 1.0 or speculative) and speedup > 0  # 8 tokens need at least 8 passes otherwise
        assert tpf == pytest.approx(1 / nfe, abs=0.01)  # tokens per forward pass
        if speculative:  # the baseline's output exactly, with its acceptance rate
            assert r[7] == "1.000" and 0.0 <= float(r[11]) <= 1.0 and nfe <= int(r[1])  # rows verified one by one
        if r[2] in METHODS[1:4] + METHODS[5:7]:
            assert 0.0 <= float(r[7]) <= 1.0  # agreement with the row's reference output
        assert float(r[8]) > 1.0 and 0.0 <= float(r[9]) <= 1.0  # generative perplexity, distinct-2
    baseline = [r for r in rows if r[2] == METHODS[0]]
    assert all(r[4] == "1.000" and r[6] == "1.00x" for r in baseline)  # one token per step, the reference speed
    assert "the causal model" in out and "scored by itself" in out


def test_distilled_rows_and_a_reference_scorer(runs, capsys):
    """--distilled adds the student's rows, measured against its own one-token-per-step output; --reference scores
    generative perplexity in place of the same-size causal model (here: the diffusion model itself as the student,
    so its one-token-per-step output equals the baseline's)."""
    capsys.readouterr()
    argv = ["bench", "sample", str(runs["diffusion"]), "--distilled", str(runs["diffusion"]), "--reference",
            str(runs["ar"]), "--lengths", "8", "--batch", "1", "--repeats", "1", "--prompts", str(runs["prompts"]),
            "--block-length", "4"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    rows = {r[2]: r for r in table_rows(out)}
    assert list(rows) == METHODS[:4] + ["distilled 1 token/step", "distilled threshold 0.9",
                                        "distilled threshold 0.9, dual cache"] + METHODS[8:9]
    assert rows["distilled 1 token/step"][8] == rows[METHODS[0]][8]  # same model, same output, same scorer
    assert rows["distilled threshold 0.9"][7] == rows[METHODS[1]][7]  # agreement with its own 1 token/step output
    assert f"the reference model {runs['ar']}" in out
    assert "not a masked diffusion model" in cli_error(capsys, argv[:3] + ["--distilled", str(runs["ar"])] + argv[5:])


@pytest.mark.parametrize("kind", ["diffusion", "block", "ar"])
def test_a_batch_of_different_prompts_decodes_as_each_alone(runs, kind):
    import torch

    from sunfish.config import SamplerConfig
    from sunfish.sample.bench import decode, one_per_step, prompt_ids
    from sunfish.loading import load_model

    loaded = load_model(runs[kind], torch.device("cpu"))
    rows = prompt_ids(loaded, ["the cat", "a little girl found"], 8)  # 8 and 19 tokens: left padding
    cfg = dataclasses.replace(one_per_step(SamplerConfig(length=8, block_length=4)), rule="threshold", threshold=0.5)
    together = decode(loaded, rows, cfg)
    assert together.tokens == [decode(loaded, [r], cfg).tokens[0] for r in rows]


def test_without_optional_models(runs, capsys):
    capsys.readouterr()
    assert main(["bench", "sample", str(runs["diffusion"]), "--lengths", "6", "--batch", "1", "--repeats", "2",
                 "--prompts", str(runs["prompts"])]) == 0
    rows = table_rows(capsys.readouterr().out)
    assert [r[2] for r in rows] == METHODS[:4] + METHODS[8:9] and all(r[8] == "-" for r in rows)


def row(method, speedup, ppl=None, agree=None, length=256, tpf=1.0, reference="baseline"):
    model = "ar" if method.startswith("causal") else "diffusion"
    return BenchRow(length=length, batch=1, method=method, model=model, tokens_per_s=10.0 * speedup,
                    nfe_per_token=1.0 / tpf, speedup=speedup, agreement=agree, gen_ppl=ppl, entropy=1.0,
                    reference=None if method in ("baseline", "student 1/step") or model == "ar" else reference)


def test_target_verdicts_follow_the_rows():
    base = row("baseline", 1.0, ppl=10.0)
    met = target_report([base, row("+ dual cache", 9.0, ppl=10.1), row("causal model, KV cache", 5.0, ppl=4.0)])
    assert "MET (+ dual cache at 9.0x)" in met[0] and "NOT" not in met[0]
    assert "NOT MET (no diffusion row at its quality: best gen. PPL 10.00 (baseline) vs 4.00)" in met[2]
    equal = target_report([base, row("+ dual cache", 9.0, ppl=10.0), row("causal model, KV cache", 5.0, ppl=10.0)])
    assert "MET (+ dual cache at 1.80x its tokens/s, gen. PPL 10.00 vs 10.00)" in equal[2] and "NOT" not in equal[2]
    slower = target_report([base, row("+ dual cache", 9.0, ppl=10.0), row("causal model, KV cache", 12.0, ppl=10.0)])
    assert "NOT MET (+ dual cache at 0.75x" in slower[2]
    worse = target_report([base, row("+ dual cache", 9.0, ppl=10.5), row("+ threshold 0.9", 3.0, ppl=10.0)])
    assert "NOT MET (+ threshold 0.9 at 3.0x)" in worse[0]  # 5% worse perplexity does not count
    assert within_quality(row("x", 2.0, agree=0.985), row("b", 1.0)) and not within_quality(row("x", 2.0, agree=0.9), row("b", 1.0))
    assert target_report([row("baseline", 1.0, length=64), row("x", 2.0, length=64)]) == []  # no target at 64


def test_few_step_target_compares_each_row_with_its_own_one_token_per_step_row():
    base, student = row("baseline", 1.0, ppl=10.0), row("student 1/step", 0.9, ppl=20.0)
    fast = row("student fast", 4.0, ppl=20.9, tpf=4.5, reference="student 1/step")  # within 5% of 20.0, not of 10.0
    assert "MET (student fast: TPF 4.50)" in target_report([base, student, fast])[1]
    off = row("student fast", 4.0, ppl=21.5, tpf=4.5, reference="student 1/step")  # 7.5% worse than its own
    slow = row("+ threshold 0.9", 1.2, ppl=10.2, tpf=1.3)
    line = target_report([base, student, off, slow])[1]
    assert "NOT MET (the most within quality is + threshold 0.9 at TPF 1.30; the highest TPF is student fast's 4.50)" in line


def test_quality_figures():
    assert agreement([[1, 2, 3], [4, 5, 6]], [[1, 2, 0], [4, 0, 0]]) == pytest.approx(3 / 6)
    assert unigram_entropy([[7, 7, 7, 7]]) == 0.0 and unigram_entropy([[1, 2]]) == pytest.approx(0.6931, abs=1e-4)


def test_bad_inputs_get_one_sentence(runs, capsys):
    def error(argv):
        capsys.readouterr()
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("sunfish: error: ") and len(err.splitlines()) == 1
        return err

    d, prompts = str(runs["diffusion"]), str(runs["prompts"])
    assert "not a block-diffusion model" in error(["bench", "sample", d, "--block", d, "--prompts", prompts])
    assert "not autoregressive" in error(["bench", "sample", d, "--ar", str(runs["block"]), "--prompts", prompts])
    assert "not a masked diffusion model" in error(["bench", "sample", str(runs["ar"]), "--prompts", prompts])
    assert "--lengths" in error(["bench", "sample", d, "--lengths", "0", "--prompts", prompts])
    assert "context" in error(["bench", "sample", d, "--lengths", "100", "--prompts", prompts])
    assert "built-in prompts" in error(["bench", "sample", d, "--lengths", "4"])  # a character vocabulary without 'O'


def test_confidence_profile_counts_what_threshold_decoding_may_commit(runs, tmp_path, capsys):
    loaded = load_model(runs["diffusion"], torch.device("cpu"))
    texts = DOCS[:6]
    sure = {r.regime: r for r in confidence_profile(loaded, texts, threshold=1e-6, block_length=4)}
    never = {r.regime: r for r in confidence_profile(loaded, texts, threshold=1.0 - 1e-9, block_length=4)}
    assert list(sure) == ["random 10%", "random 50%", "random 90%", "block start"]
    assert all(r.confident == 1.0 for r in sure.values()) and all(r.confident == 0.0 for r in never.values())
    assert sure["block start"].positions == 4 * len(texts)  # the first block of masks after each cut
    assert all(0.0 <= r.accuracy <= 1.0 for r in sure.values())
    assert [r.accuracy for r in sure.values()] == [r.accuracy for r in never.values()]  # same seed, same masks
    with pytest.raises(BenchError, match="masked diffusion"):
        confidence_profile(load_model(runs["ar"], torch.device("cpu")), texts)
    held = tmp_path / "held.jsonl"  # the corpora's own format: one {"text": ...} per line
    held.write_text("\n".join(json.dumps({"text": t}) for t in texts), encoding="utf-8")
    capsys.readouterr()
    argv = ["bench", "sample", str(runs["diffusion"]), "--lengths", "8", "--batch", "1", "--repeats", "1",
            "--prompts", str(runs["prompts"]), "--block-length", "4", "--held-out"]
    assert main(argv + [str(held)]) == 0
    assert "| block start | 24 |" in capsys.readouterr().out
    assert "held-out file" in cli_error(capsys, argv + [str(tmp_path / "none.txt")])
    short = tmp_path / "short.txt"
    short.write_text("ab\n", encoding="utf-8")
    assert "shorter than --block-length" in cli_error(capsys, argv + [str(short)])


def test_default_lengths_fit_the_model_and_longer_ones_are_skipped_with_a_note(runs, capsys):
    """Context 48: none of 64, 256, 1024 fits after the prompt, so the largest power of two that does is used."""
    capsys.readouterr()
    assert main(["bench", "sample", str(runs["diffusion"]), "--batch", "1", "--repeats", "1",
                 "--prompts", str(runs["prompts"])]) == 0
    out = capsys.readouterr().out
    assert "note: length 64 skipped" in out and "note: length 1024 skipped" in out
    assert "generating 32 tokens instead" in out
    assert {row[0] for row in table_rows(out)} == {"32"}
