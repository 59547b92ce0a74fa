"""Step distillation (`sunfish distill`): the distilled student decodes in few steps closer to its teacher's many-step
output than the teacher itself does, its distillation loss falls, a resumed run equals an uninterrupted one, teachers
and settings it cannot use are refused in one sentence, and the command line runs end to end into a run that samples."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch

import sunfish
from sunfish.cli import main
from sunfish.config import DistillConfig
from sunfish.distillation.sdtt import kl_to_student, log_probs, sdtt_loss, teacher_targets
from sunfish.process.masked import corrupt
from sunfish.process.schedules import MaskSchedule
from sunfish.distillation.trajectory import rollout, rollout_sampler
from sunfish.registry import DecodeJob, decode
from sunfish.training.corpus import open_corpus

from conftest import cli_error, run_metrics

SENTENCES = ["the cat sat on the mat.", "the dog ran in the park.", "a bird sang in the tree.", "a fish swam in the bowl."]
SHAPE = {"model": {"d_model": 64, "n_layers": 2, "n_heads": 2, "context": 32},
         "train": {"batch_size": 16, "val_every": 0, "log_every": 10, "seq_len": 32}, "data": {"val_fraction": 0.1}}
QUIET = {"progress": False, "log": lambda s: None}


@pytest.fixture(scope="module")
def story(tmp_path_factory):
    """A corpus of four sentences and a small masked model trained on it (the teacher)."""
    root = tmp_path_factory.mktemp("distill")
    corpus = root / "sentences.txt"
    corpus.write_text("\n\n".join(SENTENCES * 40), encoding="utf-8")
    torch.manual_seed(0)
    sunfish.train("nano", out=root / "teacher", data=[str(corpus)], steps=300,
                  overrides={**SHAPE, "optim": {"lr": 3e-3}}, **QUIET)
    return root, str(corpus)


def agreement(model, prompts, reference, steps: int, d: DistillConfig) -> float:
    """Share of generated tokens equal to `reference` when `model` decodes prompts (B, P) greedily in `steps` steps."""
    cfg, mask_id = model.cfg, model.tokenizer.mask_id
    sampler = dataclasses.replace(rollout_sampler(d, cfg.process), steps=steps)
    canvas = torch.cat([prompts, torch.full((prompts.shape[0], d.gen_length), mask_id)], 1)
    job = DecodeJob(mask_id=mask_id, process=cfg.process, generator=torch.Generator().manual_seed(0))
    out = decode(model.model, canvas, prompts.shape[1], sampler, job).tokens
    P = prompts.shape[1]
    return float((out[:, P:] == reference[:, P:]).float().mean())


def test_trajectory_distillation_decodes_in_a_quarter_of_the_steps_closer_to_the_teachers_output(story):
    root, corpus = story
    result = sunfish.distill(root / "teacher", out=root / "trajectory", data=[corpus], mode="trajectory",
                             round_steps=150, prompt_length=4, gen_length=16, block_length=8,
                             overrides={"optim": {"lr": 1e-3}}, **QUIET)
    teacher, student = sunfish.load(root / "teacher", device="cpu"), sunfish.load(result.run_dir, device="cpu")
    d = student.cfg.distill
    windows = open_corpus(student.cfg, [corpus], teacher.tokenizer).train.batches(32, 123).next_batch(32)
    prompts = windows[:, : d.prompt_length]
    reference, _ = rollout(teacher.model, prompts, d, teacher.cfg.process, teacher.tokenizer.mask_id)  # 16 steps
    assert agreement(teacher, prompts, reference, d.gen_length, d) == 1.0  # the reference is the teacher's decoding
    few = d.gen_length // 4
    assert agreement(student, prompts, reference, few, d) > agreement(teacher, prompts, reference, few, d) + 0.03
    assert student.cfg.distill.teacher == str((root / "teacher").resolve())
    records = run_metrics(result.run_dir)
    assert {r["round"] for r in records} == {1}


def test_teacher_targets_are_the_teachers_distributions_at_the_step_that_revealed_each_position(story):
    root, corpus = story
    teacher = sunfish.load(root / "teacher", device="cpu")
    mask_id, process = teacher.tokenizer.mask_id, teacher.cfg.process
    schedule = MaskSchedule(process.mask_schedule, process.eps)
    x0 = open_corpus(teacher.cfg, [corpus], teacher.tokenizer).val.batches(32, 1).next_batch(8)
    t = torch.ones(x0.shape)  # one student step (dt = 1): the teacher goes 1 -> 1/2 -> 0, revealing everything
    zt, masked = corrupt(x0, t, schedule, mask_id, torch.Generator().manual_seed(0))
    targets = teacher_targets(teacher.model, zt, x0, t, 1.0, process, mask_id, torch.Generator().manual_seed(1))
    first = log_probs(teacher.model, zt, x0, masked, process, mask_id, schedule)  # the teacher's pass on z_t
    same = torch.isclose(targets, first, atol=1e-5).all(-1)  # (N,) revealed in the first step
    assert targets.shape == first.shape and torch.allclose(targets.exp().sum(-1), torch.ones(len(targets)))
    assert 0.3 < same.float().mean() < 0.7  # about half the masks are revealed from t = 1 to 1/2 (linear alpha)
    assert float(kl_to_student(targets, targets).abs().max()) < 1e-5


def test_rollouts_commit_one_token_per_step_block_by_block(story):
    root, corpus = story
    teacher = sunfish.load(root / "teacher", device="cpu")
    d = DistillConfig(prompt_length=4, gen_length=16, block_length=8)
    prompts = open_corpus(teacher.cfg, [corpus], teacher.tokenizer).train.batches(32, 5).next_batch(6)[:, :4]
    tokens, order = rollout(teacher.model, prompts, d, teacher.cfg.process, teacher.tokenizer.mask_id)
    assert torch.equal(tokens[:, :4], prompts) and (order[:, :4] == -1).all()
    assert torch.equal(order[:, 4:].sort(-1).values, torch.arange(16).expand(6, 16))  # each step commits one
    assert (order[:, 4:12].max(-1).values < order[:, 12:].min(-1).values).all()  # the first block finishes first
    assert (tokens != teacher.tokenizer.mask_id).all()


def test_sdtt_lowers_the_distillation_loss(story):
    root, corpus = story
    result = sunfish.distill(root / "teacher", out=root / "sdtt", data=[corpus], round_steps=60, steps_start=16,
                             overrides={"optim": {"lr": 1e-3}}, **QUIET)
    assert {r["student_steps"] for r in run_metrics(result.run_dir)} == {8}
    teacher, student = sunfish.load(root / "teacher", device="cpu"), sunfish.load(result.run_dir, device="cpu")
    x0 = open_corpus(student.cfg, [corpus], teacher.tokenizer).val.batches(32, 7).next_batch(32)
    mask_id, process = teacher.tokenizer.mask_id, teacher.cfg.process

    def loss(model, seed):  # the objective (8 student steps against the teacher's 16) at fixed noise
        return float(sdtt_loss(model, teacher.model, x0, process, mask_id, 8, torch.Generator().manual_seed(seed)).loss)

    with torch.no_grad():
        before = sum(loss(teacher.model, seed) for seed in range(8))  # the student before training is the teacher
        after = sum(loss(student.model, seed) for seed in range(8))
    assert after < before


@pytest.mark.parametrize("mode,pool", [("sdtt", 0), ("trajectory", 0), ("trajectory", 6)])
def test_a_resumed_distillation_equals_an_uninterrupted_one(story, mode, pool):
    root, corpus = story
    extra = {"prompt_length": 4, "gen_length": 8, "block_length": 4, "pool": pool} if mode == "trajectory" else \
        {"steps_start": 8, "data_weight": 0.5}
    settings = dict(data=[corpus], mode=mode, rounds=2, round_steps=3,
                    overrides={"train": {"save_every": 2, "log_every": 1}}, **extra)
    whole = sunfish.distill(root / "teacher", out=root / f"whole-{mode}-{pool}", **settings, **QUIET)
    cut = root / f"cut-{mode}-{pool}"
    shutil.copytree(whole.run_dir, cut)
    for later in ("step-000006", "step-000005"):  # back to step 4, inside the second round
        shutil.rmtree(cut / "checkpoints" / later, ignore_errors=True)
    resumed = sunfish.distill(root / "teacher", out=cut, resume=True, **settings, **QUIET)
    records = run_metrics(resumed.run_dir)
    assert records == run_metrics(whole.run_dir)
    assert [r["round"] for r in records] == [1, 1, 1, 2, 2, 2]
    if mode == "sdtt":  # the step count halves each round; round 2's teacher was read back from the run folder
        assert [r["student_steps"] for r in records] == [4, 4, 4, 2, 2, 2]
        assert (cut / "distill" / "teacher-round-2.safetensors").is_file()
    if pool:  # each round rolled its pool out once, and the resumed run read round 2's back
        assert all((cut / "distill" / f"rollouts-round-{r}.safetensors").is_file() for r in (1, 2))
    a, b = (sunfish.load(r.run_dir, device="cpu").model.state_dict() for r in (whole, resumed))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_teachers_and_settings_it_cannot_use_are_refused(story, capsys, tmp_path):
    root, corpus = story
    ar = tmp_path / "ar"
    sunfish.train("nano", out=ar, data=[corpus], steps=2, overrides={**SHAPE, "process": {"kind": "ar"},
                  "model": {**SHAPE["model"], "attention": "causal"}}, **QUIET)
    teacher = str(root / "teacher")
    assert "masked or block diffusion teacher" in cli_error(capsys, ["distill", str(ar), "--out", str(tmp_path / "x")])
    err = cli_error(capsys, ["distill", teacher, "--out", str(tmp_path / "x"), "--distill.gen_length=8"])
    assert "distill.gen_length does not apply to --distill.mode=sdtt" in err
    err = cli_error(capsys, ["distill", teacher, "--out", str(tmp_path / "x"), "--distill.rounds=3",
                             "--distill.steps_start=12"])
    assert "multiple of 8" in err
    err = cli_error(capsys, ["distill", teacher, "--out", str(tmp_path / "x"), "--distill.mode=trajectory",
                             "--distill.prompt_length=20", "--distill.gen_length=20"])
    assert "exceeds the model's context of 32" in err
    err = cli_error(capsys, ["distill", teacher, "--out", str(tmp_path / "x"), "--distill.mode=trajectory",
                             "--distill.rollout_batch=4"])
    assert "set --distill.pool" in err
    with pytest.raises(ValueError, match="distill.rounds x distill.round_steps"):
        sunfish.distill(teacher, out=tmp_path / "x", overrides={"train": {"steps": 5}}, **QUIET)
    assert not (tmp_path / "x").exists()


def test_the_command_line_distils_a_run_that_samples(story, capsys, tmp_path):
    root, corpus = story
    out = tmp_path / "fast"
    assert main(["distill", str(root / "teacher"), "--out", str(out), "--data", corpus, "--distill.mode=trajectory",
                 "--distill.round_steps=3", "--distill.prompt_length=4", "--distill.gen_length=8",
                 "--distill.cache=dual", "--no-progress"]) == 0
    assert "distillation loss" in capsys.readouterr().out
    assert main(["sample", str(out), "--prompt", "the ", "--length", "8", "--json"]) == 0
    body = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert body["text"].startswith("the ")
    assert main(["distill", str(root / "teacher"), "--out", str(out), "--data", corpus, "--distill.mode=trajectory",
                 "--distill.round_steps=3", "--distill.prompt_length=4", "--distill.gen_length=8",
                 "--distill.cache=dual", "--no-progress"]) == 2  # a finished run is never written over


@pytest.mark.parametrize("mode", ["sdtt", "trajectory"])
def test_a_block_diffusion_teacher_distils_into_a_block_run(story, mode, tmp_path):
    root, corpus = story
    block = tmp_path / "block"
    sunfish.train("nano", out=block, data=[corpus], steps=2, overrides={**SHAPE, "process": {"block_size": 8},
                  "model": {**SHAPE["model"], "time_cond": "none", "layout": "same"}}, **QUIET)
    extra = {"prompt_length": 8, "gen_length": 16} if mode == "trajectory" else {"steps_start": 4}
    result = sunfish.distill(block, out=tmp_path / "fast", data=[corpus], mode=mode, round_steps=2, **extra, **QUIET)
    student = sunfish.load(result.run_dir, device="cpu")
    assert student.spec.name == "block" and student.cfg.process.block_size == 8
    assert len(student.generate("the ", max_new_tokens=16, stop_at_eos=False).ids) == 16
    with pytest.raises(ValueError, match="distill.block_length does not apply to a block-diffusion teacher"):
        sunfish.distill(block, out=tmp_path / "other", data=[corpus], mode="trajectory", block_length=4, **QUIET)
