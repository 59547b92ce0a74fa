"""Threshold / factor / entropy-bound decoding, the approximate KV cache, and EOS stopping."""

import dataclasses

import pytest
import torch

from sunfish.config import CacheMode, SamplerConfig, MaskScheduleKind, CommitRule, TimeCond
from sunfish.model.kv_cache import KVCache
from sunfish.process.schedules import MaskSchedule
from sunfish.sample.policies import adaptive_count
from sunfish.sample.unmask import unmask

from conftest import make_model
from test_sampler import MASK, canvas

SCHEDULE = MaskSchedule(MaskScheduleKind.LINEAR)


def run(model, x, seed=0, **kw):
    return unmask(model, x, MASK, SamplerConfig(**kw), generator=torch.Generator().manual_seed(seed), schedule=SCHEDULE)


@pytest.mark.parametrize("time_cond", [TimeCond.NONE, TimeCond.ADALN])
def test_cached_span_forward_equals_full_forward(tiny_model_cfg, time_cond):
    model = make_model(dataclasses.replace(tiny_model_cfg, time_cond=time_cond))
    x = torch.randint(0, 32, (2, 40))
    t = torch.tensor([0.2, 0.7])
    cache = KVCache()
    full = model(x, t, cache)
    for span in [(10, 18), (10, 40), (0, 5)]:
        cache.span = span
        assert torch.allclose(model(x[:, span[0] : span[1]], t, cache), full[:, span[0] : span[1]], atol=1e-5)


@pytest.mark.parametrize("mode", [CacheMode.PREFIX, CacheMode.DUAL])
def test_cache_refreshed_every_step_equals_no_cache(tiny_model_cfg, mode):
    model = make_model(tiny_model_cfg)
    x = canvas(gen=12)
    kw = dict(steps=12, block_length=1, temperature=0.8)
    assert torch.equal(run(model, x, cache=mode, **kw).tokens, run(model, x, **kw).tokens)


@pytest.mark.parametrize("mode", [CacheMode.PREFIX, CacheMode.DUAL])
def test_cached_sampling_keeps_prompt_and_fills_everything(tiny_model_cfg, mode):
    model = make_model(tiny_model_cfg)
    x = canvas(gen=24)
    result = run(model, x, cache=mode, steps=12, block_length=8)
    assert not (result.tokens == MASK).any() and torch.equal(result.tokens[:, :6], x[:, :6])
    assert result.nfe == 12


def test_drift_report_is_zero_right_after_refresh_and_recorded_for_cached_steps(tiny_model_cfg):
    model = make_model(tiny_model_cfg)
    cfg = SamplerConfig(steps=8, block_length=8, cache=CacheMode.DUAL)
    res = unmask(model, canvas(gen=16), MASK, cfg, generator=torch.Generator().manual_seed(0), schedule=SCHEDULE, track_drift=True)
    assert len(res.drift) == 6  # 2 blocks x 4 steps, the first step of each block is a full (exact) pass
    assert all(d.max_abs >= d.mean_abs >= 0 and 0 <= d.committed_differ <= 1 for d in res.drift)


def test_threshold_one_equals_confidence_one_token_per_step(tiny_model_cfg):
    model = make_model(tiny_model_cfg)
    x = canvas(gen=16)
    a = run(model, x, rule=CommitRule.THRESHOLD, threshold=1.0)
    b = run(model, x, steps=16)
    assert torch.equal(a.tokens, b.tokens) and a.steps == 16


@pytest.mark.parametrize("schedule", [CommitRule.THRESHOLD, CommitRule.FACTOR, CommitRule.ENTROPY_BOUND])
def test_adaptive_rules_finish_and_keep_prompt(tiny_model_cfg, schedule):
    model = make_model(tiny_model_cfg)
    x = canvas(gen=20)
    res = run(model, x, rule=schedule, threshold=0.01, factor=50.0, entropy_bound=100.0, block_length=10)
    assert not (res.tokens == MASK).any() and torch.equal(res.tokens[:, :6], x[:, :6])
    assert res.steps == 2  # permissive settings commit a whole block per step


def test_adaptive_counts_follow_their_rules():
    probs = torch.tensor([[[0.95, 0.05], [0.6, 0.4], [0.85, 0.15], [0.5, 0.5]]])  # (1, 4, 2)
    drawn = torch.zeros(1, 4, dtype=torch.long)
    every = torch.ones(1, 4, dtype=torch.bool)
    k = lambda **kw: int(adaptive_count(probs, drawn, every, SamplerConfig(**kw))[1])
    assert k(rule="threshold", threshold=0.8) == 2  # 0.95 and 0.85
    assert k(rule="threshold", threshold=0.99) == 1  # at least one
    # factor: sorted c = .95 .85 .6 .5; (n + 1)(1 - c_n) = .1 .45 1.6 2.5
    assert k(rule="factor", factor=1.0) == 2 and k(rule="factor", factor=2.0) == 3
    # entropy bound: entropies ascending ~.199 .423 .673 .693; sum - max of each prefix = 0 .199 .622 1.295
    assert k(rule="entropy_bound", entropy_bound=0.3) == 2 and k(rule="entropy_bound", entropy_bound=0.0) == 1


class EosAfter(torch.nn.Module):
    """Predicts token 10 before position `cut` and EOS (2) from it on, whatever the input."""

    needs_time = False

    def __init__(self, cut: int, vocab: int = 32):
        super().__init__()
        self.cut, self.vocab = cut, vocab

    def hidden(self, tokens, t=None, kv_cache=None):
        offset = kv_cache.span[0] if kv_cache is not None and kv_cache.span is not None else 0
        pos = torch.arange(offset, offset + tokens.shape[1])
        return (pos >= self.cut).float()[None, :, None].expand(tokens.shape[0], -1, 1)

    def head(self, h):
        logits = torch.zeros(*h.shape[:-1], self.vocab)
        logits[..., 10] = 5 * (1 - h[..., 0])
        logits[..., 2] = 5 * h[..., 0]
        return logits


def test_eos_stops_early_and_fills_the_rest():
    x = torch.cat([torch.tensor([[1, 5, 6]]), torch.full((1, 29), MASK)], dim=1)
    cfg = SamplerConfig(steps=32, block_length=8)
    res = unmask(EosAfter(cut=12), x, MASK, cfg, generator=torch.Generator().manual_seed(0), schedule=SCHEDULE, eos_id=2)
    assert res.tokens[0, 3:12].tolist() == [10] * 9 and (res.tokens[0, 12:] == 2).all()
    assert res.nfe == 16  # 29 steps over blocks of 8, 8, 8, 5 masks: one per mask; only [3, 11) and [11, 19) run
    full = unmask(EosAfter(cut=12), x, MASK, dataclasses.replace(cfg, stop_at_eos=False), generator=torch.Generator(), schedule=SCHEDULE, eos_id=2)
    assert full.nfe == 29 and torch.equal(full.tokens, res.tokens)  # 8 + 8 + 8 + 5: one step per mask
