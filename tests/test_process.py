import math

import pytest
import torch

from sunfish.config import LossKind, ProcessConfig, MaskScheduleKind
from sunfish.process.masked import corrupt, masked_diffusion_loss, sample_times
from sunfish.process.schedules import MaskSchedule

from conftest import make_model


@pytest.mark.parametrize("kind", list(MaskScheduleKind))
def test_schedule_monotone_with_end_points(kind):
    s = MaskSchedule(kind, eps=1e-3)
    t = torch.linspace(0, 1, 1001, dtype=torch.float64)
    a = s.alpha(t)
    assert float(a[0]) == pytest.approx(1.0)
    assert float(a[-1]) == pytest.approx(1e-3 if kind is MaskScheduleKind.LOGLINEAR else 0.0, abs=1e-9)
    assert torch.all(a[1:] <= a[:-1])
    assert torch.all(s.alpha_prime(t[1:-1]) < 0)
    # derivative matches a finite difference, and the inverse inverts
    mid = t[100:900]
    fd = (s.alpha(mid + 1e-6) - s.alpha(mid - 1e-6)) / 2e-6
    assert torch.allclose(fd, s.alpha_prime(mid), atol=1e-5)
    assert torch.allclose(s.time_of_alpha(s.alpha(mid)), mid, atol=1e-6)


def test_linear_weight_is_one_over_t():
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    assert torch.allclose(MaskSchedule(MaskScheduleKind.LINEAR).weight(t), 1 / t)


@pytest.mark.parametrize("kind", [MaskScheduleKind.LINEAR, MaskScheduleKind.COSINE, MaskScheduleKind.COSINE_SQ])
def test_corruption_rate_matches_schedule(kind):
    s = MaskSchedule(kind)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(4, 30, (64, 4096), generator=g)
    t = torch.linspace(0.05, 0.95, 64)
    zt, masked = corrupt(x0, t, s, mask_id=3, generator=g)
    rate = masked.float().mean(1)
    expected = 1 - s.alpha(t)
    sd = torch.sqrt(expected * (1 - expected) / 4096)
    assert torch.all((rate - expected).abs() < 5 * sd + 1e-3)
    assert torch.equal(zt[masked], torch.full_like(zt[masked], 3))
    assert torch.equal(zt[~masked], x0[~masked])


def test_antithetic_times_cover_the_interval():
    cfg = ProcessConfig(antithetic=True)
    t = sample_times(8, cfg, torch.Generator().manual_seed(1)).sort().values
    gaps = t[1:] - t[:-1]
    assert torch.allclose(gaps, torch.full_like(gaps, (1 - cfg.eps) / 8), atol=1e-6)
    assert t.min() >= cfg.eps and t.max() <= 1


def test_discrete_times_on_grid():
    cfg = ProcessConfig(discrete_steps=100, antithetic=False)
    t = sample_times(1000, cfg, torch.Generator().manual_seed(2))
    assert torch.allclose(t * 100, torch.round(t * 100)) and t.min() >= 0.01


@pytest.mark.parametrize("loss", list(LossKind))
def test_loss_on_repeated_batch_falls(loss):
    """One sequence repeated across the batch can be memorised: the loss must fall far below its start."""
    from sunfish.config import ModelConfig

    model = make_model(ModelConfig(vocab_size=32, d_model=64, n_layers=2, n_heads=4, context=64)).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(4, 32, (1, 32), generator=torch.Generator().manual_seed(5)).repeat(16, 1)
    cfg = ProcessConfig(loss=loss)

    def fixed() -> float:
        with torch.no_grad():
            return float(masked_diffusion_loss(model, x0, cfg, 3, torch.Generator().manual_seed(9)).loss)

    first = fixed()
    for _ in range(200):
        out = masked_diffusion_loss(model, x0, cfg, 3, g)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    assert fixed() < 0.2 * first


def test_nelbo_of_uniform_model_is_log_vocab(tiny_model_cfg):
    """A model with zero logits predicts uniformly: E[w(t) * masked fraction] = 1, so NELBO = log V."""
    model = make_model(tiny_model_cfg)
    torch.nn.init.zeros_(model.lm_head.weight)
    x0 = torch.randint(4, 32, (256, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        loss = masked_diffusion_loss(model, x0, ProcessConfig(), 3, torch.Generator().manual_seed(1)).loss
    assert float(loss) == pytest.approx(math.log(32), rel=0.03)
