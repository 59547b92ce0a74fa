"""Autoregressive decoding for the causal baseline, one token per step with an exact key/value cache."""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from sunfish.config import RemaskKind, SamplerConfig
from sunfish.model.kv_cache import KVCache
from sunfish.sample.batch import Generators, Padding
from sunfish.sample.draw import draw_tokens, filter_logits
from sunfish.sample.unmask import SampleResult, StepInfo, banned_ids


@torch.no_grad()
def ar_generate(
    model: torch.nn.Module,
    prompt: torch.Tensor,
    length: int,
    cfg: SamplerConfig,
    *,
    generator: Generators,
    mask_id: int,
    callback: Callable[[StepInfo], None] | None = None,
    eos_id: int | None = None,
    padding: Padding | None = None,
    suppress: Sequence[int] = (),
) -> SampleResult:
    """Append `length` tokens to `prompt` (B, P >= 1): prefill once, then one cached pass per token.

    Sampling uses the same temperature / top-k / top-p / float64 Gumbel path as the diffusion samplers.
    Stops early when every row has produced EOS (if `eos_id` and cfg.stop_at_eos); the rest is EOS.
    `padding`: the prompts' left padding, with `generator` one generator per row (batch.py);
    `suppress`: token ids never drawn besides [MASK].
    """
    B, P = prompt.shape
    if P + length > model.cfg.context:
        raise ValueError(f"the prompt ({P} tokens) plus {length} new tokens exceed the model's context of {model.cfg.context}")
    if cfg.guidance > 0 or cfg.remask is not RemaskKind.NONE:
        raise ValueError("an autoregressive model commits one token at a time; --guidance and --remask apply to masked diffusion models")
    x = torch.cat([prompt, torch.full((B, length), mask_id, dtype=prompt.dtype, device=prompt.device)], dim=1)
    cache = KVCache()
    if padding is None:
        logits = model.head(model.hidden(prompt, None, cache)[:, -1])  # (B, V)
    else:  # causal over each row's own tokens, padding hidden
        causal = torch.ones(P, P, dtype=torch.bool, device=x.device).tril()
        h = model.hidden(prompt, None, cache, attn_mask=padding.square(causal), positions=padding.positions(0, P))
        logits = model.head(h[:, -1])
    cache.commit = True
    banned = banned_ids(mask_id, suppress, cfg.suppress_special)
    nfe, done = 1, torch.zeros(B, dtype=torch.bool, device=x.device)
    for i in range(P, P + length):
        logits = logits.float()
        logits[:, banned] = float("-inf")  # [MASK] is a canvas symbol, never an output
        token = draw_tokens(filter_logits(logits, cfg.top_k, cfg.top_p), cfg.temperature, generator)  # (B,)
        if eos_id is not None:
            token = torch.where(done, torch.full_like(token, eos_id), token)
            done |= token == eos_id
        x = x.clone()
        x[:, i] = token
        if callback is not None:
            revealed = torch.zeros_like(x, dtype=torch.bool)
            revealed[:, i] = True
            callback(StepInfo(step=i - P + 1, tokens=x, masked=x == mask_id, revealed=revealed))
        if i + 1 == P + length or (eos_id is not None and cfg.stop_at_eos and bool(done.all())):
            break
        cache.span = (i, i + 1)
        rows = {} if padding is None else padding.attention(i, i + 1)
        logits = model.head(model.hidden(x[:, i : i + 1], None, cache, **rows)[:, -1])
        nfe += 1
    steps = i - P + 1
    if eos_id is not None:
        x = x.masked_fill(x == mask_id, eos_id)
    return SampleResult(tokens=x, steps=steps, nfe=nfe)
