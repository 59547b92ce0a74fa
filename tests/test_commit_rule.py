"""The learned commit rule (Learn2PD): a filter that commits exactly one equals the confidence sampler; a trained
filter commits more than one token per step and keeps the exact output; the end head; refusals."""

import json

import pytest
import torch

from sunfish.cli import main
from sunfish.config import CacheMode, CommitRule, ConfigError, MaskScheduleKind, RemaskKind, SamplerConfig
from sunfish.checkpoint.files import resolve_checkpoint, verify_checkpoint
from sunfish.process.schedules import MaskSchedule
from sunfish.registry import MASKED
from sunfish.sample.block import block_generate
from sunfish.sample.learned import FEATURES, FILE_NAME, CommitFilter, CommitSpec, load_filter, save_filter
from sunfish.sample.unmask import unmask
from sunfish.validate import check_sampler

from conftest import cli_error, make_model
from test_sampler import MASK, canvas
from test_train import DOCS
from test_tune_sampler import TINY

SCHEDULE = MaskSchedule(MaskScheduleKind.LINEAR)
PROMPTS = ["the cat", "the dog", "a little girl", "the sun", "the bird", "the cat sat", "she was", "the dog ran",
           "a red ball", "the garden", "Маша", "the park", "in the", "she found", "the birds sang", "the mat"]


def hand_filter(path, threshold=1.0, end_threshold=None, eos_id=None, vocab=32):
    """A filter whose commit score is increasing in the confidence feature, with the given bars."""
    spec = CommitSpec(features=FEATURES, hidden=4, threshold=threshold, end_threshold=end_threshold, eos_id=eos_id,
                      vocab_size=vocab)
    filt = CommitFilter(spec)
    with torch.no_grad():
        for head in (filt.commit, filt.end):
            for layer in head:
                if isinstance(layer, torch.nn.Linear):
                    layer.weight.zero_()
                    layer.bias.zero_()
        filt.commit[0].weight[0, FEATURES.index("confidence")] = 1.0  # score grows with confidence
        filt.commit[2].weight[0, 0] = 1.0
        filt.commit[4].weight[0, 0] = 1.0
    return save_filter(path, filt)


def decode(model, x, seed=0, eos_id=None, **kw):
    cfg = SamplerConfig(**kw)
    return unmask(model, x, MASK, cfg, generator=torch.Generator().manual_seed(seed), schedule=SCHEDULE, eos_id=eos_id)


SETTINGS = [{}, {"block_length": 8}, {"block_length": 8, "cache": CacheMode.DUAL}, {"cache": CacheMode.PREFIX},
            {"block_length": 8, "cache": CacheMode.PREFIX, "temperature": 0.9, "top_k": 8}]


@pytest.mark.parametrize("kw", SETTINGS, ids=lambda kw: ",".join(f"{k}={getattr(v, 'value', v)}" for k, v in kw.items()) or "plain")
def test_commit_one_filter_equals_the_confidence_sampler(tiny_model_cfg, tmp_path, kw):
    model = make_model(tiny_model_cfg)
    x = canvas(gen=24)
    path = hand_filter(tmp_path / "one.safetensors")
    learned = decode(model, x, rule=CommitRule.LEARNED, commit_model=str(path), **kw)
    exact = decode(model, x, rule=CommitRule.FIXED, steps=24, **kw)
    assert torch.equal(learned.tokens, exact.tokens) and learned.steps == exact.steps == 24
    assert learned.nfe == exact.nfe and learned.refreshes == exact.refreshes


def test_commit_one_filter_equals_the_confidence_sampler_for_block_diffusion(tiny_model_cfg, tmp_path):
    model = make_model(tiny_model_cfg)
    prompt = canvas(gen=0)
    path = hand_filter(tmp_path / "one.safetensors")
    out = {}
    for name, kw in {"learned": dict(rule=CommitRule.LEARNED, commit_model=str(path)),
                     "exact": dict(rule=CommitRule.FIXED, steps=16)}.items():
        out[name] = block_generate(model, prompt, 16, MASK, 4, SamplerConfig(**kw),
                                   generator=torch.Generator().manual_seed(0), schedule=SCHEDULE)
    assert torch.equal(out["learned"].tokens, out["exact"].tokens) and out["learned"].steps == 16
    assert out["learned"].nfe == out["exact"].nfe


def test_the_learned_rule_runs_until_the_canvas_is_full_whatever_the_step_setting(tiny_model_cfg, tmp_path):
    model = make_model(tiny_model_cfg)
    path = hand_filter(tmp_path / "one.safetensors")
    res = decode(model, canvas(gen=24), rule=CommitRule.LEARNED, commit_model=str(path), steps=4, block_length=8)
    assert res.steps == 24 and not (res.tokens == MASK).any()


def test_a_filter_passing_everything_commits_a_block_per_step(tiny_model_cfg, tmp_path):
    model = make_model(tiny_model_cfg)
    path = hand_filter(tmp_path / "all.safetensors", threshold=0.0)
    res = decode(model, canvas(gen=24), rule=CommitRule.LEARNED, commit_model=str(path), block_length=8)
    assert res.steps == 3 and not (res.tokens == MASK).any()


def test_end_head_fills_the_row_with_eos_and_stops_it(tiny_model_cfg, tmp_path):
    model = make_model(tiny_model_cfg)
    x = canvas(gen=24, batch=1)
    first = decode(model, x, rule=CommitRule.FIXED, steps=24, block_length=8)
    # call the token the exact sampler commits first "EOS": the end head (always on) ends the row right there
    info = []
    decode_cb = unmask(model, x, MASK, SamplerConfig(steps=24, block_length=8), generator=torch.Generator().manual_seed(0),
                       schedule=SCHEDULE, callback=info.append)
    col = int(info[0].revealed[0].nonzero()[0, 0])
    eos = int(decode_cb.tokens[0, col])
    path = hand_filter(tmp_path / "end.safetensors", end_threshold=0.0, eos_id=eos)
    ended = decode(model, x, eos_id=eos, rule=CommitRule.LEARNED, commit_model=str(path), block_length=8)
    assert (ended.tokens[0, col:] == eos).all() and not (ended.tokens == MASK).any()
    assert ended.steps <= col - 6 + 1 < first.steps  # at most the masks before the end: nothing after it
    kept = decode(model, x, eos_id=eos, rule=CommitRule.LEARNED, commit_model=str(path), block_length=8,
                  stop_at_eos=False)
    assert torch.equal(kept.tokens, first.tokens)  # without stop_at_eos the end head does nothing


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("commit")
    corpus = root / "corpus.txt"
    corpus.write_text("\n\n".join(DOCS), encoding="utf-8")
    out = root / "run"
    # a causal warm-up takes the tiny model past the unigram plateau in 300 steps (a few seconds), where its
    # predictions depend on the context: without it every prediction is a space, and every one is "already final"
    assert main(["train", "--preset", "nano", "--data", str(corpus), "--out", str(out), "--steps", "300", *TINY,
                 "--optim.lr=1e-2", "--optim.warmup_steps=10", "--process.causal_warmup=0.5"]) == 0
    prompts = root / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n", encoding="utf-8")
    return out, prompts


def test_tune_commit_trains_a_filter_that_commits_several_tokens_per_step(run, capsys):
    import sunfish

    out, prompts = run
    capsys.readouterr()
    assert main(["tune-commit", str(out), "--prompts", str(prompts), "--length", "16", "--block-length", "8",
                 "--epochs", "100", "--precision", "0.99"]) == 0
    text = capsys.readouterr().out
    assert "tokens per step" in text and FILE_NAME in text
    ckpt = resolve_checkpoint(out)
    verify_checkpoint(ckpt)  # the filter joined the manifest
    model = sunfish.load(out, threads=1)
    result = model.train_commit_rule(PROMPTS, out=ckpt.parent / "f.safetensors", length=16, block_length=8,
                                     epochs=100, precision=0.99)
    assert 0.2 < result.positive < 0.8  # the labels are not all alike: the filter has something to learn
    # more than one token per step, and most of the exact output kept (over seeds 0-4: 1.04-1.12 tokens per step at
    # agreement 0.87-0.95 on these 16 x 16 tokens; one early wrong commit changes the rest of a greedy row)
    assert result.tokens_per_step > 1.0 and result.agreement >= 0.85
    assert result.spec.features == FEATURES and 1000 < sum(p.numel() for p in load_filter(result.path).parameters()) < 3000
    # the checkpoint's own filter without --sampler.commit_model, and the Python API with a file
    assert main(["sample", str(out), "--prompt", "the cat", "--length", "16", "--rule", "learned", "--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["steps"] <= 16
    gen = model.generate("the cat", 16, rule="learned", commit_model=str(result.path), block_length=8)
    assert gen.steps <= 16 and gen.text.startswith("the cat")


def test_refusals(run, tmp_path, capsys):
    out, _ = run
    with pytest.raises(ConfigError, match="needs its filter"):
        check_sampler(MASKED, SamplerConfig(rule=CommitRule.LEARNED), ["rule"])
    with pytest.raises(ConfigError, match="does not take committed tokens back"):
        check_sampler(MASKED, SamplerConfig(rule=CommitRule.LEARNED, commit_model="f", remask=RemaskKind.CAP), [])
    err = cli_error(capsys, ["sample", str(out), "--prompt", "a", "--commit-model", "f.safetensors"])
    assert "commit_model does nothing with sampler.rule = fixed" in err
    missing = tmp_path / "missing.safetensors"
    err = cli_error(capsys, ["sample", str(out), "--prompt", "a", "--length", "8", "--rule", "learned", "--commit-model", str(missing)])
    assert "there is no commit model at" in err
    wrong = tmp_path / "wrong.safetensors"
    hand_filter(wrong)
    body = wrong.read_bytes().replace(b"margin", b"bogus1")  # same length: the header stays valid
    wrong.write_bytes(body)
    err = cli_error(capsys, ["sample", str(out), "--prompt", "a", "--length", "8", "--rule", "learned", "--commit-model", str(wrong)])
    assert "features Sunfish does not compute (bogus1)" in err
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a filter")
    err = cli_error(capsys, ["sample", str(out), "--prompt", "a", "--length", "8", "--rule", "learned", "--commit-model", str(junk)])
    assert "is not a commit model" in err
    foreign = hand_filter(tmp_path / "foreign.safetensors", vocab=7)
    err = cli_error(capsys, ["sample", str(out), "--prompt", "a", "--length", "8", "--rule", "learned", "--commit-model", str(foreign)])
    assert "was trained for a model with 7 tokens" in err


def test_bench_sample_takes_the_learned_rule_and_adaptive_refresh(run, tmp_path, capsys):
    from sunfish.loading import load_model

    out, prompts = run
    loaded = load_model(out, torch.device("cpu"))
    one = hand_filter(tmp_path / "one.safetensors", eos_id=loaded.tokenizer.eos_id, vocab=loaded.cfg.model.vocab_size)
    capsys.readouterr()
    assert main(["bench", "sample", str(out), "--lengths", "8", "--batch", "1", "--repeats", "1", "--prompts",
                 str(prompts), "--block-length", "4", "--sampler.commit_model", str(one),
                 "--sampler.refresh_bound", "0"]) == 0
    rows = {r[2]: r for r in ([c.strip() for c in line.strip("|").split("|")]
                              for line in capsys.readouterr().out.splitlines()
                              if line.startswith("| ") and not line.startswith("| length"))}
    assert list(rows)[:4] == ["baseline: LLaDA 1 token/step", "+ threshold 0.9", "+ prefix cache", "+ dual cache"]
    adaptive = [name for name in rows if name.startswith("+ dual cache, adaptive refresh 0 (")]
    assert adaptive and "refreshes/block" in adaptive[0]
    assert rows["learned commit rule"][4] == "1.000" and rows["learned commit rule"][7] == "1.000"  # the baseline
    assert rows["learned commit rule, dual cache"][4] == "1.000"  # one token per pass


def test_the_server_refuses_a_commit_model_path_from_a_client():
    from types import SimpleNamespace

    from sunfish.config import ServeConfig
    from sunfish.serve.jobs import sampler_settings
    from sunfish.serve.protocol import ApiError

    request = SimpleNamespace(sunfish={"rule": "learned", "commit_model": "/etc/passwd"}, max_tokens=8,
                              temperature=None, top_p=None)
    with pytest.raises(ApiError, match="names a file on the server"):
        sampler_settings(request, ServeConfig(), 8)
    settings, _ = sampler_settings(SimpleNamespace(sunfish={"rule": "learned"}, max_tokens=8, temperature=None,
                                                   top_p=None), ServeConfig(), 8)
    assert settings["rule"] == "learned"


def test_pipelined_decoding_refuses_the_learned_rule():
    from sunfish.sample.pipeline import check_pipeline

    with pytest.raises(ValueError, match="pipelined decoding does not run the learned commit rule"):
        check_pipeline(SamplerConfig(rule=CommitRule.LEARNED, commit_model="f.safetensors", pipeline_start=0.5))


def test_training_the_filter_repeats_exactly_with_its_seed(run, tmp_path):
    import sunfish

    out, _ = run
    model = sunfish.load(out, threads=1)
    a, b = (model.train_commit_rule(PROMPTS[:4], out=tmp_path / f"{k}.safetensors", length=8, block_length=8,
                                    epochs=20, seed=3) for k in "ab")
    torch.rand(3)  # the global RNG's state does not matter
    assert a.path.read_bytes() == b.path.read_bytes()
