"""The seams of issue 13: one flag generator for every verb, one `validate` that refuses what does nothing,
the process registry as the only place that knows the process kinds, and saved runs from before the renames."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from sunfish import registry
from sunfish.checkpoint.files import list_checkpoints, write_manifest
from sunfish.cli import main
from sunfish.config import ConfigError, ModelConfig, ProcessConfig, ProcessKind, RunConfig, SamplerConfig
from sunfish.loading import load_model
from sunfish.validate import check_sampler, validate

from conftest import cli_error
from test_cli import TINY
from test_train import DOCS


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A masked run and a flow run with a learned time warp (4 steps each, character vocabulary)."""
    root = tmp_path_factory.mktemp("arch")
    corpus = root / "corpus.txt"
    corpus.write_text("\n\n".join(DOCS), encoding="utf-8")
    kinds = {"masked": [], "flow": ["--process", "flow", "--process.time_warp=true"]}
    out = {"corpus": corpus}
    for name, extra in kinds.items():
        out[name] = root / name
        assert main(["train", "--preset", "nano", "--data", str(corpus), "--out", str(out[name]), "--steps", "4",
                     *TINY, *extra]) == 0
    return out


def _json(capsys, argv) -> dict:
    capsys.readouterr()
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_every_config_field_is_a_flag_of_sample_and_the_short_form_is_an_alias(runs, capsys):
    base = ["sample", str(runs["masked"]), "--prompt", "the", "--length", "10", "--json", "--seed", "3"]
    long = _json(capsys, [*base, "--sampler.temperature=0.5", "--sampler.steps=5"])
    short = _json(capsys, [*base, "--temperature", "0.5", "--steps", "5"])
    assert long == {**short, "seconds": long["seconds"], "tokens_per_s": long["tokens_per_s"]}
    assert long["steps"] == 5


def test_flags_that_do_nothing_for_the_process_are_refused_in_one_sentence(runs, capsys):
    err = cli_error(capsys, ["sample", str(runs["flow"]), "--guidance", "1"])
    assert "sampler.guidance does nothing for simplex flow models" in err and "masked diffusion" in err
    err = cli_error(capsys, ["sample", str(runs["flow"]), "--sampler.temperature=0.7"])
    assert "sampler.temperature does nothing for simplex flow models" in err
    err = cli_error(capsys, ["train", "--preset", "nano", "--out", str(runs["masked"].parent / "x"),
                             "--process.learned_schedule=true", *TINY])  # the old name of process.time_warp
    assert "process.time_warp does nothing for masked diffusion models" in err and "simplex flow" in err
    assert not (runs["masked"].parent / "x").exists()  # refused before any work


def test_flags_that_do_nothing_under_the_other_settings_are_refused(runs, capsys):
    run = str(runs["masked"])
    assert "sampler.threshold does nothing with sampler.rule = fixed" in cli_error(capsys, ["sample", run, "--threshold", "0.5"])
    assert "sampler.factor does nothing with sampler.rule = fixed" in cli_error(capsys, ["sample", run, "--factor", "2"])
    assert "remasking" in cli_error(capsys, ["sample", run, "--remask-eta", "0.2"])
    assert "adaptive rules" in cli_error(capsys, ["sample", run, "--rule", "threshold", "--steps", "8"])
    assert "drift" in cli_error(capsys, ["sample", run, "--drift"])
    # and what the same settings make useful is accepted
    assert main(["sample", run, "--rule", "threshold", "--threshold", "0.5", "--length", "8"]) == 0


def test_sections_a_verb_does_not_take_and_unknown_keys_get_one_sentence(runs, capsys):
    run = str(runs["masked"])
    assert "does not take --model.* settings" in cli_error(capsys, ["sample", run, "--model.d_model=64"])
    assert "unknown config key 'sampler.temprature'" in cli_error(capsys, ["sample", run, "--sampler.temprature=1"])
    assert "unknown config section 'modle'" in cli_error(capsys, ["sample", run, "--modle.x=1"])
    assert "sets sampler.temperature itself" in cli_error(capsys, ["tune-sampler", run, "--prompts", "p.txt",
                                                                     "--sampler.temperature=0.5"])
    assert "is not a valid CommitRule" in cli_error(capsys, ["sample", run, "--rule", "fastest"])
    assert "eval.max_tokens" in cli_error(capsys, ["eval", run, "--eval.max_tokens=-1"])


def test_help_text_comes_from_the_field_declarations(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    out = capsys.readouterr().out
    assert "--eval.rel_se" in out and "Monte Carlo stops once the standard error" in out
    with pytest.raises(SystemExit):
        main(["sample", "--help"])
    out = capsys.readouterr().out
    assert "--sampler.rule" in out and "--rule" in out and "fixed,ancestral,ancestral_topk,threshold,factor,entropy_bound" in out


def test_validate_refuses_what_a_process_cannot_run_whatever_set_it():
    with pytest.raises(ConfigError, match="causal attention"):
        validate(RunConfig(process=ProcessConfig(kind="ar")))
    with pytest.raises(ConfigError, match="time conditioning"):
        validate(RunConfig(process=ProcessConfig(block_size=4), model=ModelConfig(time_cond="adaln")))
    with pytest.raises(ConfigError, match="self_cond applies to the continuous process only"):
        validate(RunConfig(process=ProcessConfig(kind="flow", self_cond=True)))
    assert validate(RunConfig()) is registry.MASKED
    # values a preset or a checkpoint set are not flags: unused ones pass unless given
    cfg = RunConfig(process=ProcessConfig(kind="flow", mask_schedule="cosine"))
    assert validate(cfg) is registry.FLOW
    with pytest.raises(ConfigError, match="process.mask_schedule does nothing for simplex flow"):
        validate(cfg, ["process.mask_schedule"])


def test_the_registry_covers_every_kind_and_every_field():
    for kind in ProcessKind:
        assert registry.spec_of(ProcessConfig(kind=kind)).name in registry.SPECS
    assert registry.spec_of(ProcessConfig(block_size=8)) is registry.BLOCK
    process_fields = {f.name for f in dataclasses.fields(ProcessConfig)} - {"kind"}
    sampler_fields = {f.name for f in dataclasses.fields(SamplerConfig)}
    read_p = set().union(*(s.process_fields for s in registry.SPECS.values()))
    read_s = set().union(*(s.sampler_fields for s in registry.SPECS.values()))
    assert read_p == process_fields and read_s == sampler_fields  # no field nobody reads, no name that is no field
    check_sampler(registry.MASKED, SamplerConfig(), sampler_fields - {"solver", "eta", "rounding", "clamp", "steps",
                                                                     "policy", "threshold", "factor", "entropy_bound",
                                                                     "remask_eta", "remask_start", "remask_end",
                                                                     "top_k", "top_p", "info_gain_candidates",
                                                                     "info_gain_temperature", "info_gain_weight",
                                                                     "info_gain_heuristic", "draft", "draft_len", "commit_model",
                                                                     "refresh_bound"} - registry._PIPELINE)


def _downgrade(ckpt) -> None:
    """Rewrite a checkpoint as runs saved before the renames wrote it: old config keys, old weight names."""
    tree = json.loads((ckpt / "config.json").read_text())
    tree["process"]["schedule"] = tree["process"].pop("mask_schedule")
    tree["process"]["learned_schedule"] = tree["process"].pop("time_warp")
    tree["process"]["learn_schedule_after"] = tree["process"].pop("time_warp_after")
    tree["sampler"]["schedule"] = tree["sampler"].pop("rule")
    (ckpt / "config.json").write_text(json.dumps(tree))
    for name in ("model.safetensors", "optimizer.safetensors"):
        tensors = load_file(str(ckpt / name))
        save_file({k.replace("process_io.warp.", "process_io.schedule."): v for k, v in tensors.items()}, str(ckpt / name))
    write_manifest(ckpt)


def test_runs_saved_before_the_renames_load_sample_and_resume(runs, tmp_path, capsys):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(runs["flow"], old)
    ckpt = list_checkpoints(old)[-1]
    _downgrade(ckpt)
    assert "process_io.schedule.raw_slope" in load_file(str(ckpt / "model.safetensors"))
    new, legacy = load_model(runs["flow"]), load_model(old)
    assert legacy.cfg == new.cfg and legacy.cfg.process.time_warp
    for (name, a), (_, b) in zip(new.model.state_dict().items(), legacy.model.state_dict().items()):
        assert torch.equal(a, b), name
    argv = ["--prompt", "the", "--length", "8", "--steps", "4", "--json"]
    assert _json(capsys, ["sample", str(old), *argv])["text"] == _json(capsys, ["sample", str(runs["flow"]), *argv])["text"]
    assert main(["train", "--out", str(old), "--resume", "--steps", "5", "--data", str(runs["corpus"]), "--no-progress"]) == 0
