"""Sunfish against the upstream code on tiny random LLaDA and Dream checkpoints that the upstream code built
(tests/public_models.py): logits, greedy decoding token for token (LLaDA's generate, Fast-dLLM's three
samplers, Dream's diffusion_generate), saturated confidences, the threshold's equality case and LLaDA's
Monte Carlo likelihood. docs/upstream_samplers.md maps each upstream sampler to the settings used here."""

from __future__ import annotations

import math

import pytest
import torch

from public_models import (DREAM_CASES, FAST_CASES, LIKELIHOOD, LLADA_CASES, MASK, PROMPT, SATURATED_CASES, greedy,
                           logit_ids)
from sunfish.config import CacheMode, CommitRule, Policy
from sunfish.loading import load_model
from sunfish.process.masked import masked_nats

CACHE = {"generate": CacheMode.NONE, "generate_with_prefix_cache": CacheMode.PREFIX,
         "generate_with_dual_cache": CacheMode.DUAL}
DREAM_POLICY = {"entropy": Policy.ENTROPY, "maskgit_plus": Policy.CONFIDENCE, "topk_margin": Policy.MARGIN}


@pytest.fixture(scope="module")
def models(upstream):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is fastest, and other runs may share the cores
    yield {name: load_model(upstream.root / name) for name in ("llada", "dream", "saturated")}
    torch.set_num_threads(threads)


def fast_settings(fn: str, threshold: float | None, gen: int, block: int, steps: int) -> dict:
    """The Sunfish settings that reproduce one Fast-dLLM call (besides the length)."""
    rule = {"rule": CommitRule.FIXED} if threshold is None else {"rule": CommitRule.THRESHOLD, "threshold": threshold}
    return {"steps": steps, "block_length": block, "cache": CACHE[fn], "fp64_confidence": True, **rule}


def test_logits_equal_the_reference(upstream, models):
    ids = logit_ids()
    for name in ("llada", "dream"):
        net = models[name].model
        with torch.no_grad():
            ours = net.head(net.hidden(ids, None)).float()  # (2, 20, 300)
        ref = upstream.ref["logits"][name]
        if name == "dream":  # Dream's sampler reads the output at i - 1 for token i
            ref = torch.cat([ref[:, :1], ref[:, :-1]], 1)
        assert (ours - ref).abs().max() <= 1e-5, name


@pytest.mark.parametrize("i", range(len(LLADA_CASES)), ids=[f"gen{g}-block{b}-steps{s}" for g, b, s in LLADA_CASES])
def test_lladas_generate(upstream, models, i):
    gen, block, steps = LLADA_CASES[i]
    out = greedy(models["llada"], gen, steps=steps, block_length=block, rule=CommitRule.FIXED,
                 policy=Policy.CONFIDENCE, fp64_confidence=False, cache=CacheMode.NONE)
    assert out.tokens.tolist() == upstream.ref["llada"][i].tolist()


@pytest.mark.parametrize("i", range(len(FAST_CASES)), ids=["-".join(map(str, c)) for c in FAST_CASES])
def test_fast_dllm(upstream, models, i):
    case = FAST_CASES[i]
    out = greedy(models["llada"], case[2], **fast_settings(*case))
    assert out.tokens.tolist() == upstream.ref["fast"][i].tolist()


@pytest.mark.parametrize("i", range(len(DREAM_CASES)), ids=["-".join(map(str, c)) for c in DREAM_CASES])
def test_dreams_diffusion_generate(upstream, models, i):
    alg, gen, steps, top_k, eps = DREAM_CASES[i]
    out = greedy(models["dream"], gen, eps=eps, steps=steps, block_length=0, rule=CommitRule.ANCESTRAL_TOPK,
                 policy=DREAM_POLICY[alg], fp64_confidence=False, top_k=50 if top_k == "default" else 0)
    assert out.tokens.tolist() == upstream.ref["dream"][i].tolist()


def test_dreams_family_defaults_are_its_diffusion_generate(upstream, models):
    """Sunfish's sampler defaults for a Dream folder, with only the length and steps set, decode as Dream's
    diffusion_generate(alg="entropy", temperature=0) does when given nothing else."""
    alg, gen, steps, top_k, eps = case = DREAM_CASES[0]
    assert (alg, top_k, eps) == ("entropy", "default", 1e-3), case
    defaults = models["dream"].cfg.sampler
    settings = {f: getattr(defaults, f) for f in ("rule", "policy", "block_length", "top_k", "fp64_confidence")}
    out = greedy(models["dream"], gen, steps=steps, **settings)
    assert out.tokens.tolist() == upstream.ref["dream"][0].tolist()


# ---- saturated confidences and the threshold's equality case ------------------------------------------------

@pytest.mark.parametrize("i", range(len(SATURATED_CASES)), ids=["-".join(map(str, c)) for c in SATURATED_CASES])
def test_fast_dllm_on_saturated_confidences(upstream, models, i):
    case = SATURATED_CASES[i]
    out = greedy(models["saturated"], case[2], **fast_settings(*case))
    assert out.tokens.tolist() == upstream.ref["saturated"][i].tolist()


def _confidences(net, canvas: torch.Tensor, lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 and float64 confidences of the greedy token at the masked positions of canvas[:, lo:hi]."""
    with torch.no_grad():
        logits = net.head(net.hidden(canvas, None)).float()[0, lo:hi]  # (hi - lo, V)
    masked = canvas[0, lo:hi] == MASK
    return logits.softmax(-1).max(-1).values[masked], logits.double().softmax(-1).max(-1).values[masked]


def test_float32_confidences_tie_at_one_where_float64_do_not(upstream, models):
    """The saturated model's head is LLaDA's x 1300: some logit gaps fall between ~17 and ~36 nats, where a float32
    softmax rounds the top probability to exactly 1.0 and a float64 one does not. So fp64_confidence matters there:
    with a bar of 1.0, float32 commits every tied position at once and leaves Fast-dLLM's path."""
    case = SATURATED_CASES[0]
    assert case[:2] == ("generate", 1.0)
    gen, block = case[2], case[3]
    canvases = [torch.tensor([PROMPT + [MASK] * gen])]
    greedy(models["saturated"], gen, callback=lambda info: canvases.append(info.tokens.clone()), **fast_settings(*case))
    tied = 0
    for canvas in canvases[:-1]:
        lo = next(lo for lo in range(len(PROMPT), len(PROMPT) + gen, block) if (canvas[0, lo : lo + block] == MASK).any())
        c32, c64 = _confidences(models["saturated"].model, canvas, lo, lo + block)
        if (c32 == 1.0).sum() >= 2 and (c64 < 1.0).all():
            tied += 1
    assert tied >= 2
    float32 = greedy(models["saturated"], gen, **(fast_settings(*case) | {"fp64_confidence": False}))
    assert float32.tokens.tolist() != upstream.ref["saturated"][0].tolist()


def test_a_confidence_equal_to_the_threshold_commits(upstream, models):
    """The bar is the second-best float64 confidence of the first step (computed upstream): Fast-dLLM keeps it, and so
    does Sunfish; one ulp higher, only the best position commits."""
    bar = upstream.ref["bar"]
    for threshold, first_step in ((bar, 2), (math.nextafter(bar, 1.0), 1)):
        commits = []
        out = greedy(models["llada"], 16, callback=lambda info: commits.append(int(info.revealed.sum())),
                     **fast_settings("generate", threshold, 16, 8, 8))
        assert commits[0] == first_step, threshold
        if threshold == bar:
            assert out.tokens.tolist() == upstream.ref["bar_out"].tolist()


# ---- likelihood ---------------------------------------------------------------------------------------------

def test_likelihood_agrees_with_lladas_estimator(upstream, models):
    """Both estimate the same NELBO of the answer given the prompt: LLaDA masks k ~ U{1..n} of the n answer tokens
    and weights by n / k; Sunfish masks each with probability t ~ U[eps, 1] and weights by 1 / t, sum over k of
    C(n, k) t^k (1 - t)^(n - k) / t dt = 1 / k making the two equal. Sunfish's draws vary far more (the weight 1 / t
    near t = eps), so it takes 16384 draws to LLaDA's 512; each side's batch means (fixed seeds) give its standard
    error, and the two means agree within 4 combined standard errors."""
    batch, batches = 256, 64
    answer = LIKELIHOOD["answer"]
    loaded = models["llada"]
    x = torch.tensor([PROMPT + answer]).expand(batch, -1)
    scored = (torch.arange(x.shape[1]) >= len(PROMPT)).expand(batch, -1)
    g = torch.Generator().manual_seed(0)
    ours = []
    with torch.no_grad():
        for _ in range(batches):
            u = (torch.rand(1, generator=g) + torch.arange(batch) / batch) % 1.0  # stratified within the batch
            ours.append(float(masked_nats(loaded.model, x, loaded.cfg.process, MASK, u, g, scored).mean()))
    theirs = [-v for v in upstream.ref["likelihood"]]  # get_log_likelihood returns -NELBO
    ours_t, theirs_t = torch.tensor(ours, dtype=torch.float64), torch.tensor(theirs, dtype=torch.float64)
    se = math.sqrt(ours_t.var() / len(ours) + theirs_t.var() / len(theirs))
    assert se < 0.01 * theirs_t.mean()  # precise enough to catch a wrong weight or a missed token
    assert abs(ours_t.mean() - theirs_t.mean()) < 4 * se, (ours_t.mean(), theirs_t.mean(), se)
