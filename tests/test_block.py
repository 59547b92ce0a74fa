"""Block diffusion (BD3-LM): the training mask, its two limits (MDLM and AR), and exact cached decoding."""

import dataclasses

import pytest
import torch

from sunfish.config import ProcessConfig, SamplerConfig, MaskScheduleKind
from sunfish.model.kv_cache import KVCache
from sunfish.process.block import block_causal_mask, block_ids, prefix_mask, training_mask
from sunfish.registry import training_loss as masked_diffusion_loss
from sunfish.process.schedules import MaskSchedule
from sunfish.sample.block import _CachedBlock, block_generate

from conftest import make_model

MASK = 3


def test_training_mask_pattern():
    m = training_mask(6, 2)  # blocks {0,1} {2,3} {4,5}
    noised, clean = slice(0, 6), slice(6, 12)
    assert m[2, 3] and not m[2, 4] and not m[2, 0]  # noised block 1 sees itself, not other noised blocks
    assert m[2, 6 + 1] and not m[2, 6 + 2]  # ... and clean block 0, not its own clean copy
    assert not m[clean, noised].any()  # the clean copy never sees noised tokens
    assert m[6 + 3, 6 + 2] and m[6 + 3, 6 + 0] and not m[6 + 3, 6 + 4]  # clean copy is block-causal


def test_block_size_of_whole_sequence_is_mdlm(tiny_model_cfg):
    model = make_model(tiny_model_cfg)
    x0 = torch.randint(4, 32, (4, 24), generator=torch.Generator().manual_seed(0))
    mdlm = masked_diffusion_loss(model, x0, ProcessConfig(), MASK, torch.Generator().manual_seed(7))
    bd3 = masked_diffusion_loss(model, x0, ProcessConfig(block_size=24), MASK, torch.Generator().manual_seed(7))
    assert mdlm.masked_tokens == bd3.masked_tokens
    assert torch.allclose(mdlm.loss, bd3.loss, atol=1e-5)


def test_block_size_one_is_the_autoregressive_chain_rule(tiny_model_cfg):
    """With B = 1 and every token masked, position i predicts x_i from exactly x_<i."""
    model = make_model(tiny_model_cfg)
    x0 = torch.randint(4, 32, (1, 10), generator=torch.Generator().manual_seed(1))
    L = x0.shape[1]
    tokens = torch.cat([torch.full_like(x0, MASK), x0], dim=1)
    together = model(tokens, attn_mask=training_mask(L, 1), positions=torch.arange(L).repeat(2))[0, :L]
    for i in range(L):
        alone = model(torch.cat([x0[:, :i], torch.tensor([[MASK]])], dim=1), attn_mask=prefix_mask(i + 1, 1))[0, i]
        assert torch.allclose(together[i], alone, atol=1e-5)


def test_cached_block_logits_equal_uncached(tiny_model_cfg):
    model = make_model(tiny_model_cfg)
    g = torch.Generator().manual_seed(2)
    P, Bs = 5, 4
    prompt = torch.randint(4, 32, (2, P), generator=g)
    cache = KVCache()
    model.hidden(prompt, None, cache, attn_mask=prefix_mask(P, Bs))
    predict = _CachedBlock(model, cache, MASK)
    x = torch.cat([prompt, torch.full((2, 2 * Bs), MASK)], dim=1)
    x[:, P + 1] = 7  # a partly decoded first block
    ids = torch.cat([block_ids(P, Bs), torch.full((Bs,), 10), torch.full((Bs,), 11)])
    for lo in (P, P + Bs):
        hi = lo + Bs
        exact = model(x[:, :hi], attn_mask=block_causal_mask(ids[:hi]))[:, lo:hi]
        cached = predict(x, lo, hi)
        finite = torch.isfinite(cached)
        assert torch.allclose(cached[finite], exact[finite], atol=1e-5)
        x[:, lo:hi] = torch.randint(4, 32, (2, Bs), generator=g)  # finish the block, then commit it
        assert predict.commit(x, lo, hi) == (0 if hi == x.shape[1] else 1)


def test_block_generate_fills_and_stops(tiny_model_cfg):
    model = make_model(tiny_model_cfg)
    prompt = torch.randint(4, 32, (2, 5), generator=torch.Generator().manual_seed(3))
    cfg = SamplerConfig(steps=12, temperature=0.8)
    res = block_generate(model, prompt, 24, MASK, 8, cfg, generator=torch.Generator().manual_seed(0),
                         schedule=MaskSchedule(MaskScheduleKind.LINEAR))
    assert res.tokens.shape == (2, 29) and not (res.tokens == MASK).any()
    assert torch.equal(res.tokens[:, :5], prompt)
    assert res.steps == 12 and res.nfe == 12 + 2  # two commit passes (none after the last block)
