"""Curricula of masked and block diffusion: what the training objective looks like at step s.

Trained from scratch, masked diffusion first sits on a unigram plateau: its loss stays near the unigram
entropy and does not depend on the mask rate, because at initialisation bidirectional attention averages
over every position (a bag of words) and the network has to discover, through that average, which
neighbours to read (training/plateau.py measures it). The recipes below change the early steps only;
all are off by default (ProcessConfig):

* causal warm-up (`causal_warmup` = f): the first N = int(f x train.steps) steps train next-token prediction
  on clean text with a causal attention mask over the same network, then the masked objective with its own
  attention. A causal mask gives each position its place and its left neighbour for free, so the network
  learns to read neighbours before the flip. The raw state at i predicts token i + 1 in both layouts; under
  the shifted layout (`model.layout = shifted`, Dream, Fast-dLLM v2) that state keeps predicting token i + 1
  after the flip (now as a masked token), as in `sunfish adapt`, where the flip joins two runs instead.
* mask-rate curriculum (`mask_curriculum` = f): t ~ U[eps, t_max(s)], with t_max rising linearly from
  `mask_curriculum_start` to 1 over the first N = int(f x train.steps) steps, so early steps see most
  neighbours of each masked token (BD3-LM's clipped schedules draw t from a sub-interval for a whole run).
* block-size curriculum (`block_curriculum` = f, block diffusion): the block size grows geometrically from
  `block_curriculum_start` to `block_size` over N = int(f x train.steps) steps, B(s) = round(B0 (B / B0)^(s / N));
  B = 1 is the autoregressive chain rule (progressive block scaling, e.g. T*, starts from small blocks too).

Lengths are fractions of the run, so they follow --train.steps as the learning-rate schedule does.
Validation always scores the final objective (`FINAL`), so validation losses compare across steps.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Collection

from sunfish.config import ProcessConfig


@dataclass(frozen=True)
class Stage:
    """The objective of one training step."""

    t_max: float = 1.0  # largest diffusion time drawn, in (eps, 1]
    block_size: int = 0  # block size of this step; 0 = the process's
    causal: bool = False  # a causal warm-up step: next-token prediction with a causal mask


FINAL = Stage()  # the objective the curricula arrive at (and validation scores)
CURRICULA = frozenset({"causal_warmup", "mask_curriculum", "block_curriculum"})  # the ProcessConfig fields that start one


def stage_at(cfg: ProcessConfig, step: int, total: int, reads: Collection[str] = CURRICULA) -> Stage:
    """The stage of 0-based training step `step` of `total` under the curricula of `cfg` that the process reads
    (`reads`: its registry entry's process fields; a curriculum a preset sets for another process is ignored)."""
    if step < int(cfg.causal_warmup * total) and "causal_warmup" in reads:
        return Stage(causal=True)
    t_max, block = 1.0, 0
    span = int(cfg.mask_curriculum * total)
    if step < span and "mask_curriculum" in reads:
        t_max = cfg.mask_curriculum_start + (1.0 - cfg.mask_curriculum_start) * step / span
    span = int(cfg.block_curriculum * total)
    if step < span and cfg.block_size > 0 and "block_curriculum" in reads:
        b0 = min(cfg.block_curriculum_start, cfg.block_size)
        block = min(cfg.block_size, max(1, round(b0 * (cfg.block_size / b0) ** (step / span))))
    return Stage(t_max=t_max, block_size=block)


def stage_process(cfg: ProcessConfig, stage: Stage) -> ProcessConfig:
    """The process config of a stage: its block size in place of the final one."""
    return dataclasses.replace(cfg, block_size=stage.block_size) if stage.block_size else cfg
