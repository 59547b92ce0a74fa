"""`sunfish distill TEACHER --out RUN`: step distillation of a masked or block diffusion run, through Sunfish's trainer.

The student starts from TEACHER's weights and config and trains with the distillation loss of `distill.mode`
(sdtt.py: the student's one step matches the teacher's two; trajectory.py: the teacher's greedy decodings with
certainty forcing), plus `distill.data_weight` x the teacher's own training loss on the real windows, through
`training/loop.py` (checkpoints, --resume, validation, metrics.jsonl). The run lasts
`distill.rounds` x `distill.round_steps` optimiser steps. Round 1's teacher is TEACHER; each later round's teacher is
the student as the round before left it (sdtt: with half the step count). That teacher is written to
RUN/distill/teacher-round-R.safetensors when its round starts, and a trajectory round's pool of rollouts to
RUN/distill/rollouts-round-R.safetensors (the format of `sunfish adapt trajectories`), so a resumed run picks them up
and equals an uninterrupted one. Validation reports the student's plain NELBO; the finished run is a masked (or
block) run like any other (`sunfish sample RUN`, `sunfish.load`), its config naming the teacher in `distill.teacher`.
"""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file

from sunfish.config import BaseKind, ConfigError, DistillMode, ParallelKind, RunConfig, apply_tree
from sunfish.distillation.sdtt import sdtt_loss
from sunfish.distillation.trajectory import Rollouts, trajectory_loss
from sunfish.process.masked import LossOutput
from sunfish.registry import spec_of

SDTT_ONLY = ("steps_start",)
TRAJECTORY_ONLY = ("prompt_length", "gen_length", "block_length", "cache", "min_ratio", "max_ratio", "certainty_weight",
                   "pool", "rollout_batch")


def student_steps(cfg: RunConfig, round_index: int) -> int:
    """sdtt: the student's step count in round `round_index` (0-based): steps_start / 2^(round + 1)."""
    return cfg.distill.steps_start >> (round_index + 1)


@dataclass
class DistillObjective:
    """The student's training loss and the teacher of the current round; a plain object, so nothing here is saved
    with the student's weights (`registry.training_loss` asks a model's `objective` for its loss while training)."""

    cfg: RunConfig
    mask_id: int
    run_dir: Path
    first_teacher: dict[str, torch.Tensor]  # TEACHER's weights (on the CPU)
    log: Callable[[str], None]
    rollouts: Rollouts
    pool_prompts: Callable[[], torch.Tensor]  # the prompts (N, P) of distill.pool = N training windows
    student: torch.nn.Module | None = field(default=None, repr=False)
    teacher: torch.nn.Module | None = field(default=None, repr=False)
    round: int = -1  # 0-based round of `teacher`

    def teacher_file(self, round_index: int) -> Path:
        return self.run_dir / "distill" / f"teacher-round-{round_index + 1}.safetensors"

    def before_step(self, step: int) -> dict:
        """Set the teacher of the round holding `step` (1-based); returns the round's figures for metrics.jsonl."""
        d = self.cfg.distill
        round_index = (step - 1) // d.round_steps
        if round_index != self.round:
            self.teacher = self._network(self._teacher_weights(round_index, step))
            self.round = round_index
            self.rollouts.clear()
            if d.mode is DistillMode.TRAJECTORY and d.pool > 0:
                self._fill_pool(round_index)
            what = f"{2 * student_steps(self.cfg, round_index)} -> {student_steps(self.cfg, round_index)} steps" \
                if d.mode is DistillMode.SDTT else "greedy rollouts"
            self.log(f"distill round {round_index + 1} of {d.rounds} from step {step}: {what}")
        figures = {"round": round_index + 1}
        if d.mode is DistillMode.SDTT:
            figures["student_steps"] = student_steps(self.cfg, round_index)
        return figures

    def _teacher_weights(self, round_index: int, step: int) -> dict[str, torch.Tensor]:
        """Round 1: TEACHER's; later rounds: the student's at the round's start (written to the run folder then),
        or, on resume inside the round, that file."""
        if round_index == 0:
            return self.first_teacher
        path = self.teacher_file(round_index)
        if step - 1 == round_index * self.cfg.distill.round_steps:
            weights = {k: v.detach().to("cpu", torch.float32).clone() for k, v in self.student.state_dict().items()}
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")
            save_file(weights, str(tmp))
            tmp.replace(path)
            return weights
        if not path.is_file():
            raise ValueError(f"the teacher of round {round_index + 1} ('{path}') is missing from the run folder; "
                             "start the distillation again with another --out")
        return load_file(str(path))

    def _fill_pool(self, round_index: int) -> None:
        """The round's pool of rollouts: read back from the run folder, or computed and written there."""
        from sunfish.adapt.trajectory import save_trajectories

        path = self.run_dir / "distill" / f"rollouts-round-{round_index + 1}.safetensors"
        device = next(self.student.parameters()).device
        if path.is_file():
            body = load_file(str(path))
            self.rollouts.pool = (body["ids"].to(device), body["order"].long().to(device))
            return
        self.log(f"rolling out {self.cfg.distill.pool} prompts with the round's teacher")
        tokens, order = self.rollouts.fill_pool(self.teacher, self.pool_prompts().to(device), self.cfg.distill.rollout_batch)
        save_trajectories(path, tokens, order)

    def _network(self, weights: dict[str, torch.Tensor]) -> torch.nn.Module:
        from sunfish.registry import build_network

        device = next(self.student.parameters()).device
        teacher = build_network(self.cfg.model, self.cfg.process, device)
        teacher.load_state_dict(weights)
        return teacher.eval().requires_grad_(False)

    def loss(self, model, x0: torch.Tensor, process, mask_id: int, generator: torch.Generator) -> LossOutput:
        if self.teacher is None:
            raise RuntimeError("the distillation's teacher is set by its step hook before the first step")
        if self.cfg.distill.mode is DistillMode.SDTT:
            out = sdtt_loss(model, self.teacher, x0, process, mask_id, student_steps(self.cfg, self.round), generator)
        else:
            out = trajectory_loss(model, self.teacher, x0, self.rollouts, generator)
        weight = self.cfg.distill.data_weight
        if weight == 0:
            return out
        data = spec_of(process).loss(model, x0, process, mask_id, generator)  # the real windows' NELBO
        return dataclasses.replace(out, loss=out.loss + weight * data.loss)


def check_distill(cfg: RunConfig, loaded, given: list[str]) -> None:
    """Refuse, in one sentence, a teacher or settings this distillation cannot use."""
    spec, d = loaded.spec, cfg.distill
    if spec.denoiser is None:
        raise ConfigError(f"distillation needs a masked or block diffusion teacher; '{d.teacher}' is {spec.a_label} model")
    if loaded.hf_config is not None or (cfg.adapt.base and cfg.adapt.kind is BaseKind.HF):
        raise ConfigError("distillation trains Sunfish's own networks; a public or adapted transformers model cannot "
                          "be the teacher (fine-tune or convert it into a Sunfish run first)")
    if cfg.train.parallel is not ParallelKind.NONE:
        raise ConfigError("distillation runs in one process; drop --train.parallel")
    if "train.steps" in given:
        raise ConfigError("a distillation lasts distill.rounds x distill.round_steps steps; set those instead of "
                          "--train.steps")
    other = TRAJECTORY_ONLY if d.mode is DistillMode.SDTT else SDTT_ONLY
    for name in other:
        if f"distill.{name}" in given:
            raise ConfigError(f"distill.{name} does not apply to --distill.mode={d.mode.value}; drop it")
    for name in ("block_length", "cache"):
        if spec.fixed_blocks and f"distill.{name}" in given:
            raise ConfigError(f"distill.{name} does not apply to a block-diffusion teacher, which decodes its trained "
                              f"blocks of {cfg.process.block_size} with an exact cache; drop it")
    if d.mode is DistillMode.SDTT and d.steps_start % (2 ** d.rounds):
        raise ConfigError(f"distill.steps_start ({d.steps_start}) halves in each of {d.rounds} round(s); make it a "
                          f"multiple of {2 ** d.rounds}")
    if d.mode is DistillMode.TRAJECTORY:
        check_trajectory(cfg, given)


def check_trajectory(cfg: RunConfig, given: list[str]) -> None:
    from sunfish.training.corpus import seq_len_of

    d = cfg.distill
    if "distill.rollout_batch" in given and d.pool == 0:
        raise ConfigError("distill.rollout_batch sizes the batches of a pool's rollouts; set --distill.pool or drop it")
    if d.min_ratio > d.max_ratio:
        raise ConfigError(f"distill.min_ratio ({d.min_ratio}) exceeds distill.max_ratio ({d.max_ratio})")
    if d.prompt_length > seq_len_of(cfg):
        raise ConfigError(f"distill.prompt_length ({d.prompt_length}) exceeds the training windows of "
                          f"{seq_len_of(cfg)} tokens")
    if d.prompt_length + d.gen_length > cfg.model.context:
        raise ConfigError(f"a rollout of distill.prompt_length + distill.gen_length = {d.prompt_length + d.gen_length} "
                          f"tokens exceeds the model's context of {cfg.model.context}")


def distill_config(teacher: str | Path, tree: dict | None = None):
    """(the run's config: TEACHER's with `tree` applied, distill.teacher set and the run's length, TEACHER loaded on
    the CPU)."""
    from sunfish.flags import given_keys
    from sunfish.loading import load_model
    from sunfish.validate import validate

    tree = tree or {}
    loaded = load_model(teacher, "cpu")
    given = given_keys(tree)
    start = dataclasses.replace(loaded.cfg, sft=dataclasses.replace(loaded.cfg.sft, lora=False, qlora=False))
    cfg = apply_tree(start, {**tree, "distill": {**tree.get("distill", {}), "teacher": str(Path(teacher).resolve())}})
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=cfg.distill.rounds * cfg.distill.round_steps))
    check_distill(cfg, loaded, given)
    validate(cfg, [k for k in given if not k.startswith("distill.")])
    return cfg, loaded


def check_resume(out: Path, cfg: RunConfig) -> None:
    """A run resumes with the teacher and mode it started with."""
    from sunfish.checkpoint.files import list_checkpoints, read_config

    found = list_checkpoints(out)
    if found:
        saved = read_config(found[-1]).distill
        if (saved.teacher, saved.mode) != (cfg.distill.teacher, cfg.distill.mode):
            raise ValueError(f"the run in '{out}' distils '{saved.teacher}' in {saved.mode.value} mode; resume it with "
                             "that teacher and mode")


def distill(teacher: str | Path, *, out: str | Path, data: list[str] | None = None, tree: dict | None = None,
            resume: bool = False, progress: bool = True, log: Callable[[str], None] = print):
    """Distil TEACHER (a masked or block run) into the run folder `out`; returns the trainer's TrainResult.
    `tree`: {section: {field: value}} settings (train, optim, data, distill); `data`: the training text (files or a
    prepared folder; default: the built-in stories)."""
    from sunfish.checkpoint.files import list_checkpoints
    from sunfish.model.transformer import build_model
    from sunfish.sample.text import never_sampled
    from sunfish.training.corpus import open_corpus, seq_len_of
    from sunfish.training.loop import train

    out = Path(out)
    cfg, loaded = distill_config(teacher, tree)
    if resume:
        check_resume(out, cfg)
    corpus = open_corpus(cfg, list(data) if data else None, loaded.tokenizer)
    mask_id = loaded.tokenizer.mask_id
    weights = {k: v.detach().to(torch.float32).clone() for k, v in loaded.model.state_dict().items()}
    rollouts = Rollouts(cfg.distill, cfg.process, mask_id, never_sampled(loaded.tokenizer))
    windows = lambda: corpus.train.batches(seq_len_of(cfg), cfg.train.seed + 5).next_batch(cfg.distill.pool)
    objective = DistillObjective(cfg=cfg, mask_id=mask_id, run_dir=out, first_teacher=weights, log=log,
                                 rollouts=rollouts, pool_prompts=lambda: windows()[:, : cfg.distill.prompt_length])
    if not list_checkpoints(out):  # what an attempt that never finished a step left is not this run's
        shutil.rmtree(out / "distill", ignore_errors=True)

    def factory(model_cfg, device):
        model = build_model(model_cfg, device)
        model.load_state_dict(weights)
        model.objective = objective
        objective.student = model
        return model

    return train(cfg, run_dir=out, resume=resume, progress=progress, log=log, corpus=corpus, model_factory=factory,
                 step_hook=objective.before_step)
