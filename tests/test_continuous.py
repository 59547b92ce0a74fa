"""Embedding diffusion: forward statistics, DDIM/DDPM exactness with an oracle, rounding, learned warp, training, CLI."""

import json

import pytest
import torch

from sunfish.cli import main
from sunfish.config import ModelConfig, NoiseSchedule, ProcessConfig, Rounding, SamplerConfig, Solver
from sunfish.model.transformer import build_model
from sunfish.registry import build_network, training_loss
from sunfish.process.continuous import GaussianSchedule, embedding_table, forward_sample, nelbo_per_token
from sunfish.process.time_warp import MonotoneWarp, warp_noise
from sunfish.sample.continuous import continuous_generate, ddim_sample, round_to_tokens, time_grid
from sunfish.training.loop import after_steps


MODEL = ModelConfig(vocab_size=24, d_model=32, n_layers=1, n_heads=2, context=32, time_cond="sinusoidal")
PROCESS = ProcessConfig(kind="continuous")


def model_for(process: ProcessConfig = PROCESS, seed: int = 0):
    torch.manual_seed(seed)
    return build_network(MODEL, process, "cpu")


@pytest.mark.parametrize("kind", list(NoiseSchedule))
def test_forward_process_matches_schedule(kind):
    schedule = GaussianSchedule(kind)
    ts = torch.tensor([0.1, 0.5, 0.9])
    a = schedule.alpha_bar(ts)
    assert torch.all(a[:-1] > a[1:]) and float(schedule.alpha_bar(torch.tensor(1.0))) < 0.01
    x0 = torch.linspace(-1.5, 1.5, 8).expand(20000, 1, 8)  # (N, 1, D)
    g = torch.Generator().manual_seed(0)
    for t, abar in zip(ts, a):
        x_t, _ = forward_sample(x0, t.expand(20000), schedule, g)
        assert torch.allclose(x_t.mean(0), abar.sqrt() * x0[0], atol=0.03)
        assert torch.allclose(x_t.var(0), (1 - abar).expand(1, 8), rtol=0.05)


def test_schedule_formulas():
    t = torch.tensor([0.3])
    assert torch.allclose(GaussianSchedule("sqrt").alpha_bar(t), 1 - torch.sqrt(t + 1e-4))
    assert torch.allclose(GaussianSchedule("linear").alpha_bar(t), torch.exp(-(0.1 * t + 0.5 * 19.9 * t * t)))
    assert float(GaussianSchedule("cosine").alpha_bar(torch.tensor(0.0))) == pytest.approx(1.0)
    lam = GaussianSchedule("cosine").log_snr(t)
    assert torch.allclose(GaussianSchedule("cosine").time_of_log_snr(lam), t, atol=1e-5)


def oracle_run(eta: float, kind=NoiseSchedule.COSINE):
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(2, 6, 8, generator=g)
    known = torch.zeros(2, 6, dtype=torch.bool)
    oracle = lambda x, t, sc: x0  # a model that returns the true x0
    return x0, ddim_sample(oracle, x0, known, time_grid(5), GaussianSchedule(kind), eta, torch.Generator().manual_seed(2))


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_oracle_ddim_and_ddpm_recover_the_input(eta):
    x0, (x_end, x0_hat) = oracle_run(eta)
    assert torch.allclose(x_end, x0, atol=1e-5) and torch.equal(x0_hat, x0)


def test_ddim_eta0_is_deterministic_given_the_start_noise():
    _, (a, _) = oracle_run(0.0)
    g = torch.Generator().manual_seed(2)
    start = torch.randn(2, 6, 8, generator=g)  # the only draw DDIM with eta = 0 makes
    x0 = torch.randn(2, 6, 8, generator=torch.Generator().manual_seed(1))
    seen = []
    ddim_sample(lambda x, t, sc: seen.append(x.clone()) or x0, x0, torch.zeros(2, 6, dtype=torch.bool), time_grid(5),
                GaussianSchedule("cosine"), 0.0, torch.Generator().manual_seed(2))
    assert torch.equal(seen[0], start)
    model = model_for()
    canvas = torch.full((1, 12), MODEL.vocab_size - 1)
    runs = [continuous_generate(model, canvas, MODEL.vocab_size - 1, SamplerConfig(steps=4), PROCESS,
                                generator=torch.Generator().manual_seed(5)).tokens for _ in range(2)]
    assert torch.equal(runs[0], runs[1])


@pytest.mark.parametrize("how", [Rounding.COSINE, Rounding.EUCLIDEAN])
def test_rounding_inverts_the_embedding(how):
    model = model_for()
    tokens = torch.randint(0, MODEL.vocab_size, (3, 10), generator=torch.Generator().manual_seed(0))
    table = embedding_table(model, PROCESS)
    assert torch.equal(round_to_tokens(table[tokens], table, how), tokens)


def test_learned_warp_stays_monotone_and_inverts():
    torch.manual_seed(0)
    warp = MonotoneWarp()
    with torch.no_grad():
        for p in warp.parameters():
            p.add_(0.3 * torch.randn_like(p))  # an arbitrary trained state
    n = torch.linspace(0, 1, 501)
    f = warp.cdf(n).detach()
    assert torch.all(f[1:] > f[:-1]) and float(f[0]) == pytest.approx(0.0, abs=1e-6) and float(f[-1]) == pytest.approx(1.0)
    u = torch.rand(64)
    assert torch.allclose(warp.cdf(warp.inverse(u)), u, atol=1e-5)
    assert torch.equal(warp_noise(warp, u, after=1), u)  # not yet active: the fixed schedule
    warp.seen += 1
    assert torch.allclose(warp_noise(warp, u, after=1), warp.inverse(u))


def fit(process: ProcessConfig, steps: int = 20):
    """Adam steps on one fixed batch; returns (loss before, loss after, model) on fixed noise."""
    model = model_for(process)
    x = torch.randint(0, MODEL.vocab_size, (8, 16), generator=torch.Generator().manual_seed(3))
    measure = lambda: float(training_loss(model.eval(), x, process, 0, torch.Generator().manual_seed(9)).loss.detach())
    before = measure()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(4)
    model.train()
    for _ in range(steps):
        training_loss(model, x, process, 0, g).loss.backward()
        opt.step()
        opt.zero_grad()
        after_steps(model)  # the warp counts the step's batch (the training loop does this)
    return before, measure(), model, x


@pytest.mark.parametrize("param", ["x0", "eps", "v", "softmax"])
def test_short_run_lowers_the_loss(param):
    process = ProcessConfig(kind="continuous", param=param, self_cond=param == "v")
    before, after, _, _ = fit(process)
    assert after < 0.8 * before


def test_time_warp_trains_after_warmup_and_nelbo_falls():
    process = ProcessConfig(kind="continuous", time_warp=True, time_warp_after=10)
    untrained = model_for(process)
    x = torch.randint(0, MODEL.vocab_size, (8, 16), generator=torch.Generator().manual_seed(3))
    nelbo_before = nelbo_per_token(untrained, x, process, torch.Generator().manual_seed(0)).mean()
    warp_start = [p.clone() for p in untrained.process_io.warp.parameters()]
    _, _, model, x = fit(process, steps=20)
    warp = model.process_io.warp
    assert int(warp.seen) == 20 and warp.active(process.time_warp_after)
    assert any(not torch.equal(a, b) for a, b in zip(warp_start, warp.parameters()))
    f = warp.cdf(torch.linspace(0, 1, 201)).detach()
    assert torch.all(f[1:] > f[:-1])
    nelbo_after = nelbo_per_token(model, x, process, torch.Generator().manual_seed(0))
    assert nelbo_after.shape == (8,) and torch.all(torch.isfinite(nelbo_after))
    assert float(nelbo_after.mean()) < float(nelbo_before)


@pytest.mark.parametrize("solver", [Solver.DDIM, Solver.DDPM])
def test_prompt_positions_are_kept(solver):
    model = model_for(ProcessConfig(kind="continuous", self_cond=True))
    mask = MODEL.vocab_size - 1
    canvas = torch.tensor([[1, 2, 3, mask, mask, 4, mask, 5]])
    out = continuous_generate(model, canvas, mask, SamplerConfig(steps=3, solver=solver, clamp=True),
                              ProcessConfig(kind="continuous", self_cond=True), generator=torch.Generator().manual_seed(0))
    known = canvas != mask
    assert torch.equal(out.tokens[known], canvas[known]) and out.nfe == 3
    with pytest.raises(ValueError, match="flow models"):
        continuous_generate(model, canvas, mask, SamplerConfig(solver="heun"), PROCESS, generator=torch.Generator())


def test_cli_train_sample_infill(tmp_path, capsys, corpus):
    out = tmp_path / "run"
    tiny = ["--model.d_model=32", "--model.n_layers=1", "--model.n_heads=2", "--model.context=48",
            "--train.batch_size=4", "--train.val_every=3", "--data.val_fraction=0.2", "--no-progress",
            "--process.time_warp=true", "--process.time_warp_after=2"]
    assert main(["train", "--process", "continuous", "--data", str(corpus), "--out", str(out), "--steps", "4", *tiny]) == 0
    config = json.loads(next((out / "checkpoints").glob("step-*/config.json")).read_text())
    assert config["process"]["kind"] == "continuous" and config["model"]["time_cond"] == "sinusoidal"
    capsys.readouterr()
    assert main(["sample", str(out), "--prompt", "the cat", "--length", "10", "--steps", "3", "--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["text"].startswith("the cat") and body["nfe"] == 3
    assert main(["infill", str(out), "--text", "the [MASK:4] sat", "--steps", "2", "--solver", "ddpm"]) == 0
    assert capsys.readouterr().out.startswith("the ")
    assert main(["sample", str(out), "--length", "8", "--solver", "euler"]) == 2
    assert "flow models" in capsys.readouterr().err


def test_trace_records_rounded_tokens_each_step():
    from sunfish.sample.trace import TraceRecorder

    model = model_for()
    mask = MODEL.vocab_size - 1
    canvas = torch.tensor([[1, 2, mask, mask, mask, mask]])
    recorder = TraceRecorder(lambda i: f"<{i}>", start=1)
    recorder.start(canvas, canvas == mask)
    out = continuous_generate(model, canvas, mask, SamplerConfig(steps=4), PROCESS, generator=torch.Generator().manual_seed(0),
                              callback=recorder)
    assert [f.step for f in recorder.frames] == [0, 1, 2, 3, 4]
    assert "░" not in recorder.frames[1].pieces  # every position shows its current rounded token
    assert recorder.frames[-1].pieces == tuple(f"<{i}>" for i in out.tokens[0, 1:].tolist())
