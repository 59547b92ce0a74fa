"""Pipelined multi-block decoding (D2F, sample/pipeline.py): with start ratio 1 it is block decoding token for token,
its cached logits are exact, pipelining cuts forward passes on a confident model, batch rows decode as alone."""

import dataclasses
import json

import pytest
import torch

from sunfish.config import CommitRule, ConfigError, MaskScheduleKind, ProcessConfig, SamplerConfig
from sunfish.process.block import block_ids
from sunfish.process.schedules import MaskSchedule
from sunfish.registry import spec_of
from sunfish.sample import pipeline
from sunfish.sample.batch import left_pad, row_generators
from sunfish.sample.block import block_generate
from sunfish.sample.pipeline import pipeline_generate
from sunfish.sample.prompt import cut_at_eos
from sunfish.validate import check_sampler

from conftest import make_model

MASK, PAD = 3, 0
SCHEDULE = MaskSchedule(MaskScheduleKind.LINEAR)
GEN = 13
SEEDS = [11, 12, 13, 14]
RULES = [dict(), dict(rule=CommitRule.THRESHOLD, threshold=0.05, temperature=0.7),
         dict(rule=CommitRule.ANCESTRAL, temperature=1.0), dict(rule=CommitRule.ANCESTRAL_TOPK, steps=20, temperature=1.0),
         dict(temperature=1.0, remask="rescale", remask_eta=0.5, remask_start=0.0),
         dict(rule=CommitRule.ENTROPY_BOUND, entropy_bound=0.5, temperature=1.0, top_k=5)]


@pytest.fixture
def model(tiny_model_cfg):
    return make_model(dataclasses.replace(tiny_model_cfg, init_std=0.3))


def prompts():
    g = torch.Generator().manual_seed(5)
    return [[1] + torch.randint(4, 32, (n,), generator=g).tolist() for n in (2, 7, 4, 7)]  # BOS + text


def run(decoder, model, prompt, cfg, block_size, generator, **kw):
    return decoder(model, prompt, GEN, MASK, block_size, cfg, generator=generator, schedule=SCHEDULE, **kw)


@pytest.mark.parametrize("kw", RULES, ids=lambda kw: ",".join(f"{k}={getattr(v, 'value', v)}" for k, v in kw.items()))
def test_start_one_is_block_decoding(model, kw):
    cfg = SamplerConfig(**{"steps": 6, **kw})
    for block_size in (3, 4, 5):
        for p in prompts():
            prompt = torch.tensor([p])
            plain = run(block_generate, model, prompt, cfg, block_size, torch.Generator().manual_seed(1))
            piped = run(pipeline_generate, model, prompt, cfg, block_size, torch.Generator().manual_seed(1))
            assert torch.equal(piped.tokens, plain.tokens) and piped.steps == plain.steps
            n_blocks = -(-GEN // block_size)
            assert piped.nfe == piped.steps == plain.nfe - (n_blocks - 1)  # the cache appends ride on the steps


@pytest.mark.parametrize("kw", RULES[:2], ids=["fixed", "threshold"])
def test_start_one_is_block_decoding_in_a_padded_batch(model, kw):
    cfg = SamplerConfig(**{"steps": 6, **kw})
    x, padding = left_pad(prompts(), PAD, "cpu")
    for block_size in (3, 4):
        plain = run(block_generate, model, x, cfg, block_size, row_generators(SEEDS, "cpu"), padding=padding)
        piped = run(pipeline_generate, model, x, cfg, block_size, row_generators(SEEDS, "cpu"), padding=padding)
        assert torch.equal(piped.tokens, plain.tokens)


def full_logits(model, x, prompt_len: int, block_size: int, padding=None):
    """Logits (B, L, V) of canvas x under one block-causal pass over all of it, without a cache."""
    B, L = x.shape
    gen = torch.arange(L - prompt_len) // block_size + L  # generated blocks after every prompt block
    if padding is None:
        ids = torch.cat([block_ids(prompt_len, block_size), gen])
        return model(x, attn_mask=ids[:, None] >= ids[None, :])
    ids = torch.cat([padding.positions(0, prompt_len) // block_size, gen.expand(B, -1)], dim=1)  # (B, L)
    return model(x, attn_mask=padding.square(ids[:, :, None] >= ids[:, None, :]), positions=padding.positions(0, L))


@pytest.mark.parametrize("padded", [False, True])
def test_cached_logits_equal_uncached(model, monkeypatch, padded):
    """Every pipelined step's logits (several blocks in flight, semi-activated ones seeing masks before them) equal
    those of one block-causal pass over the whole canvas."""
    calls = []
    inner = pipeline._CachedSpan.__call__

    def record(self, x, first, last, keep):
        logits = inner(self, x, first, last, keep)
        calls.append((x.clone(), self.blocks[first][0], self.blocks[last][1], logits))
        return logits

    monkeypatch.setattr(pipeline._CachedSpan, "__call__", record)
    cfg = SamplerConfig(steps=GEN, pipeline_start=0.3, pipeline_activate=0.5, pipeline_threshold=0.1, pipeline_depth=3,
                        temperature=1.0)
    rows = prompts() if padded else [prompts()[1], prompts()[3]]
    x, padding = left_pad(rows, PAD, "cpu")
    out = run(pipeline_generate, model, x, cfg, 3, row_generators(SEEDS[: len(rows)], "cpu"), padding=padding)
    assert out.nfe == len(calls) and any(hi - lo > 3 for _, lo, hi, _ in calls)  # several blocks in one pass
    for canvas, lo, hi, cached in calls:
        exact = full_logits(model, canvas, x.shape[1], 3, padding)[:, lo:hi]
        finite = torch.isfinite(cached)
        assert torch.allclose(cached[finite], exact[finite], atol=1e-5)


def test_blocks_that_never_activate_or_commit_leave_block_decoding(model):
    """Blocks join early but commit nothing below pipeline_threshold (1: never, on this model) and activate only
    once the block before is finished: greedy decoding is then block decoding's, in as many passes."""
    for kw in (dict(steps=8), dict(rule=CommitRule.THRESHOLD, threshold=0.2)):
        cfg = SamplerConfig(**kw)
        never = dataclasses.replace(cfg, pipeline_start=0.2, pipeline_activate=1.0, pipeline_threshold=1.0)
        for p in prompts():
            plain = run(block_generate, model, torch.tensor([p]), cfg, 4, torch.Generator())
            piped = run(pipeline_generate, model, torch.tensor([p]), never, 4, torch.Generator())
            assert torch.equal(piped.tokens, plain.tokens) and piped.steps == plain.steps


def test_depth_bounds_the_blocks_in_flight(tiny_model_cfg, monkeypatch):
    spans = []
    inner = pipeline._CachedSpan.__call__

    def record(self, x, first, last, keep):
        spans.append(last - keep + 1)  # blocks from the first unfinished one to the last in flight
        return inner(self, x, first, last, keep)

    monkeypatch.setattr(pipeline._CachedSpan, "__call__", record)
    model, prompt = confident_model(tiny_model_cfg), torch.tensor([[1, 9, 10, 11]])
    nfe = {}
    for depth in (2, 4):
        spans.clear()
        cfg = SamplerConfig(steps=32, pipeline_start=0.25, pipeline_depth=depth)
        nfe[depth] = pipeline_generate(model, prompt, 32, MASK, 4, cfg, generator=torch.Generator(), schedule=SCHEDULE).nfe
        assert max(spans) == depth
    assert nfe[4] < nfe[2] < 32


def confident_model(cfg, token: int = 7):
    """A model sure of `token` everywhere: attention and MLPs write nothing, every embedding is one vector v and the
    head scores `token` by v."""
    model = make_model(cfg)
    with torch.no_grad():
        for block in model.blocks:
            block.attn.out.weight.zero_()
            block.mlp.down.weight.zero_()
        v = torch.randn(cfg.d_model, generator=torch.Generator().manual_seed(0))
        model.embed.weight.copy_(v.expand_as(model.embed.weight))
        model.lm_head.weight.zero_()
        model.lm_head.weight[token] = 4 * v / v.norm()  # logit 4 sqrt(d_model) over 0: probability ~1
    return model


@pytest.mark.parametrize("kw", [dict(steps=24), dict(steps=12, policy="margin")], ids=["1/step", "2/step"])
def test_pipelining_cuts_forward_passes(tiny_model_cfg, kw):
    model = confident_model(tiny_model_cfg)
    prompt = torch.tensor([[1, 9, 10, 11], [1, 12, 13, 14]])
    cfg = SamplerConfig(**kw)
    plain = block_generate(model, prompt, 24, MASK, 4, cfg, generator=torch.Generator().manual_seed(0), schedule=SCHEDULE)
    one = pipeline_generate(model, prompt, 24, MASK, 4, cfg, generator=torch.Generator().manual_seed(0), schedule=SCHEDULE)
    piped = pipeline_generate(model, prompt, 24, MASK, 4, dataclasses.replace(cfg, pipeline_start=0.25),
                              generator=torch.Generator().manual_seed(0), schedule=SCHEDULE)
    assert piped.nfe < one.nfe < plain.nfe
    assert torch.equal(piped.tokens, plain.tokens) and (piped.tokens[:, 4:] == 7).all()
    assert plain.steps == cfg.steps and piped.nfe <= cfg.steps // 2


def cycle(g: torch.Generator, rows: int = 16, length: int = 32, period: int = 12) -> torch.Tensor:
    """Sequences that count up modulo `period` (token ids from 4) from a random phase: any token fixes the rest."""
    return (torch.randint(0, period, (rows, 1), generator=g) + torch.arange(length)) % period + 4


@pytest.fixture(scope="module")
def forced_model():
    """A tiny block model (blocks of 4) trained on `cycle` with half the rows under diffusion forcing."""
    from sunfish.config import ModelConfig
    from sunfish.registry import training_loss

    model = make_model(ModelConfig(vocab_size=32, d_model=32, n_layers=2, n_heads=2, context=64)).train()
    process, g = ProcessConfig(block_size=4, block_forcing=0.5), torch.Generator().manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(300):
        loss = training_loss(model, cycle(g), process, MASK, g).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.mark.parametrize("kw", [dict(steps=24), dict(rule=CommitRule.THRESHOLD, threshold=0.9)], ids=["1/step", "threshold"])
def test_a_model_trained_with_diffusion_forcing_decodes_pipelined(forced_model, kw):
    """Trained with forcing, the model is right about later blocks while earlier ones are partly masked: pipelined
    decoding (one token per step at the active block) takes far fewer passes and still continues every cycle."""
    prompt = cycle(torch.Generator().manual_seed(9), rows=4)[:, :5]
    cfg = SamplerConfig(**kw)
    plain = pipeline_generate(forced_model, prompt, 24, MASK, 4, cfg, generator=torch.Generator(), schedule=SCHEDULE)
    piped = pipeline_generate(forced_model, prompt, 24, MASK, 4, dataclasses.replace(cfg, pipeline_start=0.25),
                              generator=torch.Generator(), schedule=SCHEDULE)
    continues = (piped.tokens[:, 1:] - 4) % 12 == (piped.tokens[:, :-1] - 3) % 12
    assert continues.all() and torch.equal(piped.tokens, plain.tokens)
    assert piped.nfe <= plain.nfe
    if cfg.rule is CommitRule.FIXED:
        assert plain.nfe == 24 and piped.nfe <= 12


def test_forcing_of_one_block_is_mdlm(tiny_model_cfg):
    """With one block per sequence and every row forced, the forcing loss is the masked-diffusion loss."""
    from sunfish.registry import training_loss

    model = make_model(tiny_model_cfg)
    x0 = torch.randint(4, 32, (4, 24), generator=torch.Generator().manual_seed(0))
    mdlm = training_loss(model, x0, ProcessConfig(), MASK, torch.Generator().manual_seed(7))
    forced = training_loss(model, x0, ProcessConfig(block_size=24, block_forcing=1.0), MASK, torch.Generator().manual_seed(7))
    assert forced.masked_tokens == mdlm.masked_tokens and torch.allclose(forced.loss, mdlm.loss, atol=1e-5)
    bd3 = training_loss(model, x0, ProcessConfig(block_size=8), MASK, torch.Generator().manual_seed(7))
    half = training_loss(model, x0, ProcessConfig(block_size=8, block_forcing=0.5), MASK, torch.Generator().manual_seed(7))
    assert torch.isfinite(half.loss) and not torch.allclose(half.loss, bd3.loss)


def alone_and_batched(decode, eos=None):
    alone = [decode(torch.tensor([p]), None, torch.Generator().manual_seed(s)).tokens[0] for p, s in zip(prompts(), SEEDS)]
    x, padding = left_pad(prompts(), PAD, "cpu")
    batched = decode(x, padding, row_generators(SEEDS, "cpu")).tokens
    cut = (lambda ids: cut_at_eos(ids, eos)) if eos is not None else (lambda ids: ids)
    return [cut(r[-GEN:].tolist()) for r in alone], [cut(r[-GEN:].tolist()) for r in batched]


@pytest.mark.parametrize("kw", [dict(temperature=1.0), dict(rule=CommitRule.THRESHOLD, threshold=0.3, temperature=0.8),
                                dict(rule=CommitRule.ANCESTRAL, temperature=1.0, pipeline_depth=2)], ids=str)
def test_batched_rows_decode_as_alone(model, kw):
    cfg = SamplerConfig(**{"steps": 8, "pipeline_start": 0.3, "pipeline_activate": 0.6, "pipeline_threshold": 0.2, **kw})
    alone, batched = alone_and_batched(lambda p, pad, g: run(pipeline_generate, model, p, cfg, 3, g, padding=pad))
    assert batched == alone and all(MASK not in row for row in batched)


def test_eos_stops_each_row(model):
    eos = 17  # a frequent token of this random model stands in for EOS
    cfg = SamplerConfig(steps=GEN, temperature=1.5, pipeline_start=0.3, pipeline_threshold=0.2)

    def decode(p, pad, g, eos_id=eos):
        return run(pipeline_generate, model, p, cfg, 3, g, padding=pad, eos_id=eos_id)

    alone, batched = alone_and_batched(decode, eos=eos)
    assert batched == alone and any(len(row) < GEN for row in alone)  # some row stopped early
    x, padding = left_pad(prompts(), PAD, "cpu")
    stopped = decode(x, padding, row_generators(SEEDS, "cpu"))
    assert not (stopped.tokens == MASK).any()
    assert stopped.nfe < decode(x, padding, row_generators(SEEDS, "cpu"), eos_id=None).nfe


def test_refusals(model):
    prompt = torch.tensor([prompts()[0]])
    with pytest.raises(ValueError, match="info_gain"):
        run(pipeline_generate, model, prompt, SamplerConfig(policy="info_gain", pipeline_start=0.5), 4, torch.Generator())
    with pytest.raises(ValueError, match="guidance"):
        run(pipeline_generate, model, prompt, SamplerConfig(guidance=1.0, pipeline_start=0.5), 4, torch.Generator())
    masked, block = spec_of(ProcessConfig()), spec_of(ProcessConfig(block_size=4))
    with pytest.raises(ConfigError, match="pipeline_start does nothing for masked diffusion models; it applies to block"):
        check_sampler(masked, SamplerConfig(pipeline_start=0.5), ["pipeline_start"])
    with pytest.raises(ConfigError, match="pipeline_depth does nothing with sampler.pipeline_start = 1.0"):
        check_sampler(block, SamplerConfig(pipeline_depth=3), ["pipeline_depth"])
    check_sampler(block, SamplerConfig(pipeline_start=0.5, pipeline_depth=3), ["pipeline_start", "pipeline_depth"])
    from sunfish.config import RunConfig
    from sunfish.validate import validate

    with pytest.raises(ConfigError, match="process.block_forcing does nothing for masked diffusion models"):
        validate(RunConfig(process=ProcessConfig(block_forcing=0.5)), ["process.block_forcing"])


@pytest.fixture(scope="module")
def block_run(tmp_path_factory):
    from sunfish.cli import main
    from test_cli import TINY
    from test_train import DOCS

    root = tmp_path_factory.mktemp("pipeline")
    corpus = root / "corpus.txt"
    corpus.write_text("\n\n".join(DOCS), encoding="utf-8")
    out = root / "bd3"
    assert main(["train", "--preset", "nano", "--data", str(corpus), "--out", str(out), "--steps", "3",
                 "--process.block_size=4", "--process.block_forcing=0.5", *TINY]) == 0
    return out


def test_cli_and_api(block_run, capsys):
    import sunfish
    from sunfish.cli import main

    capsys.readouterr()
    assert main(["sample", str(block_run), "--prompt", "the cat", "--length", "20", "--json", "--no-stop-at-eos",
                 "--sampler.pipeline_start", "0.5", "--sampler.rule", "threshold", "--sampler.pipeline_depth", "3"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["text"].startswith("the cat") and body["nfe"] == body["steps"] > 0
    model = sunfish.load(block_run)
    one = model.generate("the cat", 16, pipeline_start=0.5, stop_at_eos=False)
    assert one.text.startswith("the cat") and one.nfe == one.steps
    both = model.generate(["the cat", "a dog ran"], 16, pipeline_start=0.5, seed=3)
    assert [g.text for g in both] == [model.generate(p, 16, pipeline_start=0.5, seed=3 + i).text
                                      for i, p in enumerate(["the cat", "a dog ran"])]
    assert main(["sample", str(block_run), "--prompt", "the cat", "--sampler.pipeline_threshold", "0.5"]) != 0
    assert "pipeline_threshold does nothing" in capsys.readouterr().err


def test_sft_refuses_forcing(block_run):
    from sunfish.training.sft import sft_config

    with pytest.raises(ValueError, match="process.block_forcing applies to `sunfish train`"):
        sft_config(block_run, {"process": {"block_forcing": 0.5}})
