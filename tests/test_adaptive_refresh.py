"""Adaptive cache refresh (--sampler.refresh_bound): bound 0 is refresh-every-step (the uncached sampler), an
infinite or negative bound is Fast-dLLM's refresh at block starts only, a middle bound lies in between."""

import pytest
import torch

from sunfish.config import CacheMode, CommitRule, ConfigError, MaskScheduleKind, Policy, SamplerConfig
from sunfish.process.schedules import MaskSchedule
from sunfish.registry import MASKED
from sunfish.sample.unmask import unmask
from sunfish.validate import check_sampler

from conftest import cli_error, make_model
from test_sampler import MASK, canvas

SCHEDULE = MaskSchedule(MaskScheduleKind.LINEAR)
BASE = dict(rule=CommitRule.FIXED, steps=24, block_length=8, temperature=0.8)


def run(model, x, **kw):
    cfg = SamplerConfig(**{**BASE, **kw})
    return unmask(model, x, MASK, cfg, generator=torch.Generator().manual_seed(0), schedule=SCHEDULE)


@pytest.mark.parametrize("mode", [CacheMode.PREFIX, CacheMode.DUAL])
@pytest.mark.parametrize("extra", [{}, {"guidance": 1.5}, {"rule": CommitRule.THRESHOLD, "threshold": 0.05}],
                         ids=["fixed", "guided", "threshold"])
def test_bound_zero_refreshes_every_step_and_equals_the_uncached_sampler(tiny_model_cfg, mode, extra):
    model = make_model(tiny_model_cfg)
    x = canvas(gen=24)
    cached = run(model, x, cache=mode, refresh_bound=0.0, **extra)
    plain = run(model, x, **extra)
    assert torch.equal(cached.tokens, plain.tokens)
    assert sum(cached.refreshes) == cached.steps == plain.steps and len(cached.refreshes) == 3
    assert plain.refreshes == []  # no approximate cache, nothing to refresh


@pytest.mark.parametrize("mode", [CacheMode.PREFIX, CacheMode.DUAL])
@pytest.mark.parametrize("bound", [float("inf"), -1.0])
def test_infinite_or_negative_bound_is_fast_dllm_refresh_at_block_starts(tiny_model_cfg, mode, bound):
    model = make_model(tiny_model_cfg)
    x = canvas(gen=24)
    today = run(model, x, cache=mode)  # the default: off
    adaptive = run(model, x, cache=mode, refresh_bound=bound)
    assert torch.equal(adaptive.tokens, today.tokens) and adaptive.nfe == today.nfe
    assert adaptive.refreshes == today.refreshes == [1, 1, 1]


def test_a_middle_bound_refreshes_between_block_starts_and_every_step(tiny_model_cfg):
    model = make_model(tiny_model_cfg)
    x = canvas(gen=24)
    counts = {b: sum(run(model, x, cache=CacheMode.DUAL, refresh_bound=b).refreshes) for b in (0.0, 1e-3, 1.0)}
    assert counts[0.0] == 24 and counts[1.0] == 3
    assert 3 < counts[1e-3] < 24
    # a positive bound refreshes at most every other step: the pass after a refresh has moved by 0 < bound
    assert sum(run(model, x, cache=CacheMode.DUAL, refresh_bound=1e-9).refreshes) == 12


def test_refresh_bound_is_refused_without_a_cache_and_under_info_gain():
    with pytest.raises(ConfigError, match="refresh_bound does nothing with sampler.cache = none"):
        check_sampler(MASKED, SamplerConfig(refresh_bound=0.1), ["refresh_bound"])
    check_sampler(MASKED, SamplerConfig(refresh_bound=0.1, cache=CacheMode.DUAL), ["refresh_bound", "cache"])
    with pytest.raises(ConfigError, match="info_gain"):
        check_sampler(MASKED, SamplerConfig(refresh_bound=0.1, cache=CacheMode.DUAL, policy=Policy.INFO_GAIN), [])


def test_refresh_bound_through_the_cli_reports_refreshes(capsys, tmp_path):
    import json

    from sunfish.cli import main
    from test_train import DOCS
    from test_tune_sampler import TINY

    corpus = tmp_path / "c.txt"
    corpus.write_text("\n\n".join(DOCS), encoding="utf-8")
    run_dir = tmp_path / "run"
    assert main(["train", "--preset", "nano", "--data", str(corpus), "--out", str(run_dir), "--steps", "2", *TINY]) == 0
    capsys.readouterr()
    assert main(["sample", str(run_dir), "--prompt", "the cat", "--length", "16", "--block-length", "8",
                 "--cache", "dual", "--refresh-bound", "0", "--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert sum(body["refreshes"]) == body["steps"] and len(body["refreshes"]) <= 2
    err = cli_error(capsys, ["sample", str(run_dir), "--prompt", "the cat", "--refresh-bound", "0.1"])
    assert "refresh_bound does nothing with sampler.cache = none" in err


def test_refresh_bound_is_refused_under_speculative_decoding():
    from sunfish.config import Speculate

    with pytest.raises(ConfigError, match="speculative decoding refreshes its cache at block starts only"):
        check_sampler(MASKED, SamplerConfig(refresh_bound=0.1, cache=CacheMode.DUAL, speculate=Speculate.SELF), [])
