"""Speculative decoding (sample/speculate.py): greedy outputs equal the exact one-commit-per-step sampler's, token
for token; sampling keeps its law (chi-square, fixed seeds); a draft that always agrees is always accepted; the
distilled draft (training/draft.py) learns; and what cannot be verified is refused."""

from __future__ import annotations

import collections
import json
from types import SimpleNamespace

import pytest
import torch

from sunfish.config import (CacheMode, ConfigError, MaskScheduleKind, ModelConfig, ProcessConfig, RunConfig,
                            SamplerConfig, TimeCond)
from sunfish.registry import AR, MASKED, DecodeJob, build_network, decode
from sunfish.sample.step_law import step_law
from sunfish.sample.unmask import _Predictor
from sunfish.process.schedules import MaskSchedule

MASK, SUPPRESS, V = 31, (28, 29, 30), 32


def tiny(seed: int, *, block: int = 0, causal: bool = False, scale: float = 30.0, width: int = 32) -> torch.nn.Module:
    """An untrained tiny network with sharpened weights (peaked, distinct predictions)."""
    cfg = ModelConfig(vocab_size=V, d_model=width, n_layers=2, n_heads=2, context=64,
                      time_cond=TimeCond.NONE, attention="causal" if causal else "bidirectional")
    torch.manual_seed(seed)
    model = build_network(cfg, ProcessConfig(block_size=block)).eval()
    for p in model.parameters():
        p.data *= scale
    return model


def as_draft(model, causal: bool = False):
    """What `open_draft` returns, for a network built here."""
    return SimpleNamespace(model=model, spec=AR if causal else MASKED, cfg=RunConfig())


def canvas(seed: int, prompt: int, length: int, rows: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.cat([torch.randint(0, 28, (1, prompt), generator=g), torch.full((1, length), MASK)], 1).repeat(rows, 1)


def run(model, x, fill_start: int, block: int = 0, draft=None, seed: int = 0, **settings):
    job = DecodeJob(mask_id=MASK, process=ProcessConfig(block_size=block), suppress=SUPPRESS, draft=draft,
                    generator=torch.Generator().manual_seed(seed))
    return decode(model, x, fill_start, SamplerConfig(**settings), job)


@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
def test_self_speculative_greedy_equals_the_exact_sampler(cache):
    model = tiny(0)
    for seed, (prompt, length) in enumerate([(3, 12), (6, 9), (1, 14)]):
        x = canvas(seed, prompt, length)
        for block_length, policy in [(0, "confidence"), (4, "margin"), (5, "entropy"), (3, "confidence")]:
            base = dict(length=length, block_length=block_length, cache=cache, policy=policy)
            exact = run(model, x, prompt, steps=length, **base)
            for k in (2, 4, 7):
                fast = run(model, x, prompt, speculate="self", draft_len=k, **base)
                assert torch.equal(fast.tokens, exact.tokens), (seed, block_length, policy, k)
                assert fast.accepted <= fast.proposed and fast.nfe <= exact.nfe
    one = run(model, x, 1, speculate="self", draft_len=1, length=14)
    assert one.nfe == 14 and one.proposed == 0  # draft_len 1 is the exact sampler itself


def test_block_diffusion_greedy_equals_the_exact_sampler_with_its_exact_cache():
    for block in (2, 4, 5):
        model = tiny(1, block=block)
        for seed, (prompt, length) in enumerate([(3, 10), (5, 8)]):
            x = canvas(seed, prompt, length)
            exact = run(model, x, prompt, block=block, steps=length, length=length)
            for k in (2, 3, 6):
                fast = run(model, x, prompt, block=block, speculate="self", draft_len=k, length=length)
                assert torch.equal(fast.tokens, exact.tokens), (block, seed, k)


@pytest.mark.parametrize("causal", [False, True])
def test_draft_model_greedy_equals_the_exact_sampler(causal):
    draft = as_draft(tiny(7, causal=causal, width=16), causal)
    for block in (0, 4):
        model = tiny(2, block=block)
        for seed, (prompt, length) in enumerate([(3, 10), (6, 8)]):
            x = canvas(seed, prompt, length)
            for block_length, cache in [(0, "none"), (4, "dual")] if not block else [(0, "none")]:
                base = dict(length=length, **({"block_length": block_length, "cache": cache} if not block else {}))
                exact = run(model, x, prompt, block=block, steps=length, **base)
                fast = run(model, x, prompt, block=block, draft=draft, speculate="draft", draft_len=3, **base)
                assert torch.equal(fast.tokens, exact.tokens), (causal, block, seed)
                assert fast.draft_nfe == fast.proposed > 0


def test_a_draft_that_always_agrees_is_always_accepted_once_per_verification():
    model = tiny(3)
    x = canvas(0, 4, 12)
    for temperature in (0.0, 1.0):
        out = run(model, x, 4, draft=as_draft(model), speculate="draft", draft_len=4, length=12, temperature=temperature)
        assert out.accepted == out.proposed == 9  # three rounds of 1 + 3 drafted commits
        assert out.nfe == 1 + out.steps == 4 and out.draft_nfe == 9  # one verification pass per draft


def _chi_square(a: collections.Counter, b: collections.Counter) -> float:
    """p-value of the two-sample chi-square test that a and b count draws from one law."""
    keys = sorted(set(a) | set(b))
    x = torch.tensor([[a[k], b[k]] for k in keys], dtype=torch.float64)  # (categories, 2)
    expected = x.sum(1, keepdim=True) * x.sum(0, keepdim=True) / x.sum()
    stat = ((x - expected) ** 2 / expected).sum()
    return float(torch.special.gammaincc(torch.tensor((len(keys) - 1) / 2, dtype=torch.float64), stat / 2))


def test_step_law_is_the_law_of_the_samplers_step():
    """pi(i, v) of step_law against 6000 draws of one step of the exact sampler (goodness of fit)."""
    model = tiny(4, scale=8.0)
    x = canvas(1, 3, 4)
    with torch.no_grad():
        logits = _Predictor(model, MASK, MaskSchedule(MaskScheduleKind.LINEAR, 1e-3), CacheMode.NONE, False, None,
                            [MASK, *SUPPRESS])(x, 3, 7)  # (1, 4, V)
    for policy in ("confidence", "margin", "random"):
        cfg = SamplerConfig(length=4, steps=4, temperature=1.0, top_k=4, policy=policy)
        law = step_law(logits, torch.ones(1, 4, dtype=torch.bool), cfg)[0]  # (4, V)
        first = run_first_step(model, x, policy)
        pos, tok = torch.tensor(first).T  # (2, n)
        counts = torch.zeros_like(law).index_put_((pos, tok), torch.ones(len(first), dtype=law.dtype), accumulate=True)
        seen = law > 0
        assert counts[~seen].sum() == 0
        expected = law[seen] * len(first)
        stat = ((counts[seen] - expected) ** 2 / expected).sum()
        p = torch.special.gammaincc(torch.tensor((int(seen.sum()) - 1) / 2, dtype=torch.float64), stat / 2)
        assert float(p) > 1e-3, (policy, float(p))


def run_first_step(model, x, policy: str, n: int = 6000) -> list[tuple[int, int]]:
    """(position in the block, token) of the first commit of n independent runs of the exact sampler."""
    first: list[tuple[int, int]] = []

    class Done(Exception):
        pass

    def record(info) -> None:  # the first step's commits, then stop: the later steps are not needed
        cols = info.revealed.long().argmax(1)  # (n,)
        first.extend(zip((cols - 3).tolist(), info.tokens.gather(1, cols[:, None])[:, 0].tolist()))
        raise Done

    job = DecodeJob(mask_id=MASK, process=ProcessConfig(), suppress=SUPPRESS, callback=record,
                    generator=torch.Generator().manual_seed(11))
    with pytest.raises(Done):
        decode(model, x.repeat(n, 1), 3, SamplerConfig(length=4, steps=4, temperature=1.0, top_k=4, policy=policy), job)
    return first


@pytest.mark.parametrize("speculate,policy", [("self", "confidence"), ("draft", "confidence"), ("self", "random")])
def test_sampling_keeps_the_exact_samplers_law(speculate, policy):
    """The filled canvases of 400 speculative runs and 2000 exact ones: one law (two-sample chi-square)."""
    model = tiny(5, scale=8.0)
    draft = as_draft(tiny(8, scale=8.0, width=16)) if speculate == "draft" else None
    x = canvas(2, 4, 3)
    settings = dict(length=3, temperature=1.0, top_k=3, policy=policy)
    exact = run(model, x.repeat(2000, 1), 4, seed=1, steps=3, **settings).tokens[:, 4:]
    fast = run(model, x.repeat(400, 1), 4, seed=2, draft=draft, speculate=speculate, draft_len=3, **settings)
    assert fast.proposed > 0 and fast.accepted < fast.proposed  # the residual path ran
    counts = [collections.Counter(map(tuple, tokens.tolist())) for tokens in (exact, fast.tokens[:, 4:])]
    p = _chi_square(*counts)
    assert p > 1e-3, p


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny masked target, a draft distilled from it by `sunfish draft` and an all-but-untrained one."""
    import sunfish
    from sunfish.cli import main

    root = tmp_path_factory.mktemp("speculate")
    quiet = dict(progress=False, log=lambda s: None)
    tiny_run = {"model": {"d_model": 32, "n_layers": 2, "n_heads": 2, "context": 64}, "data": {"synth_docs": 60}}
    sunfish.train("nano", out=root / "target", steps=40, batch_size=16, overrides=tiny_run, **quiet)
    assert main(["draft", str(root / "target"), "--out", str(root / "draft"), "--steps", "60", "--train.batch_size",
                 "16", "--data.val_fraction", "0.05", "--no-progress"]) == 0
    sunfish.train_draft(root / "target", out=root / "untrained", steps=1, batch_size=16, **quiet)
    return root


def test_the_distilled_draft_learns_and_is_accepted_more_often(runs):
    import sunfish

    losses = [json.loads(line)["loss"] for line in (runs / "draft" / "metrics.jsonl").read_text().splitlines()
              if "loss" in json.loads(line)]
    assert losses[-1] < 0.5 * losses[0]
    model = sunfish.load(runs / "target", device="cpu")
    rates = {}
    for name in ("draft", "untrained"):
        accepted = proposed = 0
        greedy = model.generate("The cat", max_new_tokens=16, speculate="draft", draft=str(runs / name), draft_len=4)
        assert greedy.text == model.generate("The cat", max_new_tokens=16, steps=16).text
        for seed, prompt in enumerate(("Once upon a time", "The cat", "One day")):  # acceptance sum min(p, q) at T = 1
            out = model.generate(prompt, max_new_tokens=24, speculate="draft", draft=str(runs / name), draft_len=4,
                                 temperature=1.0, seed=seed)
            accepted, proposed = accepted + out.speculation["accepted"], proposed + out.speculation["proposed"]
            assert out.speculation["draft_nfe"] == out.speculation["proposed"]
        rates[name] = accepted / proposed
    assert rates["draft"] > rates["untrained"], rates


def test_cli_and_api_speculate_and_refuse_what_they_cannot_verify(runs, capsys):
    import sunfish
    from sunfish.cli import main

    run = str(runs / "target")
    capsys.readouterr()
    assert main(["sample", run, "--prompt", "One day", "--length", "16", "--sampler.speculate", "self",
                 "--sampler.draft_len", "4", "--json"]) == 0
    fast = json.loads(capsys.readouterr().out)
    assert main(["sample", run, "--prompt", "One day", "--length", "16", "--steps", "16", "--json"]) == 0
    exact = json.loads(capsys.readouterr().out)
    assert fast["text"] == exact["text"] and fast["nfe"] < exact["nfe"] and fast["proposed"] > 0
    model = sunfish.load(run, device="cpu")
    refused = {
        "the fixed rule": dict(speculate="self", rule="threshold"),
        "info_gain": dict(speculate="self", policy="info_gain"),
        "--sampler.remask": dict(speculate="self", remask="cap"),
        "guidance": dict(speculate="self", guidance=1.0),
        "needs --sampler.draft PATH": dict(speculate="draft"),
        "sampler.draft does nothing with sampler.speculate = self": dict(speculate="self", draft=run),
        "sampler.draft_len does nothing with sampler.speculate = none": dict(draft_len=3),
        "sampler.steps does nothing under speculative": dict(speculate="self", steps=8),
        "draft_len": dict(speculate="self", draft_len=0),
    }
    for why, settings in refused.items():
        with pytest.raises(ConfigError, match=why):
            model.generate("One day", **settings)
    with pytest.raises(ValueError, match="drift"):
        model.generate("One day", max_new_tokens=8, speculate="self", cache="prefix", drift=True)
    other = runs / "other"
    sunfish.train("nano", out=other, steps=1, batch_size=4, progress=False, log=lambda s: None,
                  overrides={"model": {"d_model": 32, "n_layers": 1, "n_heads": 2, "context": 64},
                             "data": {"synth_docs": 20, "synth_lang": "ru"}})
    with pytest.raises(ValueError, match="another tokenizer"):
        model.generate("One day", max_new_tokens=8, speculate="draft", draft=str(other))
    assert main(["sample", run, "--length", "8", "--sampler.speculate", "draft", "--sampler.draft", str(other)]) == 2
    assert "a draft must share its vocabulary" in capsys.readouterr().err


def test_bench_rows_for_self_and_draft_speculation(runs, tmp_path, capsys):
    from sunfish.cli import main

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Once upon a time\nThe cat\n", encoding="utf-8")
    capsys.readouterr()
    assert main(["bench", "sample", str(runs / "target"), "--draft", str(runs / "draft"), "--draft-len", "3",
                 "--lengths", "12", "--batch", "1", "--repeats", "1", "--prompts", str(prompts),
                 "--block-length", "4"]) == 0
    rows = {r[2]: r for r in ([c.strip() for c in line.strip("|").split("|")] for line in
                              capsys.readouterr().out.splitlines() if line.startswith("| 12 "))}
    for name in ("self-speculative K=3", "draft-speculative K=3"):
        assert rows[name][7] == "1.000" and 0.0 <= float(rows[name][11]) <= 1.0  # the baseline's output exactly
        assert float(rows[name][4]) <= float(rows["baseline: LLaDA 1 token/step"][4])  # never more target passes
    assert float(rows["self-speculative K=3"][4]) < 1.0 and rows["self-speculative K=3"][12] == "-"
    assert float(rows["draft-speculative K=3"][12]) > 0  # draft forward passes per token


def test_batches_of_mixed_prompts_and_infilling_equal_the_exact_sampler(runs):
    import sunfish

    model = sunfish.load(runs / "target", device="cpu")
    prompts = ["Once upon a time", "The cat", "One"]
    fast = model.generate(prompts, max_new_tokens=12, speculate="self", draft_len=4, batch_size=3)
    assert [g.text for g in fast] == [model.generate(p, max_new_tokens=12, steps=12, seed=i).text
                                      for i, p in enumerate(prompts)]
    text = "Once upon a [MASK:6] there was a [MASK:3] cat."
    filled = model.infill(text, speculate="self", draft_len=3, block_length=4)
    assert filled.text == model.infill(text, steps=9, block_length=4).text and filled.speculation["proposed"] > 0
