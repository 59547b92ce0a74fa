import dataclasses

import pytest
import torch

from sunfish.config import AttentionKind, MLPKind, TimeCond, load_preset, preset_names
from sunfish.model.size import preset_size
from sunfish.model.transformer import build_model, count_parameters

from conftest import make_model


def test_every_preset_loads_and_sizes():
    names = preset_names()
    assert {"nano", "micro", "tiny", "small", "medium", "dllm-ru-300m", "sunfish-1.4b"} <= set(names)
    for name in names:
        size = preset_size(name)
        assert size.parameters > 0 and size.name == name


def test_micro_has_micro_dllm_parameter_count():
    cfg = dataclasses.replace(load_preset("micro").model, vocab_size=66)
    assert count_parameters(build_model(cfg, "meta")) == 10_706_304


def test_large_presets_match_stated_sizes():
    assert 290e6 < preset_size("dllm-ru-300m").parameters < 320e6
    assert 1.35e9 < preset_size("sunfish-1.4b").parameters < 1.5e9


@pytest.mark.parametrize("time_cond", list(TimeCond))
@pytest.mark.parametrize("mlp", list(MLPKind))
def test_forward_shapes_and_time_use(tiny_model_cfg, time_cond, mlp):
    cfg = dataclasses.replace(tiny_model_cfg, time_cond=time_cond, mlp=mlp, qk_norm=True)
    model = make_model(cfg)
    if time_cond is TimeCond.ADALN:  # adaLN-Zero starts as the identity; perturb it to see t act
        for p in model.parameters():
            if p.abs().sum() == 0:
                torch.nn.init.normal_(p, std=0.02)
    x = torch.randint(0, 32, (3, 20))
    t = torch.tensor([0.1, 0.5, 0.9])
    logits = model(x, t)
    assert logits.shape == (3, 20, 32)
    if time_cond is not TimeCond.NONE:
        assert not torch.allclose(model(x, t), model(x, t.flip(0)))
        with pytest.raises(ValueError, match="time-conditioned"):
            model(x)


def test_bidirectional_sees_the_future_and_causal_does_not(tiny_model_cfg):
    x = torch.randint(0, 32, (1, 16))
    y = x.clone()
    y[0, 10] = (x[0, 10] + 1) % 32
    bi = make_model(tiny_model_cfg)
    causal = make_model(dataclasses.replace(tiny_model_cfg, attention=AttentionKind.CAUSAL))
    assert not torch.allclose(bi(x)[0, 5], bi(y)[0, 5])
    assert torch.allclose(causal(x)[0, :10], causal(y)[0, :10], atol=1e-6)
    assert not torch.allclose(causal(x)[0, 10], causal(y)[0, 10])


def test_tied_embeddings_share_weights(tiny_model_cfg):
    model = make_model(dataclasses.replace(tiny_model_cfg, tie_embeddings=True))
    assert model.lm_head.weight is model.embed.weight
    untied = make_model(tiny_model_cfg)
    assert count_parameters(untied) - count_parameters(model) == 32 * 32


def test_too_long_input_is_refused(tiny_model_cfg):
    with pytest.raises(ValueError, match="longer than the model's context"):
        make_model(tiny_model_cfg)(torch.zeros(1, 65, dtype=torch.long))
