"""Key/value cache for bidirectional diffusion decoding (Fast-dLLM's approximate cache).

A full forward pass with an empty `KVCache` records every layer's keys and values (B, H, L, d). A later
forward on an active span [lo, hi) of the canvas computes queries, keys and values for the span only and
attends over the cached keys and values everywhere else. The cached entries are stale (they were
computed when the span held other tokens), which is the approximation: Fast-dLLM (Wu et al. 2025)
observes that keys and values outside the block being decoded barely change between steps.

* prefix cache: the span is [block start, end of canvas), so only the prompt and finished blocks are reused;
* dual cache: the span is the current block alone; the masked suffix is reused as well.

The cache is refreshed (a full forward) whenever a block starts, and within a block when the sampler's adaptive
refresh bound says so (sample/unmask.py, --sampler.refresh_bound).

Block diffusion (BD3-LM) uses the same object exactly: the cache holds the clean prefix, a span forward
on the next block (span starting at the cache's length) appends to it, and `commit` stores the finished
block's keys and values, so earlier blocks are never recomputed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class KVCache:
    keys: list[torch.Tensor] = field(default_factory=list)  # per layer (B, H, L, d)
    values: list[torch.Tensor] = field(default_factory=list)  # per layer (B, H, L, d)
    span: tuple[int, int] | None = None  # active [lo, hi) for a cached forward; None = full forward that fills
    commit: bool = False  # span forward: store the spliced keys/values back (block diffusion's exact prefix)

    @property
    def filled(self) -> bool:
        return bool(self.keys)

    def attend_inputs(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys/values to attend over. Full forward: record and return (k, v). Span forward: splice the
        span's fresh k, v (B, H, hi - lo, d) into the cached tensors (the cache itself is left unchanged)."""
        if self.span is None:
            self.keys.append(k)
            self.values.append(v)
            return k, v
        lo, hi = self.span
        ck, cv = self.keys[layer], self.values[layer]
        k = torch.cat([ck[:, :, :lo], k, ck[:, :, hi:]], dim=2)
        v = torch.cat([cv[:, :, :lo], v, cv[:, :, hi:]], dim=2)
        if self.commit:
            self.keys[layer], self.values[layer] = k, v
        return k, v

    def keep(self, length: int) -> None:
        """Drop every cached position from `length` on (pipelined decoding, sample/pipeline.py: a span forward that
        stored its finished blocks and the unfinished ones after them keeps only the finished)."""
        self.keys = [k[:, :, :length] for k in self.keys]
        self.values = [v[:, :, :length] for v in self.values]
