"""The unigram-plateau probe: does the per-token loss of a masked (or block) diffusion model depend on the mask
rate yet?

Trained from scratch, masked diffusion first predicts each masked token from a bag of the visible words
(process/curriculum.py says why): its loss sits near the unigram entropy whatever the mask rate, so seeing
more neighbours does not help. At each validation pass the trainer draws one uniform u per token of the
fixed validation batches (fixed noise), masks the tokens with u < HIGH_RATE (few neighbours visible) in one
pass and those with u < LOW_RATE (most neighbours visible) in another, scores the same tokens, those with
u < LOW_RATE, in both, and logs

    ctx_gain = 1 - CE(LOW_RATE) / CE(HIGH_RATE),

the share of those tokens' loss that the extra neighbours remove (ce_low and ce_high are logged beside it,
in nats per token). Scoring the same tokens at both rates keeps the figure free of which tokens happened to
be drawn. On the plateau ctx_gain stays near 0.01-0.04 (the bag of words tells the language and topic a little
better when more of it is visible); a model that reads its neighbours passes 0.1 within a few hundred steps
(measured on the built-in stories and TinyStories, docs/results.md). The run's plateau exit is the first of
EXIT_PASSES validation passes in a row whose ctx_gain exceeds EXIT_GAIN (a single pass above it can be a
transient: right after a causal warm-up's flip, or while a mask-rate curriculum has not yet trained the high
rate); it is logged once as `plateau_exit` at the pass that confirms it, and kept in the checkpoints'
state.json and in TrainResult.plateau_exit.

Cost: two forward passes per validation batch without backward (a validation pass costs three times what it
did); nothing else in training changes, and the probe draws from its own noise streams.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from sunfish.config import ProcessConfig
from sunfish.process.schedules import MaskSchedule

LOW_RATE = 0.1  # mask rate with most neighbours visible
HIGH_RATE = 0.9  # mask rate with few neighbours visible
EXIT_GAIN = 0.05  # ctx_gain above which the model has left the plateau
EXIT_PASSES = 2  # validation passes in a row above EXIT_GAIN that confirm the exit


@dataclass(frozen=True)
class Probe:
    """Validation loss of the probed tokens (nats per token) with LOW_RATE and with HIGH_RATE of the text masked."""

    ce_low: float  # at LOW_RATE
    ce_high: float  # at HIGH_RATE

    @property
    def gain(self) -> float:
        """1 - CE(low) / CE(high): 0 while the loss ignores the mask rate."""
        return 1.0 - self.ce_low / self.ce_high if self.ce_high > 0 else 0.0

    @property
    def left_plateau(self) -> bool:
        return self.gain > EXIT_GAIN

    def figures(self) -> dict[str, float]:
        """What metrics.jsonl records."""
        return {"ctx_gain": round(self.gain, 5), "ce_low": round(self.ce_low, 5), "ce_high": round(self.ce_high, 5)}


@dataclass
class PlateauExit:
    """The run's plateau exit, found online: the first of EXIT_PASSES validation passes in a row above EXIT_GAIN."""

    step: int | None = None  # the exit, once confirmed
    since: int | None = None  # the first step of the current passes above EXIT_GAIN
    passes: int = 0  # how many passes in a row have been above it

    def update(self, step: int, probe: Probe) -> bool:
        """Count the probe of the validation pass at `step`; True when it confirms the exit."""
        if self.step is not None:
            return False
        if not probe.left_plateau:
            self.since, self.passes = None, 0
            return False
        self.since, self.passes = (step if self.since is None else self.since), self.passes + 1
        if self.passes >= EXIT_PASSES:
            self.step = self.since
            return True
        return False

    def state(self) -> dict:
        return {"plateau_exit": self.step, "plateau_since": self.since, "plateau_passes": self.passes}

    @classmethod
    def from_state(cls, extra: dict) -> "PlateauExit":
        return cls(extra.get("plateau_exit"), extra.get("plateau_since"), int(extra.get("plateau_passes") or 0))


def measure(scores: Callable[..., torch.Tensor], process: ProcessConfig, mask_id: int) -> Callable[..., torch.Tensor]:
    """The per-batch figure of the probe for a process's `scores` (registry.ProcessSpec.scores):
    (model, x (B, L), generator) -> [sum of -log p at LOW_RATE, sum at HIGH_RATE, tokens scored] (3,)."""
    schedule = MaskSchedule(process.mask_schedule, process.eps)

    def both_rates(model, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        u = torch.rand(x.shape, generator=generator, device=generator.device).to(x.device)  # (B, L)
        u[:, 0] = 1.0  # the first token is never masked (as in the likelihood estimators)
        scored = u < LOW_RATE  # (B, L)
        sums = []
        for rate in (LOW_RATE, HIGH_RATE):
            t = schedule.time_of_alpha(torch.full((x.shape[0],), 1.0 - rate, device=x.device))  # (B,)
            z = torch.where(u < rate, torch.full_like(x, mask_id), x)  # (B, L)
            sums.append(scores(model, z, x, t, scored, process).sum())
        return torch.stack([*sums, scored.sum().to(sums[0].dtype)])

    return both_rates


def probe_of(sums: list[float]) -> Probe:
    """The probe from the summed per-batch figures of `measure`."""
    nll_low, nll_high, count = sums
    return Probe(ce_low=nll_low / max(count, 1.0), ce_high=nll_high / max(count, 1.0))
