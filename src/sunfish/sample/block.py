"""Block diffusion generation (BD3-LM): block by block with an exact key/value cache.

The prompt is encoded once as a clean, block-causal prefix and its keys/values are cached. Each new block
of `block_size` masks is denoised with the usual step rules (see unmask.py) while attending to the cached
prefix; once finished, one more pass over the clean block appends its keys/values to the cache, exactly as
the clean copy is computed in training (process/block.py). Earlier blocks are never recomputed, so the
length is limited only by the model's context, and generation stops early at EOS. Left-padded rows
(batch.py) decode as they would alone; classifier-free guidance is not available here.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from sunfish.config import SamplerConfig
from sunfish.model.kv_cache import KVCache
from sunfish.process.block import prefix_mask
from sunfish.process.schedules import MaskSchedule
from sunfish.sample.batch import Generators, Padding
from sunfish.sample.unmask import SampleResult, StepInfo, banned_ids, denoise_blocks


class _CachedBlock:
    """Logits of the active block given the exact cache of everything before it."""

    def __init__(self, model, cache: KVCache, mask_id: int, padding: Padding | None = None, banned: Sequence[int] = ()):
        self.model, self.cache, self.mask_id, self.padding = model, cache, mask_id, padding
        self.banned = list(banned)

    def _rows(self, lo: int, hi: int) -> dict:
        return {} if self.padding is None else self.padding.attention(lo, hi)

    def refresh(self) -> None:  # the cache is exact: nothing to refresh
        pass

    def scope(self, lo: int, hi: int, width: int) -> int:  # later blocks do not exist yet
        return hi

    def __call__(self, x: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        self.cache.span, self.cache.commit = (lo, hi), False
        logits = self.model.head(self.model.hidden(x[:, lo:hi], None, self.cache, **self._rows(lo, hi))).float()  # (B, hi - lo, V)
        logits[..., self.banned] = float("-inf")
        return logits

    def commit(self, x: torch.Tensor, lo: int, hi: int) -> int:
        """Append the finished block's clean keys/values (one network evaluation; none after the last block)."""
        if hi >= x.shape[1]:
            return 0
        self.cache.span, self.cache.commit = (lo, hi), True
        self.model.hidden(x[:, lo:hi], None, self.cache, **self._rows(lo, hi))
        self.cache.commit = False
        return 1


def check_request(model: torch.nn.Module, prompt_length: int, length: int, cfg: SamplerConfig) -> None:
    """Refuse, in one sentence, what block decoding cannot do."""
    if prompt_length + length > model.cfg.context:
        raise ValueError(f"the prompt ({prompt_length} tokens) plus {length} new tokens exceed the model's context of "
                         f"{model.cfg.context}")
    if cfg.guidance > 0:
        raise ValueError("classifier-free guidance works with masked diffusion models, not block diffusion; drop --guidance")


def encode_prompt(model: torch.nn.Module, prompt: torch.Tensor, block_size: int, padding: Padding | None = None) -> KVCache:
    """The exact cache of the clean prompt (B, P): one block-causal pass over it (padding hidden, each row's
    positions from its first real token)."""
    cache, P = KVCache(), prompt.shape[1]
    if padding is None:
        model.hidden(prompt, None, cache, attn_mask=prefix_mask(P, block_size, prompt.device))
    else:  # block-causal over each row's own positions, padding hidden
        ids = padding.positions(0, P) // block_size  # (B, P)
        model.hidden(prompt, None, cache, attn_mask=padding.square(ids[:, :, None] >= ids[:, None, :]),
                     positions=padding.positions(0, P))
    return cache


@torch.no_grad()
def block_generate(
    model: torch.nn.Module,
    prompt: torch.Tensor,
    length: int,
    mask_id: int,
    block_size: int,
    cfg: SamplerConfig,
    *,
    generator: Generators,
    schedule: MaskSchedule,
    callback: Callable[[StepInfo], None] | None = None,
    eos_id: int | None = None,
    padding: Padding | None = None,
    suppress: Sequence[int] = (),
) -> SampleResult:
    """Generate `length` tokens after `prompt` (B, P >= 1); returns the canvas (B, P + length).
    `padding`: the prompts' left padding, with `generator` one generator per row (batch.py);
    `suppress`: token ids never drawn besides [MASK]."""
    B, P = prompt.shape
    check_request(model, P, length, cfg)
    cache = encode_prompt(model, prompt, block_size, padding)
    x = torch.cat([prompt, torch.full((B, length), mask_id, dtype=prompt.dtype, device=prompt.device)], dim=1)
    blocks = [(lo, min(lo + block_size, P + length)) for lo in range(P, P + length, block_size)]
    predict = _CachedBlock(model, cache, mask_id, padding, banned_ids(mask_id, suppress, cfg.suppress_special))
    result = denoise_blocks(x, blocks, predict, mask_id, cfg, generator=generator, schedule=schedule,
                            callback=callback, eos_id=eos_id, after_block=predict.commit)
    return result
