"""`sunfish bench sample --latent PATH`: rows for latent diffusion (LDLM, Cola) and the VFM noise adapter beside the
masked model's, at the lengths their texts hold, and their place in the verdicts."""

import pytest

from sunfish.cli import main
from sunfish.sample.bench_targets import target_report

from conftest import cli_error
from test_bench_sample import TINY, row, runs, table_rows  # noqa: F401  (runs: the masked, causal and block models)

LATENT = ["--train.batch_size=4", "--train.seq_len=24", "--model.d_model=32", "--model.n_layers=1", "--model.n_heads=2",
          "--train.val_every=0", "--no-progress", "--steps", "3"]


@pytest.fixture(scope="module")
def latent(runs):  # noqa: F811
    root = runs["diffusion"].parent
    out = {}
    for kind, extra in {"ldlm": ["--process.latents=4", "--process.latent_dim=8", "--process.prompt_prob=0.5"],
                        "vfm": ["--process.adapter_layers=1"], "ldlm-np": ["--process.latents=4", "--process.latent_dim=8"]}.items():
        out[kind] = root / kind
        process = kind.split("-")[0]
        assert main(["train", "--preset", "nano", "--process", process, "--process.base", str(runs["ar"]), "--data",
                     str(root / "corpus.txt"), "--out", str(out[kind]), *LATENT, *extra]) == 0
    return out


def test_latent_rows_run_where_the_length_fits(runs, latent, capsys):  # noqa: F811
    capsys.readouterr()
    argv = ["bench", "sample", str(runs["diffusion"]), "--ar", str(runs["ar"]), "--latent", str(latent["ldlm"]),
            "--latent", str(latent["vfm"]), "--latent-steps", "2,5", "--lengths", "8,16", "--batch", "1,2",
            "--repeats", "1", "--prompts", str(runs["prompts"]), "--block-length", "4"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    rows = table_rows(out)
    ldlm = [r for r in rows if r[2].startswith("latent diffusion (LDLM) (ldlm)")]
    vfm = [r for r in rows if r[2].startswith("noise-adapter flow map (VFM) (vfm)")]
    # the texts hold 24 tokens: after the longest prompt ([BOS] "a little girl", 14 tokens) 8 fit and 16 do not
    assert [(r[0], r[1], r[2].rsplit(", ", 1)[1]) for r in ldlm] == [
        ("8", b, s) for b in ("1", "2") for s in ("2 denoising steps", "5 denoising steps")]
    assert [(r[0], r[1], r[2].rsplit(", ", 1)[1]) for r in vfm] == [("8", "1", "one pass"), ("8", "2", "one pass")]
    assert "left out at length 16" in out and any(r[0] == "16" for r in rows)  # the masked rows still run at 16
    for r in ldlm + vfm:
        steps = 1 if r in vfm else int(r[2].rsplit(", ", 1)[1].split()[0])
        groups = int(r[1])  # the two prompts differ in length: each is its own batch, so their passes add up
        assert float(r[4]) == pytest.approx(groups * steps / 8, abs=1e-3)  # NFE per generated token of a row
        assert r[7] == "-" and float(r[8]) > 1.0  # no reference output to agree with; generative perplexity


def test_latent_rows_never_meet_the_few_step_target_for_lack_of_their_own_baseline():
    rows = [row("baseline", 1.0, ppl=10.0, reference=None), row("LDLM, 16 steps", 20.0, ppl=10.0, tpf=16.0, reference=None)]
    rows[1] = type(rows[1])(**{**rows[1].__dict__, "model": "latent"})
    few = [line for line in target_report(rows) if "tokens per forward" in line]
    assert few and all("NOT MET" in line for line in few)


def test_bad_latent_models_get_one_sentence(runs, latent, capsys):  # noqa: F811
    base = ["bench", "sample", str(runs["diffusion"]), "--lengths", "8", "--repeats", "1", "--prompts", str(runs["prompts"])]
    assert "not a latent one" in cli_error(capsys, [*base, "--latent", str(runs["block"])])
    assert "trained without prompts" in cli_error(capsys, [*base, "--latent", str(latent["ldlm-np"])])
    assert "--latent-steps needs positive whole numbers" in cli_error(capsys, [*base, "--latent", str(latent["ldlm"]),
                                                                              "--latent-steps", "0"])


def test_a_prompt_too_long_for_the_latent_model_leaves_its_rows_out_with_a_note(runs, latent, tmp_path, capsys):  # noqa: F811
    prompts = tmp_path / "long.txt"
    prompts.write_text("a little girl went to the park with her dog\n", encoding="utf-8")  # 45 tokens: not in 24
    capsys.readouterr()
    assert main(["bench", "sample", str(runs["diffusion"]), "--latent", str(latent["ldlm"]), "--lengths", "2",
                 "--batch", "1", "--repeats", "1", "--prompts", str(prompts)]) == 0
    out = capsys.readouterr().out
    assert "the longest prompt alone exceeds its texts of 24 tokens" in out
    assert table_rows(out) and not any("LDLM" in r[2] for r in table_rows(out))  # the masked rows still run


def test_a_prompt_that_fills_the_context_gets_one_sentence(runs, tmp_path, capsys):  # noqa: F811
    prompts = tmp_path / "long.txt"
    prompts.write_text("the cat sat on the mat and the dog sat on the log and they were happy\n", encoding="utf-8")
    err = cli_error(capsys, ["bench", "sample", str(runs["diffusion"]), "--repeats", "1", "--prompts", str(prompts)])
    assert "fills the context of 48 tokens by itself" in err and "--prompts FILE" in err
