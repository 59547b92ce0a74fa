"""The unigram-plateau probe: does the per-token loss of a masked (or block) diffusion model depend on the mask
rate yet?

Trained from scratch, masked diffusion first predicts each masked token from a bag of the visible words
(process/curriculum.py says why): its loss sits near the unigram entropy whatever the mask rate, so seeing
more neighbours does not help. At each validation pass the trainer scores the fixed validation batches
with every token masked with probability LOW_RATE (most neighbours visible) and HIGH_RATE (few visible),
with fixed noise, and logs

    ctx_gain = 1 - CE(LOW_RATE) / CE(HIGH_RATE),

the share of the per-token loss that the neighbours remove (ce_low and ce_high are logged beside it, in
nats per masked token). On the plateau ctx_gain stays between 0.01 and 0.03 on the built-in stories and
TinyStories (the bag of words tells the language and the topic a little better when 90% of the words are
visible), and it rises past 0.1 within a few hundred steps once the model reads its neighbours. The first
validation step where ctx_gain exceeds EXIT_GAIN is the run's plateau exit (logged once as `plateau_exit`,
kept in the checkpoints' state.json and in TrainResult.plateau_exit).

Cost: two forward passes per validation batch without backward (a validation pass costs three times what it
did); nothing else in training changes, and the probe draws from its own noise streams.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

LOW_RATE = 0.1  # mask rate with most neighbours visible
HIGH_RATE = 0.9  # mask rate with few neighbours visible
EXIT_GAIN = 0.05  # ctx_gain above which the model has left the plateau


@dataclass(frozen=True)
class Probe:
    """Per-token validation loss (nats per masked token) at the two mask rates."""

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


def measure(rate_nll: Callable[..., torch.Tensor], process, mask_id: int) -> Callable[..., torch.Tensor]:
    """The per-batch figure of the probe for a process's `rate_nll` (registry.ProcessSpec.rate_nll):
    (model, x (B, L), generator) -> [nll sum, count at LOW_RATE, nll sum, count at HIGH_RATE] (4,)."""

    def both_rates(model, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        low = rate_nll(model, x, process, mask_id, LOW_RATE, generator)
        return torch.cat([low, rate_nll(model, x, process, mask_id, HIGH_RATE, generator)])

    return both_rates


def probe_of(sums: list[float]) -> Probe:
    """The probe from the summed per-batch figures of `measure`."""
    nll_low, n_low, nll_high, n_high = sums
    return Probe(ce_low=nll_low / max(n_low, 1.0), ce_high=nll_high / max(n_high, 1.0))
