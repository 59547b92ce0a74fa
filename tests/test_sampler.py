import dataclasses

import pytest
import torch

from sunfish.config import Policy, SamplerConfig, MaskScheduleKind, CommitRule, TimeCond
from sunfish.process.schedules import MaskSchedule
from sunfish.sample.policies import transfer_counts
from sunfish.sample.unmask import filter_logits, unmask

from conftest import make_model

MASK = 3
SCHEDULE = MaskSchedule(MaskScheduleKind.LINEAR)


def canvas(prompt_len=6, gen=24, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    prompt = torch.randint(4, 32, (batch, prompt_len), generator=g)
    return torch.cat([prompt, torch.full((batch, gen), MASK)], dim=1)


def run(model, x, seed=0, callback=None, **kw):
    cfg = SamplerConfig(**{"steps": 8, **kw})
    return unmask(model, x, MASK, cfg, generator=torch.Generator().manual_seed(seed), schedule=SCHEDULE, callback=callback)


ALL = [dict(policy=p) for p in Policy] + [
    dict(rule=CommitRule.ANCESTRAL),
    dict(block_length=8, steps=9),
    dict(temperature=1.0, top_k=5),
    dict(temperature=0.7, top_p=0.9, policy=Policy.MARGIN),
    dict(steps=1),
    dict(steps=24),
]


@pytest.mark.parametrize("kw", ALL, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
def test_never_returns_mask_and_keeps_prompt(tiny_model_cfg, kw):
    model = make_model(tiny_model_cfg)
    x = canvas()
    result = run(model, x, **kw)
    assert not (result.tokens == MASK).any()
    assert torch.equal(result.tokens[:, :6], x[:, :6])
    assert result.steps <= kw.get("steps", 8)
    if kw.get("policy") is Policy.INFO_GAIN:  # lookahead passes count (tests/test_info_gain.py checks how many)
        assert result.nfe > result.steps
    else:
        assert result.nfe == result.steps


@pytest.mark.parametrize("kw", ALL[:6], ids=str)
def test_seeded_runs_repeat(tiny_model_cfg, kw):
    model = make_model(tiny_model_cfg)
    kw = {**kw, "temperature": 1.0}
    a, b = run(model, canvas(), seed=3, **kw), run(model, canvas(), seed=3, **kw)
    assert torch.equal(a.tokens, b.tokens)
    c = run(model, canvas(), seed=4, **kw)
    assert not torch.equal(a.tokens, c.tokens)


def test_infill_keeps_context(tiny_model_cfg):
    model = make_model(tiny_model_cfg)
    x = torch.randint(4, 32, (1, 40), generator=torch.Generator().manual_seed(1))
    holes = torch.zeros_like(x, dtype=torch.bool)
    holes[0, 5:10] = True
    holes[0, 20:33] = True
    x = x.masked_fill(holes, MASK)
    out = run(model, x, steps=6, block_length=4).tokens
    assert torch.equal(out[~holes], x[~holes])
    assert not (out == MASK).any()


def test_fixed_schedule_reveals_the_planned_counts(tiny_model_cfg):
    model = make_model(tiny_model_cfg)
    seen = []
    run(model, canvas(gen=23, batch=1), steps=5, callback=lambda info: seen.append(int(info.revealed.sum())))
    assert seen == [5, 5, 5, 4, 4]
    assert transfer_counts(torch.tensor([23]), 5).tolist() == [[5, 5, 5, 4, 4]]


def test_blocks_finish_in_order(tiny_model_cfg):
    model = make_model(tiny_model_cfg)
    states = []
    run(model, canvas(gen=16, batch=1), steps=4, block_length=8, callback=lambda info: states.append(info.masked[0].clone()))
    # after 2 steps the first block (positions 6..13) is done and the second untouched
    assert not states[1][6:14].any() and states[1][14:].all()


def test_confidence_policy_commits_most_confident(tiny_model_cfg):
    model = make_model(tiny_model_cfg)
    x = canvas(gen=12, batch=1)
    logits = model(x)[0, 6:].float()
    logits[:, MASK] = float("-inf")
    conf = logits.softmax(-1).max(-1).values
    seen = []
    run(model, x, steps=12, callback=lambda info: seen.append(info.revealed[0].nonzero().item()))
    assert seen[0] == 6 + int(conf.argmax())


def test_time_conditioned_model_samples(tiny_model_cfg):
    model = make_model(dataclasses.replace(tiny_model_cfg, time_cond=TimeCond.LEARNED))
    assert not (run(model, canvas()).tokens == MASK).any()


def test_filter_logits_top_k_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(filter_logits(logits, 2, 1.0)).tolist() == [[False, False, True, True]]
    assert torch.isinf(filter_logits(logits, 0, 0.7)).tolist() == [[False, False, True, True]]
    assert torch.isinf(filter_logits(logits, 0, 0.4)).tolist() == [[False, True, True, True]]


def _every_sampler():
    """(name, run(model_cfg) -> (canvas in, canvas out)) for each sampling path, batched ones included."""
    from sunfish.config import AttentionKind, CacheMode
    from sunfish.sample.ar import ar_generate
    from sunfish.sample.batch import left_pad, row_generators
    from sunfish.sample.block import block_generate

    def plain(**kw):
        def go(model_cfg):
            x = canvas(gen=16)
            return x, run(make_model(model_cfg), x, **kw).tokens
        return go

    def padded(kind):
        def go(model_cfg):
            rows = [[1, 5, 6], [1, 7, 8, 9, 10, 11]]
            prompt, padding = left_pad(rows, 0, "cpu")
            gens, cfg = row_generators([0, 1], "cpu"), SamplerConfig(steps=8, temperature=1.0)
            if kind == "ar":
                model = make_model(dataclasses.replace(model_cfg, attention=AttentionKind.CAUSAL))
                out = ar_generate(model, prompt, 12, cfg, generator=gens, mask_id=MASK, padding=padding).tokens
            elif kind == "block":
                out = block_generate(make_model(model_cfg), prompt, 12, MASK, 4, cfg, generator=gens, schedule=SCHEDULE,
                                     padding=padding).tokens
            else:
                x = torch.cat([prompt, torch.full((2, 12), MASK)], dim=1)
                out = unmask(make_model(model_cfg), x, MASK, cfg, generator=gens, schedule=SCHEDULE, padding=padding).tokens
            return torch.cat([prompt, torch.full((2, 12), MASK)], dim=1), out
        return go

    def single(kind):
        def go(model_cfg):
            prompt = canvas(gen=0)
            cfg = SamplerConfig(steps=8, temperature=1.0)
            if kind == "ar":
                model = make_model(dataclasses.replace(model_cfg, attention=AttentionKind.CAUSAL))
                out = ar_generate(model, prompt, 12, cfg, generator=torch.Generator(), mask_id=MASK).tokens
            else:
                out = block_generate(make_model(model_cfg), prompt, 12, MASK, 4, cfg, generator=torch.Generator(),
                                     schedule=SCHEDULE).tokens
            return torch.cat([prompt, torch.full((2, 12), MASK)], dim=1), out
        return go

    return {
        "fixed": plain(), "ancestral": plain(rule=CommitRule.ANCESTRAL),
        "threshold": plain(rule=CommitRule.THRESHOLD), "factor": plain(rule=CommitRule.FACTOR),
        "entropy_bound": plain(rule=CommitRule.ENTROPY_BOUND),
        "prefix_cache": plain(cache=CacheMode.PREFIX, block_length=8), "dual_cache": plain(cache=CacheMode.DUAL, block_length=8),
        "remask": plain(remask="conf", remask_eta=0.5, temperature=1.0), "guidance": plain(guidance=1.0),
        "block_diffusion": single("block"), "autoregressive": single("ar"),
        "batched_plain": padded("plain"), "batched_block": padded("block"), "batched_ar": padded("ar"),
    }


@pytest.mark.parametrize("name", list(_every_sampler()))
def test_every_sampler_keeps_prompt_and_never_returns_a_mask(tiny_model_cfg, name):
    x, out = _every_sampler()[name](tiny_model_cfg)
    kept = x != MASK
    assert out.shape == x.shape and torch.equal(out[kept], x[kept])
    assert not (out == MASK).any()


class _FavoursSpecials(torch.nn.Module):
    """Wraps a model so its head strongly prefers PAD (0), BOS (1) and UNK (4): a sampler must still not write them."""

    def __init__(self, model):
        super().__init__()
        self.inner, self.cfg, self.needs_time = model, model.cfg, model.needs_time

    def hidden(self, *args, **kwargs):
        return self.inner.hidden(*args, **kwargs)

    def head(self, h):
        logits = self.inner.head(h)
        logits[..., [0, 1, 4]] += 100.0
        return logits


@pytest.mark.parametrize("kind", ["plain", "guided", "block", "ar"])
def test_suppressed_specials_are_never_sampled(tiny_model_cfg, kind):
    from sunfish.config import AttentionKind
    from sunfish.sample.ar import ar_generate
    from sunfish.sample.block import block_generate

    suppress, cfg = (0, 1, 4), SamplerConfig(steps=8, temperature=1.0, guidance=1.0 if kind == "guided" else 0.0)
    prompt, gen = canvas(gen=0), torch.Generator().manual_seed(0)
    if kind == "ar":
        model = _FavoursSpecials(make_model(dataclasses.replace(tiny_model_cfg, attention=AttentionKind.CAUSAL)))
        out = ar_generate(model, prompt, 12, cfg, generator=gen, mask_id=MASK, suppress=suppress).tokens
    elif kind == "block":
        out = block_generate(_FavoursSpecials(make_model(tiny_model_cfg)), prompt, 12, MASK, 4, cfg, generator=gen,
                             schedule=SCHEDULE, suppress=suppress).tokens
    else:
        x = torch.cat([prompt, torch.full((2, 12), MASK)], dim=1)
        out = unmask(_FavoursSpecials(make_model(tiny_model_cfg)), x, MASK, cfg, generator=gen, schedule=SCHEDULE,
                     suppress=suppress).tokens
    new = out[:, prompt.shape[1]:]
    assert not torch.isin(new, torch.tensor([0, 1, 4, MASK])).any()
    # without suppression the same model writes them: the test can fail
    if kind == "plain":
        x = torch.cat([prompt, torch.full((2, 12), MASK)], dim=1)
        raw = unmask(_FavoursSpecials(make_model(tiny_model_cfg)), x, MASK, cfg, generator=gen, schedule=SCHEDULE).tokens
        assert torch.isin(raw[:, prompt.shape[1]:], torch.tensor([0, 1, 4])).all()


def test_never_sampled_ids_of_the_tokenizers():
    from sunfish.sample.text import never_sampled
    from sunfish.tokenizer import train_tokenizer

    char = train_tokenizer("char", ["hello world"], 0)
    assert never_sampled(char) == tuple(sorted({char.pad_id, char.bos_id, char.unk_id}))
    assert char.eos_id not in never_sampled(char)


def test_infill_leaves_the_space_before_a_span_to_the_fill_where_words_carry_their_space():
    """'a little [MASK:2] named Max': a byte-level BPE encodes ' dog' as one token, so the prefix must end at
    'little' (no bare ' ' token before the fill); a character tokenizer keeps the space as written."""
    from sunfish.data.synth import generate_stories
    from sunfish.sample.prompt import infill_canvas
    from sunfish.tokenizer.bpe import train_bpe_tokenizer
    from sunfish.tokenizer.char import train_char_tokenizer

    stories = generate_stories("en", 200, 0)
    text = "there was a little [MASK:2] named Max."
    bpe = train_bpe_tokenizer(stories, 600)
    ids = infill_canvas(bpe, text, 128).ids
    assert ids == [bpe.bos_id, *bpe.encode("there was a little"), bpe.mask_id, bpe.mask_id, *bpe.encode(" named Max.")]
    char = train_char_tokenizer(stories)
    ids = infill_canvas(char, text, 128).ids
    assert ids == [char.bos_id, *char.encode("there was a little "), char.mask_id, char.mask_id, *char.encode(" named Max.")]
