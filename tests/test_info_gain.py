"""The Info-Gain policy (sample/info_gain.py): its special cases reduce to the policies it generalises, its choice
is the argmax of J = IG - C over the candidates, its lookahead passes are counted, and it composes with blocks,
caches, guidance, batching, block diffusion, the CLI and the Python API."""

import dataclasses
import json

import pytest
import torch

from sunfish import registry
from sunfish.config import CacheMode, CommitRule, ConfigError, Policy, SamplerConfig
from sunfish.sample import info_gain
from sunfish.sample.block import block_generate
from sunfish.sample.policies import entropy
from sunfish.sample.unmask import _Predictor, unmask
from sunfish.validate import check_sampler

from conftest import make_model
from test_batched import alone_and_batched, with_masks
from test_sampler import MASK, SCHEDULE, canvas, run


@pytest.fixture
def model(tiny_model_cfg):
    return make_model(dataclasses.replace(tiny_model_cfg, init_std=0.3))


SETTINGS = [dict(), dict(temperature=0.8, top_p=0.9), dict(block_length=4, steps=8, temperature=1.0),
            dict(block_length=4, cache=CacheMode.DUAL, temperature=1.0), dict(cache=CacheMode.PREFIX, block_length=8),
            dict(rule=CommitRule.ANCESTRAL_TOPK, steps=6, temperature=1.0), dict(guidance=1.0, temperature=1.0)]


@pytest.mark.parametrize("kw", SETTINGS, ids=str)
def test_information_term_off_is_the_entropy_policy(model, kw):
    """w = 0 leaves J = -C(a), maximised over all k-subsets by the k lowest-entropy masks: --policy entropy,
    token for token and with no extra pass, whatever the heuristic."""
    for heuristic in (Policy.CONFIDENCE, Policy.RANDOM):
        off = run(model, canvas(gen=16), seed=2, policy=Policy.INFO_GAIN, info_gain_weight=0.0,
                  info_gain_heuristic=heuristic, **kw)
        plain = run(model, canvas(gen=16), seed=2, policy=Policy.ENTROPY, **kw)
        assert torch.equal(off.tokens, plain.tokens) and off.nfe == plain.nfe


@pytest.mark.parametrize("heuristic", [Policy.CONFIDENCE, Policy.MARGIN, Policy.ENTROPY, Policy.RANDOM])
def test_one_candidate_is_its_heuristic_policy(model, heuristic):
    for kw in SETTINGS[:4]:
        one = run(model, canvas(gen=16), seed=4, policy=Policy.INFO_GAIN, info_gain_candidates=1,
                  info_gain_heuristic=heuristic, **kw)
        plain = run(model, canvas(gen=16), seed=4, policy=heuristic, **kw)
        assert torch.equal(one.tokens, plain.tokens) and one.nfe == plain.nfe


@torch.no_grad()
def test_choice_is_the_argmax_of_the_objective(model):
    """With many candidates spread over every position (one commit per step, greedy tokens), each step commits
    the mask a brute-force search over all single commits finds best: argmax -H(l) - mean entropy left after it."""
    x = canvas(gen=6, batch=1)
    exact = _Predictor(model, MASK, SCHEDULE, CacheMode.NONE, False, banned=[MASK])
    states = [x]
    res = run(model, x, steps=6, policy=Policy.INFO_GAIN, info_gain_candidates=64, info_gain_temperature=50.0,
              callback=lambda info: states.append(info.tokens))
    L, lo = x.shape[1], 6
    for before, after in zip(states, states[1:]):
        logits = exact(before, lo, L)[0]  # (n, V)
        h = entropy(logits.softmax(-1))
        best, pick = float("-inf"), None
        for pos in (before[0, lo:] == MASK).nonzero().flatten().tolist():
            state = before.clone()
            state[0, lo + pos] = logits[pos].argmax()
            left = state[0, lo:] == MASK
            h_next = entropy(exact(state, lo, L)[0].softmax(-1))[left].mean() if left.any() else torch.tensor(0.0)
            j = float(-h[pos] - h_next)
            if j > best:
                best, pick = j, pos
        assert int((after[0, lo:] != before[0, lo:]).nonzero()) == pick
    assert res.steps == 6


def test_lookahead_passes_are_counted_and_their_logits_reused(model, monkeypatch):
    """Each step after the first reuses the chosen candidate's pass: the same tokens as a fresh pass, fewer NFE."""
    passes = []
    original = info_gain.InfoGain._lookahead

    def counting(self, *args):
        passes.append(1)
        return original(self, *args)

    monkeypatch.setattr(info_gain.InfoGain, "_lookahead", counting)
    kw = dict(policy=Policy.INFO_GAIN, block_length=8, steps=8, temperature=1.0, cache=CacheMode.PREFIX)
    reused = run(model, canvas(gen=16), seed=1, **kw)
    looked = len(passes)
    setup = info_gain.InfoGain.__init__

    def without_reuse(self, *args):
        setup(self, *args)
        self.reuse = False  # as under the drift report: every step runs its own pass

    monkeypatch.setattr(info_gain.InfoGain, "__init__", without_reuse)
    fresh = run(model, canvas(gen=16), seed=1, **kw)
    assert torch.equal(reused.tokens, fresh.tokens)
    assert fresh.nfe == fresh.steps + (len(passes) - looked) and looked == len(passes) - looked
    assert reused.nfe < fresh.nfe and reused.nfe >= looked + 2  # at least one fresh pass per block


def test_information_gain_can_overrule_confidence():
    """A toy predictor: committing position 0 settles position 1 (entropy log V -> ~0), while position 2 is the
    most confident. The confidence policy commits position 2 first; Info-Gain commits position 0."""
    V = 8

    class Toy:
        passes = 1

        def refresh(self):
            pass

        def scope(self, lo, hi, width):
            return hi

        def __call__(self, x, lo, hi):
            out = torch.zeros(x.shape[0], hi - lo, V)
            out[:, 0, 4], out[:, 0, 5] = 2.0, 1.5  # fairly sure of token 4
            out[:, 2, 6] = 4.0  # surer of token 6
            out[:, 1, 7] = torch.where(x[:, 0] == MASK, 0.0, 20.0)  # uniform until position 0 is written
            out[..., MASK] = float("-inf")
            return out[:, : hi - lo]

    from sunfish.sample.unmask import denoise_blocks

    def first(policy):
        seen = []
        denoise_blocks(torch.full((1, 3), MASK), [(0, 3)], Toy(), MASK, SamplerConfig(steps=3, policy=policy,
                       info_gain_temperature=5.0), generator=torch.Generator().manual_seed(0), schedule=SCHEDULE,
                       callback=lambda info: seen.append(info.revealed[0].nonzero().flatten().tolist()))
        return seen[0]

    assert first(Policy.CONFIDENCE) == [2]
    assert first(Policy.INFO_GAIN) == [0]


BATCHED = [dict(temperature=1.0), dict(block_length=4, steps=6, temperature=1.0, top_k=5),
           dict(cache=CacheMode.PREFIX, block_length=4, temperature=1.0), dict(cache=CacheMode.DUAL, block_length=4),
           dict(guidance=1.5, temperature=1.0, block_length=4), dict(info_gain_heuristic=Policy.MARGIN, temperature=0.7)]


@pytest.mark.parametrize("kw", BATCHED, ids=str)
def test_batched_rows_decode_as_alone(model, kw):
    cfg = SamplerConfig(**{"steps": 8, "policy": Policy.INFO_GAIN, "info_gain_candidates": 4, **kw})

    def decode(prompt, padding, generator):
        return unmask(model, with_masks(prompt), MASK, cfg, generator=generator, schedule=SCHEDULE,
                      padding=padding).tokens

    alone, batched = alone_and_batched(decode)
    assert batched == alone and all(MASK not in row for row in batched)


def test_block_diffusion_batched_equals_alone_and_counts_its_passes(model):
    cfg = SamplerConfig(steps=6, temperature=1.0, policy=Policy.INFO_GAIN, info_gain_candidates=3)

    def decode(prompt, padding, generator):
        return block_generate(model, prompt, 12, MASK, 4, cfg, generator=generator, schedule=SCHEDULE,
                              padding=padding).tokens

    alone, batched = alone_and_batched(decode)
    assert batched == alone and all(MASK not in row for row in batched)
    prompt = torch.randint(4, 32, (2, 5), generator=torch.Generator().manual_seed(3))
    res = block_generate(model, prompt, 12, MASK, 4, cfg, generator=torch.Generator().manual_seed(0), schedule=SCHEDULE)
    plain = block_generate(model, prompt, 12, MASK, 4, dataclasses.replace(cfg, policy=Policy.CONFIDENCE),
                           generator=torch.Generator().manual_seed(0), schedule=SCHEDULE)
    assert res.steps == plain.steps == 6 and res.nfe > plain.nfe == 6 + 2


def test_settings_are_refused_unless_the_policy_is_info_gain():
    masked = registry.MASKED
    with pytest.raises(ConfigError, match="sampler.info_gain_candidates does nothing with sampler.policy = confidence; "
                                          "it applies to --policy info_gain"):
        check_sampler(masked, SamplerConfig(), ["info_gain_candidates"])
    for name in ("info_gain_temperature", "info_gain_weight", "info_gain_heuristic"):
        with pytest.raises(ConfigError, match=f"sampler.{name} does nothing"):
            check_sampler(masked, SamplerConfig(policy=Policy.ENTROPY), [name])
    check_sampler(masked, SamplerConfig(policy=Policy.INFO_GAIN), ["policy", "info_gain_candidates", "info_gain_weight"])
    check_sampler(registry.BLOCK, SamplerConfig(policy=Policy.INFO_GAIN), ["policy", "info_gain_temperature"])
    with pytest.raises(ConfigError, match="info_gain_candidates does nothing for autoregressive models"):
        check_sampler(registry.AR, SamplerConfig(), ["info_gain_candidates"])
    with pytest.raises(ConfigError, match="cannot be info_gain itself"):
        check_sampler(masked, SamplerConfig(policy=Policy.INFO_GAIN, info_gain_heuristic=Policy.INFO_GAIN), [])
    with pytest.raises(ConfigError, match="does not take committed tokens back"):
        check_sampler(masked, SamplerConfig(policy=Policy.INFO_GAIN, remask="cap"), [])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from serving import train_small

    folder = tmp_path_factory.mktemp("info_gain")
    return {kind: train_small(folder / kind, kind, steps=2) for kind in ("masked", "block")}


@pytest.mark.parametrize("kind", ["masked", "block"])
def test_cli_and_api_agree(runs, kind, capsys):
    import sunfish
    from sunfish.cli import main

    settings = dict(policy="info_gain", info_gain_candidates=3, temperature=0.7, steps=8, block_length=4)
    if kind == "block":
        del settings["block_length"]  # the block model decodes in its own blocks
    model = sunfish.load(runs[kind], device="cpu")
    api = model.generate("Once upon", max_new_tokens=12, seed=5, **settings)
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in settings.items()]
    capsys.readouterr()
    assert main(["sample", str(runs[kind]), "--prompt", "Once upon", "--length", "12", "--seed", "5", "--json",
                 *flags]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["text"] == api.text and shown["nfe"] == api.nfe > api.steps
    batch = model.generate(["Once upon", "One day"], max_new_tokens=12, seed=5, **settings)
    assert batch[0].text == api.text  # prompt i is seeded with seed + i and decodes as it would alone
