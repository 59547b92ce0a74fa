"""Batched generation: rows of different prompt lengths decode exactly as each would alone with its seed."""

import dataclasses

import pytest
import torch

from sunfish.config import AttentionKind, CacheMode, Policy, SamplerConfig, MaskScheduleKind, CommitRule, TimeCond
from sunfish.process.schedules import MaskSchedule
from sunfish.sample.ar import ar_generate
from sunfish.sample.batch import Padding, left_pad, row_generators, uniform
from sunfish.sample.block import block_generate
from sunfish.sample.prompt import cut_at_eos
from sunfish.sample.unmask import unmask

from conftest import make_model

MASK, PAD, EOS = 3, 0, 2
SCHEDULE = MaskSchedule(MaskScheduleKind.LINEAR)
GEN = 12
SEEDS = [11, 12, 13, 14]


def prompts():
    g = torch.Generator().manual_seed(5)
    return [[1] + torch.randint(4, 32, (n,), generator=g).tolist() for n in (2, 7, 4, 7)]  # BOS + text


def alone_and_batched(run, eos=None):
    """Each prompt alone with its seed, and all of them in one left-padded batch: the generated tokens of
    each row (cut at the first EOS when `eos`)."""
    alone = [run(torch.tensor([p]), None, torch.Generator().manual_seed(s))[0] for p, s in zip(prompts(), SEEDS)]
    x, padding = left_pad(prompts(), PAD, "cpu")
    batched = run(x, padding, row_generators(SEEDS, "cpu"))
    cut = (lambda ids: cut_at_eos(ids, eos)) if eos is not None else (lambda ids: ids)
    return [cut(r[-GEN:].tolist()) for r in alone], [cut(r[-GEN:].tolist()) for r in batched]


def with_masks(prompt):
    return torch.cat([prompt, torch.full((prompt.shape[0], GEN), MASK)], dim=1)


CASES = [dict(policy=p) for p in Policy] + [
    dict(rule=CommitRule.ANCESTRAL, temperature=1.0),
    dict(rule=CommitRule.THRESHOLD, threshold=0.05, temperature=0.7),
    dict(rule=CommitRule.FACTOR, factor=0.5),
    dict(rule=CommitRule.ENTROPY_BOUND, entropy_bound=0.5),
    dict(block_length=4, steps=6, temperature=1.0, top_k=5, top_p=0.9),
    dict(cache=CacheMode.PREFIX, block_length=4, temperature=1.0),
    dict(cache=CacheMode.DUAL, block_length=4, rule=CommitRule.THRESHOLD, threshold=0.05),
    dict(remask="cap", remask_eta=0.5, remask_start=0.2, temperature=1.0),
    dict(remask="conf", remask_eta=0.5, remask_start=0.0, rule=CommitRule.THRESHOLD, threshold=0.05),
    dict(guidance=1.5, temperature=1.0, block_length=4),
]


@pytest.mark.parametrize("kw", CASES, ids=lambda kw: ",".join(f"{k}={getattr(v, 'value', v)}" for k, v in kw.items()))
def test_plain_sampler_batched_equals_alone(tiny_model_cfg, kw):
    model = make_model(dataclasses.replace(tiny_model_cfg, init_std=0.3))
    cfg = SamplerConfig(**{"steps": 8, **kw})

    def run(prompt, padding, generator):
        return unmask(model, with_masks(prompt), MASK, cfg, generator=generator, schedule=SCHEDULE,
                      padding=padding).tokens

    alone, batched = alone_and_batched(run)
    assert batched == alone
    assert all(MASK not in row for row in batched)


def test_eos_stopping_batched_equals_alone(tiny_model_cfg):
    model = make_model(dataclasses.replace(tiny_model_cfg, init_std=0.3))
    cfg = SamplerConfig(steps=12, block_length=3, temperature=1.5)
    eos = 17  # a frequent token of this random model stands in for EOS

    def run(prompt, padding, generator):
        return unmask(model, with_masks(prompt), MASK, cfg, generator=generator, schedule=SCHEDULE,
                      padding=padding, eos_id=eos).tokens

    alone, batched = alone_and_batched(run, eos=eos)
    assert batched == alone
    assert any(len(row) < GEN for row in alone)  # some row did stop early


def test_time_conditioned_model_batched_equals_alone(tiny_model_cfg):
    model = make_model(dataclasses.replace(tiny_model_cfg, init_std=0.3, time_cond=TimeCond.ADALN))
    for module in model.modules():  # adaLN starts at zero; give it weights so t matters
        if isinstance(module, torch.nn.Linear) and not module.weight.any():
            torch.nn.init.normal_(module.weight, std=0.3)
    cfg = SamplerConfig(steps=6, temperature=1.0)

    def run(prompt, padding, generator):
        return unmask(model, with_masks(prompt), MASK, cfg, generator=generator, schedule=SCHEDULE, padding=padding).tokens

    alone, batched = alone_and_batched(run)
    assert batched == alone


@pytest.mark.parametrize("kw", [dict(), dict(temperature=1.0, rule=CommitRule.THRESHOLD, threshold=0.05),
                                dict(temperature=1.0, remask="rescale", remask_eta=0.5, remask_start=0.0)], ids=str)
def test_block_diffusion_batched_equals_alone(tiny_model_cfg, kw):
    model = make_model(dataclasses.replace(tiny_model_cfg, init_std=0.3))
    cfg = SamplerConfig(**{"steps": 6, **kw})

    def run(prompt, padding, generator):
        return block_generate(model, prompt, GEN, MASK, 4, cfg, generator=generator, schedule=SCHEDULE,
                              padding=padding).tokens

    alone, batched = alone_and_batched(run)
    assert batched == alone and all(MASK not in row for row in batched)


def test_autoregressive_batched_equals_alone(tiny_model_cfg):
    model = make_model(dataclasses.replace(tiny_model_cfg, init_std=0.3, attention=AttentionKind.CAUSAL))
    cfg = SamplerConfig(temperature=1.0, top_k=8)

    def run(prompt, padding, generator):
        return ar_generate(model, prompt, GEN, cfg, generator=generator, mask_id=MASK, padding=padding, eos_id=EOS).tokens

    alone, batched = alone_and_batched(run, eos=EOS)
    assert batched == alone


def test_padding_masks_and_positions():
    pad = Padding.of([2, 5, 5])
    assert pad.pad.tolist() == [3, 0, 0] and Padding.of([4, 4]) is None
    assert pad.positions(2, 6).tolist() == [[0, 0, 1, 2], [2, 3, 4, 5], [2, 3, 4, 5]]
    keys = pad.attention(3, 5)["attn_mask"]  # (B, 1, 1, 5)
    assert keys[0, 0, 0].tolist() == [False, False, False, True, True] and keys[1].all()
    square = pad.square(torch.ones(5, 5, dtype=torch.bool).tril())[0, 0]
    assert square[0].tolist() == [True, False, False, False, False]  # a padding query sees only itself
    assert square[4].tolist() == [False, False, False, True, True]


def test_per_row_noise_skips_idle_rows():
    gens = row_generators([1, 2], "cpu")
    a = uniform((2, 3), gens, rows=torch.tensor([False, True]))
    assert (a[0] == 0.5).all() and torch.equal(a[1], torch.rand(3, generator=torch.Generator().manual_seed(2)))
    b = uniform((2, 3), gens)  # row 0's stream was not advanced by the skipped draw
    assert torch.equal(b[0], torch.rand(3, generator=torch.Generator().manual_seed(1)))
