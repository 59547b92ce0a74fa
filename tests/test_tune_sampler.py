"""`sunfish tune-sampler`: the chosen setting satisfies the bound, is written atomically, --dry-run writes nothing."""

import json

import pytest
import torch

from sunfish import fileio
from sunfish.cli import main
from sunfish.config import CommitRule
from sunfish.sample import tune as tune_module
from sunfish.sample.tune import Quality, candidates, chosen_values, is_exact, tune
from sunfish.checkpoint.files import resolve_checkpoint
from sunfish.loading import load_model

from conftest import cli_error

from test_train import DOCS

TINY = ["--model.d_model=32", "--model.n_layers=1", "--model.n_heads=2", "--model.context=48",
        "--train.batch_size=4", "--train.val_every=0", "--data.val_fraction=0.2", "--no-progress"]
GRID = ["--length", "12", "--thresholds", "0.5", "--steps", "3", "--block-lengths", "0,4"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tune")
    corpus = root / "corpus.txt"
    corpus.write_text("\n\n".join(DOCS), encoding="utf-8")
    out = {}
    for name, extra in {"diffusion": [], "ar": ["--objective", "ar"]}.items():
        out[name] = root / name
        assert main(["train", "--preset", "nano", "--data", str(corpus), "--out", str(out[name]), "--steps", "4", *TINY, *extra]) == 0
    prompts = root / "prompts.txt"
    prompts.write_text("the cat\n\na little girl\n", encoding="utf-8")
    out["prompts"] = prompts
    return out


def config_bytes(run) -> bytes:
    return (resolve_checkpoint(run) / "config.json").read_bytes()




def test_dry_run_prints_the_table_and_writes_nothing(runs, capsys):
    before = config_bytes(runs["diffusion"])
    capsys.readouterr()
    assert main(["tune-sampler", str(runs["diffusion"]), "--prompts", str(runs["prompts"]), *GRID, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "| setting | tokens/s | NFE/token | agreement |" in out and "exact: 1 token/step" in out
    assert "threshold 0.5, block 4, cache dual" in out and "3 steps, one block, cache prefix" in out
    assert "factor 1, block 4, cache prefix" in out and "entropy bound 0.1, one block, cache none" in out
    assert "--dry-run: nothing written" in out
    ckpt = resolve_checkpoint(runs["diffusion"])
    assert config_bytes(runs["diffusion"]) == before and not (ckpt / "config.json.bak").exists()
    assert not [p for p in ckpt.iterdir() if ".tmp-" in p.name]


def test_writes_the_chosen_setting_atomically_and_sample_uses_it(runs, capsys):
    run = runs["diffusion"]
    before = config_bytes(run)
    capsys.readouterr()
    assert main(["tune-sampler", str(run), "--prompts", str(runs["prompts"]), *GRID]) == 0
    out = capsys.readouterr().out
    assert "wrote sampler defaults" in out and "old values" in out
    ckpt = resolve_checkpoint(run)
    assert (ckpt / "config.json.bak").read_bytes() == before  # the previous file is kept
    assert not [p for p in ckpt.iterdir() if ".tmp-" in p.name]
    sampler = json.loads(config_bytes(run))["sampler"]
    assert sampler["length"] == 12
    chosen = out.split("\n| * | ")[1].split(" |")[0]  # the starred row of the table
    assert chosen.split(",")[0] in (f"threshold {sampler['threshold']:g}", f"{sampler['steps']} steps",
                                    "exact: 1 token/step")
    loaded = load_model(run, torch.device("cpu"))  # the written config loads
    assert loaded.cfg.sampler.rule.value == sampler["rule"] and loaded.cfg.sampler.cache.value == sampler["cache"]
    capsys.readouterr()
    assert main(["sample", str(run), "--prompt", "the cat", "--json", "--no-stop-at-eos"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert len(body["text"]) == len("the cat") + 12  # the tuned length is now the default (char tokenizer)


def test_a_failed_write_leaves_the_config_untouched(runs, monkeypatch):
    run = runs["diffusion"]
    before = config_bytes(run)

    def refuse(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(fileio.os, "replace", refuse)
    with pytest.raises(OSError):
        tune_module.write_sampler_defaults(run, {"steps": 3})
    ckpt = resolve_checkpoint(run)
    assert config_bytes(run) == before and not [p for p in ckpt.iterdir() if ".tmp" in p.name]


def test_choice_is_the_fastest_within_the_bound(runs):
    """A model with random weights disagrees with the exact sampler under coarse settings; bound 0 keeps
    only exact agreement, and the chosen setting is the fastest of those."""
    loaded = load_model(runs["diffusion"], torch.device("cpu"))
    torch.manual_seed(0)
    with torch.no_grad():
        for p in loaded.model.parameters():
            p.normal_(0, 0.5)
    result = tune(loaded, ["the cat", "a little girl"], length=12, bound=0.0, thresholds=[0.5, 0.1], steps=[2],
                  block_lengths=[0])
    assert result.trials[0].agreement == 1.0 and result.trials[0].within  # the exact sampler against itself
    assert any(not t.within for t in result.trials)  # 2 steps for 12 tokens changes the output
    assert all(t.within == (t.agreement >= 1.0) for t in result.trials)
    assert result.chosen.within and result.chosen.tokens_per_s == max(t.tokens_per_s for t in result.trials if t.within)


def test_generative_perplexity_bound(runs):
    loaded = load_model(runs["diffusion"], torch.device("cpu"))
    ref = load_model(runs["ar"], torch.device("cpu"))
    result = tune(loaded, ["the cat"], length=8, quality=Quality.GEN_PPL, bound=0.05, ref=ref,
                  thresholds=[0.5], steps=[2], block_lengths=[0])
    exact = result.trials[0]
    assert all(t.gen_ppl is not None and t.gen_ppl > 1 for t in result.trials)
    assert all(t.within == (t.gen_ppl <= 1.05 * exact.gen_ppl) for t in result.trials)
    assert result.chosen.within


def test_spent_budget_keeps_the_exact_sampler(runs):
    loaded = load_model(runs["diffusion"], torch.device("cpu"))
    result = tune(loaded, ["the cat"], length=8, budget_s=1e-9, thresholds=[0.9], steps=[4], block_lengths=[0])
    assert len(result.trials) == 1 and result.skipped >= 4 and result.chosen is result.trials[0]
    assert is_exact(result.chosen.cfg) and result.chosen.nfe_per_token == 1.0  # one token per step


def test_agreement_is_measured_against_the_exact_sampler_of_the_same_layout(runs):
    from sunfish.config import SamplerConfig
    from sunfish.sample.tune import is_exact, with_references

    exact = SamplerConfig(length=16, steps=16)
    todo = candidates(SamplerConfig(length=16), False, [0.9], [8], [0, 4])
    queue = with_references(exact, todo)
    assert queue[0] == exact and [c.block_length for c in queue if is_exact(c)] == [0, 4]
    first_block4 = next(i for i, c in enumerate(queue) if c.block_length == 4)
    assert is_exact(queue[first_block4])  # each layout's reference is measured before its candidates
    loaded = load_model(runs["diffusion"], torch.device("cpu"))
    result = tune(loaded, ["the cat"], length=8, thresholds=[0.9], steps=[4], block_lengths=[0, 4])
    exacts = [t for t in result.trials if is_exact(t.cfg)]
    assert len(exacts) == 2 and all(t.agreement == 1.0 for t in exacts)


def test_grid_skips_settings_that_cannot_finish():
    from sunfish.config import SamplerConfig

    grid = candidates(SamplerConfig(length=16), False, [0.9], [2, 8], [0, 4])
    assert all(c.rule is CommitRule.THRESHOLD or c.steps >= (1 if c.block_length == 0 else 4) for c in grid)
    assert not [c for c in grid if c.block_length == 0 and c.cache.value == "dual"]  # one block: dual = prefix
    block = candidates(SamplerConfig(length=16), True, [0.9], [2, 4], [0], block_size=4)
    assert [c.steps for c in block if c.rule is CommitRule.FIXED] == [4]


def test_bad_inputs_get_one_sentence(runs, tmp_path, capsys):
    run, prompts = str(runs["diffusion"]), str(runs["prompts"])
    assert "prompts file" in cli_error(capsys, ["tune-sampler", run, "--prompts", str(tmp_path / "none.txt")])
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n", encoding="utf-8")
    assert "holds no prompt" in cli_error(capsys, ["tune-sampler", run, "--prompts", str(empty)])
    assert "autoregressive" in cli_error(capsys, ["tune-sampler", str(runs["ar"]), "--prompts", prompts])
    assert "--bound" in cli_error(capsys, ["tune-sampler", run, "--prompts", prompts, "--bound", "1.5"])
    assert "--ref" in cli_error(capsys, ["tune-sampler", run, "--prompts", prompts, "--quality", "gen_ppl"])
    assert "not autoregressive" in cli_error(capsys, ["tune-sampler", run, "--prompts", prompts, "--ref", run])
    assert "context" in cli_error(capsys, ["tune-sampler", run, "--prompts", prompts, "--length", "200"])
    assert "--repeats" in cli_error(capsys, ["tune-sampler", run, "--prompts", prompts, "--repeats", "0"])
    assert "--thresholds" in cli_error(capsys, ["tune-sampler", run, "--prompts", prompts, "--thresholds", "2"])
    assert "not a Sunfish run" in cli_error(capsys, ["tune-sampler", str(tmp_path), "--prompts", prompts])


def test_factor_and_entropy_bound_rules_are_searched_and_stored(runs):
    loaded = load_model(runs["diffusion"], torch.device("cpu"))
    result = tune(loaded, ["the cat"], length=12, thresholds=[], steps=[], block_lengths=[0], factors=[2.0],
                  entropy_bounds=[1.0])
    rules = {t.cfg.rule for t in result.trials}
    assert rules == {CommitRule.FIXED, CommitRule.FACTOR, CommitRule.ENTROPY_BOUND}  # exact + the two
    factor = next(t for t in result.trials if t.cfg.rule is CommitRule.FACTOR)
    assert factor.label == "factor 2, one block, cache none" and factor.nfe_per_token <= 1.0
    assert chosen_values(factor.cfg, False) == {"length": 12, "rule": "factor", "factor": 2.0,
                                                   "block_length": factor.cfg.block_length, "cache": "none"}
    bound = next(t for t in result.trials if t.cfg.rule is CommitRule.ENTROPY_BOUND)
    assert chosen_values(bound.cfg, True)["entropy_bound"] == 1.0
