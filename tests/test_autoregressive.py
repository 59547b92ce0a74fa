"""The autoregressive baseline: exact NLL, cached decoding equal to uncached, CLI round trip."""

import dataclasses
import json
import math

import torch

from sunfish.config import AttentionKind, ProcessConfig, ProcessKind, SamplerConfig
from sunfish.registry import build_network, training_loss
from sunfish.sample.ar import ar_generate

from conftest import make_model


def causal(cfg):
    return make_model(dataclasses.replace(cfg, attention=AttentionKind.CAUSAL))


def test_next_token_loss_matches_hand_computation(tiny_model_cfg):
    model = causal(tiny_model_cfg)
    x = torch.randint(4, 32, (2, 9), generator=torch.Generator().manual_seed(0))
    out = training_loss(model, x, ProcessConfig(kind=ProcessKind.AR), 3, torch.Generator())
    total = 0.0
    for b in range(2):
        for i in range(1, 9):
            with torch.no_grad():
                logp = model(x[b : b + 1, :i])[0, -1].log_softmax(-1)  # sees x_<i only
            total -= float(logp[x[b, i]])
    assert math.isclose(float(out.loss.detach()), total / 16, rel_tol=1e-5)


def test_cached_greedy_decoding_equals_uncached(tiny_model_cfg):
    model = causal(tiny_model_cfg)
    prompt = torch.randint(4, 32, (2, 5), generator=torch.Generator().manual_seed(1))
    res = ar_generate(model, prompt, 12, SamplerConfig(), generator=torch.Generator(), mask_id=3)
    x = prompt
    for _ in range(12):
        x = torch.cat([x, model(x)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(res.tokens, x) and res.nfe == 12 and res.steps == 12


class FirstThenEos(torch.nn.Module):
    """Predicts token 9 right after the prompt, then EOS (2), whatever the input."""

    def __init__(self, prompt_len: int):
        super().__init__()
        self.cfg = type("Cfg", (), {"context": 64})()
        self.prompt_len = prompt_len

    def hidden(self, tokens, t=None, kv_cache=None):
        start = kv_cache.span[0] if kv_cache is not None and kv_cache.span is not None else 0
        pos = torch.arange(start, start + tokens.shape[1]).float()
        return pos[None, :, None].expand(tokens.shape[0], -1, 1)

    def head(self, h):
        logits = torch.zeros(*h.shape[:-1], 32)
        first = h[..., 0] == self.prompt_len - 1  # the position whose output is the first new token
        logits[..., 9] = first.float() * 5
        logits[..., 2] = (~first).float() * 5
        return logits


def test_eos_stops_ar_decoding():
    prompt = torch.randint(4, 32, (2, 4), generator=torch.Generator().manual_seed(2))
    res = ar_generate(FirstThenEos(4), prompt, 10, SamplerConfig(), generator=torch.Generator(), mask_id=3, eos_id=2)
    assert res.tokens[:, 4].tolist() == [9, 9] and (res.tokens[:, 5:] == 2).all()
    assert res.steps == 2 and res.nfe == 2  # stopped once every row had its EOS


def test_objective_ar_trains_and_samples(tmp_path, capsys):
    from sunfish.cli import main
    from test_cli import TINY
    from test_train import DOCS

    corpus = tmp_path / "c.txt"
    corpus.write_text("\n\n".join(DOCS), encoding="utf-8")
    out = tmp_path / "ar"
    assert main(["train", "--preset", "nano", "--objective", "ar", "--data", str(corpus), "--out", str(out), "--steps", "3", *TINY]) == 0
    capsys.readouterr()
    assert main(["sample", str(out), "--prompt", "the", "--length", "10", "--json", "--no-stop-at-eos"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["text"].startswith("the") and body["nfe"] == 10
