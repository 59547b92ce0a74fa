"""ReMDM remasking: strategies, the window, prompts untouched, and the step rule's mask count kept."""

import pytest
import torch

from sunfish.config import CacheMode, RemaskKind, SamplerConfig, MaskScheduleKind, CommitRule
from sunfish.process.schedules import MaskSchedule
from sunfish.sample.remask import remask_sigma
from sunfish.sample.unmask import unmask

from conftest import make_model
from test_sampler import MASK, canvas

SCHEDULE = MaskSchedule(MaskScheduleKind.LINEAR)


def run(model, x, seed=0, **kw):
    infos = []
    cfg = SamplerConfig(**{"steps": 8, "temperature": 1.0, "remask_eta": 0.5, "remask_start": 0.0, **kw})
    res = unmask(model, x, MASK, cfg, generator=torch.Generator().manual_seed(seed), schedule=SCHEDULE, callback=infos.append)
    return res, infos


@pytest.mark.parametrize("kind", ["cap", "rescale", "conf"])
@pytest.mark.parametrize("extra", [dict(), dict(block_length=8), dict(rule=CommitRule.THRESHOLD, threshold=0.5),
                                   dict(rule=CommitRule.ANCESTRAL), dict(cache=CacheMode.DUAL, block_length=8)], ids=str)
def test_remasking_keeps_prompt_and_never_returns_a_mask(tiny_model_cfg, kind, extra):
    model = make_model(tiny_model_cfg)
    x = canvas(gen=16)
    res, infos = run(model, x, remask=kind, **extra)
    assert not (res.tokens == MASK).any() and torch.equal(res.tokens[:, :6], x[:, :6])
    assert not any(info.remasked[:, :6].any() for info in infos)
    if extra.get("rule") in (None, CommitRule.ANCESTRAL):
        assert res.steps == 8  # the fixed budget still finishes every block
    if extra.get("rule") is None:
        assert sum(int(info.remasked.sum()) for info in infos) > 0


def test_each_step_leaves_the_masks_the_rule_planned(tiny_model_cfg):
    model = make_model(tiny_model_cfg)
    x = canvas(gen=23, batch=1)
    _, plain = run(model, x)
    _, remasked = run(model, x, remask="rescale", remask_eta=1.0)
    assert [int(i.masked.sum()) for i in remasked] == [int(i.masked.sum()) for i in plain]
    taken = [int(i.remasked.sum()) for i in remasked]
    assert [int(i.revealed.sum()) - t for i, t in zip(remasked, taken)] == [int(i.revealed.sum()) for i in plain]
    assert sum(taken) > 0


def test_remasked_tokens_were_committed_and_are_masked_after(tiny_model_cfg):
    model = make_model(tiny_model_cfg)
    res, infos = run(model, canvas(gen=16), remask="cap")
    before = canvas(gen=16) == MASK
    for info in infos:
        assert not (info.remasked & before).any()  # never a position that was still masked
        assert info.masked[info.remasked].all()
        before = info.masked


def test_window_limits_when_remasking_happens(tiny_model_cfg):
    model = make_model(tiny_model_cfg)
    x = canvas(gen=16, batch=1)
    off, _ = run(model, x, remask="cap", remask_start=1.0)
    none, _ = run(model, x)
    assert torch.equal(off.tokens, none.tokens)  # an empty window is no remasking at all
    _, infos = run(model, x, steps=16, remask="rescale", remask_eta=1.0, remask_start=0.25, remask_end=0.5)
    decoded_before = [16 - int(x.eq(MASK).sum())] + [16 - int(i.masked[0, 6:].sum()) for i in infos[:-1]]
    for info, decoded in zip(infos, decoded_before):
        if info.remasked.any():
            assert 0.25 <= decoded / 16 < 0.5
    assert any(i.remasked.any() for i in infos)


def test_infill_context_inside_the_block_is_never_remasked(tiny_model_cfg):
    model = make_model(tiny_model_cfg)
    x = torch.randint(4, 32, (1, 30), generator=torch.Generator().manual_seed(1))
    holes = torch.zeros_like(x, dtype=torch.bool)
    holes[0, 3:12] = holes[0, 15:27] = True
    x = x.masked_fill(holes, MASK)
    res, infos = run(model, x, remask="conf", remask_eta=1.0)
    assert torch.equal(res.tokens[~holes], x[~holes]) and not (res.tokens == MASK).any()
    assert not any((info.remasked & ~holes).any() for info in infos)


def test_sigma_strategies():
    decoded = torch.tensor([[True, True, True, True, False]])
    psi = torch.tensor([[0.9, 0.9, 0.1, 0.9, 0.0]])
    left = torch.tensor([2])  # sigma_max = 2 / 4 = 0.5
    sigma = lambda kind, eta: remask_sigma(decoded, psi, left, SamplerConfig(remask=kind, remask_eta=eta))[0]
    assert torch.allclose(sigma(RemaskKind.CAP, 0.2), torch.tensor([0.2, 0.2, 0.2, 0.2, 0.0]))
    assert torch.allclose(sigma(RemaskKind.CAP, 0.9), torch.tensor([0.5, 0.5, 0.5, 0.5, 0.0]))
    assert torch.allclose(sigma(RemaskKind.RESCALE, 0.5), torch.tensor([0.25, 0.25, 0.25, 0.25, 0.0]))
    conf = sigma(RemaskKind.CONF, 0.2)
    assert conf[2] > conf[0] == conf[1] == conf[3] and conf[4] == 0
    assert torch.isclose(conf.sum(), torch.tensor(0.8))  # the same expected count as cap: 4 x 0.2
    flat = remask_sigma(decoded, torch.full_like(psi, 0.5), left, SamplerConfig(remask="conf", remask_eta=0.2))
    assert torch.allclose(flat, sigma(RemaskKind.CAP, 0.2)[None])  # equal confidences: conf is cap


def test_an_inverted_window_is_refused(tiny_model_cfg):
    with pytest.raises(ValueError, match="window"):
        run(make_model(tiny_model_cfg), canvas(), remask="cap", remask_start=0.8, remask_end=0.2)
