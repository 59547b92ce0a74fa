"""Classifier-free guidance: prompt dropout in training, guided logits in sampling, refused combinations."""

import json

import pytest
import torch

from sunfish.config import AttentionKind, CacheMode, MaskScheduleKind, ModelConfig, ProcessConfig, RunConfig, SamplerConfig
from sunfish.validate import validate
from sunfish.registry import build_network, training_loss
from sunfish.process.masked import condition, corrupt, draw_prompts, drop_prompts
from sunfish.process.schedules import MaskSchedule
from sunfish.sample.ar import ar_generate
from sunfish.sample.block import block_generate
from sunfish.sample.unmask import _Guided, _Predictor, unmask

from conftest import make_model, replace
from test_sampler import MASK, canvas

SCHEDULE = MaskSchedule(MaskScheduleKind.LINEAR)


def run(model, x, seed=0, **kw):
    cfg = SamplerConfig(**{"steps": 8, "temperature": 1.0, **kw})
    return unmask(model, x, MASK, cfg, generator=torch.Generator().manual_seed(seed), schedule=SCHEDULE)


def test_zero_guidance_is_no_guidance_exactly(tiny_model_cfg):
    model = make_model(tiny_model_cfg)
    x = canvas(gen=16)
    plain, zero, guided = run(model, x), run(model, x, guidance=0.0), run(model, x, guidance=2.0)
    assert torch.equal(zero.tokens, plain.tokens) and zero.nfe == plain.nfe == 8
    assert guided.nfe == 16  # a conditional and an unconditional pass per step
    assert not (guided.tokens == MASK).any() and torch.equal(guided.tokens[:, :6], x[:, :6])


class Spy(torch.nn.Module):
    """Wraps a model and records the tokens of every forward pass."""

    def __init__(self, model):
        super().__init__()
        self.model, self.seen = model, []
        self.needs_time = model.needs_time

    def hidden(self, tokens, t=None, kv_cache=None, **rows):
        self.seen.append(tokens.clone())
        return self.model.hidden(tokens, t, kv_cache, **rows)

    def head(self, h):
        return self.model.head(h)


def test_guided_logits_mix_conditional_and_prompt_masked_passes(tiny_model_cfg):
    model = make_model(tiny_model_cfg)
    x = canvas(gen=10)
    x[:, 9] = 5  # a token generated earlier stays visible to the unconditional pass
    prompt = torch.zeros_like(x, dtype=torch.bool)
    prompt[:, :6] = True
    spy = Spy(model)
    guided = _Guided(_Predictor(spy, MASK, SCHEDULE, CacheMode.NONE, False, banned=[MASK]),
                     _Predictor(spy, MASK, SCHEDULE, CacheMode.NONE, False, banned=[MASK]), prompt, 1.5)
    logits = guided(x, 6, 16)
    uncond_input = x.masked_fill(prompt, MASK)
    assert torch.equal(spy.seen[0], x) and torch.equal(spy.seen[1], uncond_input)
    c, u = model(x)[:, 6:].float(), model(uncond_input)[:, 6:].float()
    expected = u + 2.5 * (c - u)
    expected[..., MASK] = float("-inf")
    assert torch.allclose(logits, expected, atol=1e-5)


@pytest.mark.parametrize("mode", [CacheMode.PREFIX, CacheMode.DUAL])
def test_guidance_through_a_cache_refreshed_every_step_equals_uncached(tiny_model_cfg, mode):
    model = make_model(tiny_model_cfg)
    x = canvas(gen=8)
    kw = dict(steps=8, block_length=1, guidance=1.0)
    assert torch.equal(run(model, x, cache=mode, **kw).tokens, run(model, x, **kw).tokens)


def test_guidance_refused_where_not_implemented(tiny_model_cfg):
    prompt = torch.randint(4, 32, (1, 5))
    cfg = SamplerConfig(guidance=1.0)
    with pytest.raises(ValueError, match="block diffusion"):
        block_generate(make_model(tiny_model_cfg), prompt, 8, MASK, 4, cfg, generator=torch.Generator(), schedule=SCHEDULE)
    causal = make_model(replace(tiny_model_cfg, attention=AttentionKind.CAUSAL))
    with pytest.raises(ValueError, match="autoregressive"):
        ar_generate(causal, prompt, 8, cfg, generator=torch.Generator(), mask_id=MASK)
    with pytest.raises(ValueError, match="drift"):
        unmask(make_model(tiny_model_cfg), canvas(), MASK, SamplerConfig(guidance=1.0, cache="dual"),
               generator=torch.Generator(), schedule=SCHEDULE, track_drift=True)


def test_prompt_dropout_frequencies():
    g = torch.Generator().manual_seed(0)
    prompt = draw_prompts(20000, 16, 0.5, g)
    dropped = drop_prompts(prompt, 0.3, g)
    has = prompt.any(1)
    assert abs(has.float().mean() - 0.5) < 0.02
    assert abs(dropped[has].float().mean() - 0.3) < 0.02 and not dropped[~has].any()
    lengths = prompt.sum(1)[has]
    assert int(lengths.min()) == 1 and int(lengths.max()) == 15  # 1..L-1 tokens
    assert torch.equal(prompt, torch.arange(16)[None, :] < prompt.sum(1, keepdim=True))  # always a prefix


def test_dropped_prompts_are_exactly_masked_and_never_scored():
    cfg = ProcessConfig(prompt_prob=0.7, cond_dropout=0.5)
    g = torch.Generator().manual_seed(1)
    x0 = torch.randint(4, 32, (400, 12), generator=g)
    zt, masked = corrupt(x0, torch.full((400,), 0.5), SCHEDULE, MASK, g)
    state = g.get_state()
    out, scored, prompt = condition(x0, zt, masked, cfg, MASK, g)
    g.set_state(state)
    dropped = drop_prompts(draw_prompts(400, 12, cfg.prompt_prob, g), cfg.cond_dropout, g)
    kept = prompt & ~dropped[:, None]
    assert (out[prompt & dropped[:, None]] == MASK).all() and torch.equal(out[kept], x0[kept])
    assert torch.equal(out[~prompt], zt[~prompt])  # the response is corrupted as usual
    assert torch.equal(scored, masked & ~prompt)
    assert 0.3 < dropped.float().mean() < 0.4  # 0.7 x 0.5


def test_conditional_training_loss(tiny_model_cfg):
    model = make_model(tiny_model_cfg)
    x0 = torch.randint(4, 32, (8, 32), generator=torch.Generator().manual_seed(2))
    out = training_loss(model, x0, ProcessConfig(prompt_prob=1.0, cond_dropout=0.1), MASK, torch.Generator().manual_seed(0))
    assert torch.isfinite(out.loss) and out.masked_tokens > 0
    with pytest.raises(ValueError, match="prompt_prob"):
        validate(RunConfig(process=ProcessConfig(cond_dropout=0.1)))
    with pytest.raises(ValueError, match="block"):
        validate(RunConfig(process=ProcessConfig(prompt_prob=0.5, block_size=8), model=ModelConfig(time_cond="none")))


def test_cli_trains_with_prompt_dropout_and_samples_guided_batches(tmp_path, capsys):
    from sunfish.cli import main
    from test_cli import TINY
    from test_train import DOCS

    corpus = tmp_path / "c.txt"
    corpus.write_text("\n\n".join(DOCS), encoding="utf-8")
    out = tmp_path / "run"
    assert main(["train", "--preset", "nano", "--data", str(corpus), "--out", str(out), "--steps", "3", *TINY,
                 "--process.prompt_prob=0.5", "--process.cond_dropout=0.2"]) == 0
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt": p}) for p in ["the cat", "a", "the sun was"]), encoding="utf-8")
    capsys.readouterr()
    flags = ["--length", "12", "--steps", "6", "--temperature", "1", "--guidance", "1.5", "--remask", "cap", "--seed", "4"]
    assert main(["sample", str(out), "--prompts", str(prompts), "--batch-size", "2", "--json", *flags]) == 0
    batched = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [b["text"][: len(p)] for b, p in zip(batched, ["the cat", "a", "the sun was"])] == ["the cat", "a", "the sun was"]
    assert batched[0]["nfe"] == 12  # two passes per step with guidance
    assert main(["sample", str(out), "--prompt", "a", *flags[:-1], "5"]) == 0  # row 1 uses seed 4 + 1
    assert capsys.readouterr().out.rstrip("\n") == batched[1]["text"]
    assert main(["sample", str(out), "--prompts", str(prompts), "--trace", str(tmp_path / "t.gif")]) == 2
    assert "--prompts" in capsys.readouterr().err
    (tmp_path / "bad.jsonl").write_text('{"text": "x"}\n', encoding="utf-8")
    assert main(["sample", str(out), "--prompts", str(tmp_path / "bad.jsonl")]) == 2
    assert 'line 1' in capsys.readouterr().err
