"""Held-out likelihood: the NELBO of a uniform model is log |V|, the Monte Carlo error shrinks, the causal
estimate is the exact chain-rule NLL, and windows score every token once."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from sunfish.config import AttentionKind, EvalConfig, ModelConfig, ProcessConfig
from sunfish import registry
from sunfish.config import ProcessKind
from sunfish.eval.likelihood import (HeldOut, UnsupportedProcess, estimator_for, evaluate_likelihood, held_out,
                                     monte_carlo)
from sunfish.tokenizer import train_tokenizer

from conftest import make_model

V = 32


def uniform_model(**kw):
    model = make_model(ModelConfig(vocab_size=V, d_model=32, n_layers=1, n_heads=2, context=64, **kw))
    torch.nn.init.zeros_(model.lm_head.weight)  # logits 0 everywhere: p = 1 / V
    return model


def random_data(n=32, length=64, seed=0) -> HeldOut:
    x = torch.randint(4, V, (n, length), generator=torch.Generator().manual_seed(seed))
    return HeldOut(windows=[x], tokens=n * (length - 1), bytes=n * (length - 1), documents=n)


@pytest.mark.parametrize("process", [ProcessConfig(mask_schedule="linear"), ProcessConfig(mask_schedule="cosine"),
                                     ProcessConfig(discrete_steps=20), ProcessConfig(block_size=16)],
                         ids=["linear", "cosine", "discrete", "block16"])
def test_uniform_model_nelbo_is_log_vocab(process):
    cfg = EvalConfig(rel_se=0.003, min_rounds=4, max_rounds=8)
    result = evaluate_likelihood(uniform_model(), process, 3, random_data(), cfg)
    assert not result.exact and result.rounds >= 4
    assert abs(result.nats_per_token - math.log(V)) < 4 * result.se + 0.01
    assert result.se < 0.15


def test_uniform_causal_model_is_exactly_log_vocab():
    model = uniform_model(attention=AttentionKind.CAUSAL)
    result = evaluate_likelihood(model, ProcessConfig(kind="ar"), 3, random_data(), EvalConfig())
    assert result.exact and result.rounds == 1 and result.se == 0
    assert result.nats_per_token == pytest.approx(math.log(V), abs=1e-5)


def test_standard_error_shrinks_with_samples():
    model = make_model(ModelConfig(vocab_size=V, d_model=32, n_layers=1, n_heads=2, context=64))
    data = random_data(n=4, length=32)
    few = evaluate_likelihood(model, ProcessConfig(), 3, data, EvalConfig(rel_se=1e-6, min_rounds=3, max_rounds=3))
    many = evaluate_likelihood(model, ProcessConfig(), 3, data, EvalConfig(rel_se=1e-6, min_rounds=30, max_rounds=30))
    assert few.rounds == 3 and many.rounds == 30 and not many.converged
    assert many.se < few.se


def test_monte_carlo_stops_at_the_relative_error():
    values = iter([1.0, 1.001, 0.999, 1.0, 1.0005] + [5.0] * 100)
    mc = monte_carlo(lambda: next(values), EvalConfig(rel_se=0.01, min_rounds=4, max_rounds=50))
    assert mc.converged and mc.rounds == 4 and mc.mean == pytest.approx(1.0, abs=1e-3)


DOCS = ["the cat sat on the mat.", "a dog ran in the park and the cat ran too.", "Маша нашла мяч."]


def test_causal_perplexity_matches_hand_computation():
    tok = train_tokenizer("char", DOCS)
    model = make_model(ModelConfig(vocab_size=tok.vocab_size, d_model=32, n_layers=2, n_heads=2, context=16,
                                   attention=AttentionKind.CAUSAL), seed=3)
    data = held_out(DOCS, tok, seq_len=16)
    result = evaluate_likelihood(model, ProcessConfig(kind="ar"), tok.mask_id, data, EvalConfig())
    stream = [i for d in DOCS for i in [tok.bos_id, *tok.encode(d), tok.eos_id]]
    total = 0.0
    with torch.no_grad():
        for i in range(1, len(stream)):
            start = ((i - 1) // 15) * 15  # the window that scores token i begins at a multiple of L - 1
            context = torch.tensor([stream[start:i]])
            logp = F.log_softmax(model(context)[0, -1].double(), -1)
            total -= float(logp[stream[i]])
    n = len(stream) - 1
    assert result.tokens == n and result.bytes == sum(len(d.encode()) for d in DOCS)
    assert result.nats_per_token == pytest.approx(total / n, rel=1e-5)
    assert result.perplexity == pytest.approx(math.exp(total / n), rel=1e-5)
    assert result.bits_per_byte == pytest.approx(total / (math.log(2) * result.bytes), rel=1e-5)


def test_windows_score_every_token_but_the_first_once():
    tok = train_tokenizer("char", DOCS)
    data = held_out(DOCS, tok, seq_len=10)
    stream = [i for d in DOCS for i in [tok.bos_id, *tok.encode(d), tok.eos_id]]
    scored = [int(t) for group in data.windows for row in group for t in row[1:]]
    assert scored == stream[1:] and data.tokens == len(stream) - 1
    assert held_out(DOCS, tok, seq_len=10, max_tokens=30).documents == 1


def test_a_process_without_an_estimator_gets_one_sentence_and_the_registry_decides(monkeypatch):
    process = ProcessConfig(kind="flow")
    with pytest.raises(UnsupportedProcess, match="no estimator for simplex flow models"):
        estimator_for(process)
    causal = registry.AR.likelihood
    monkeypatch.setitem(registry._BY_KIND, ProcessKind.FLOW, dataclasses.replace(registry.FLOW, likelihood=causal))
    assert estimator_for(process) is causal


def test_empty_held_out_text_is_an_error():
    tok = train_tokenizer("char", DOCS)
    with pytest.raises(ValueError, match="held-out text is empty"):
        held_out([], tok, seq_len=16)
