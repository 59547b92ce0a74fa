"""Simplex flow matching: noise on the simplex, exact Euler/Heun with an oracle, training, prompts, learned warp, CLI."""

import json
import shutil

import pytest
import torch
import torch.nn.functional as F

from sunfish.cli import main
from sunfish.config import FlowNoise, ModelConfig, ProcessConfig, SamplerConfig, Solver
from sunfish.model.transformer import build_model
from sunfish.registry import build_network, training_loss
from sunfish.process.flow import denoising_ce_per_token, simplex_noise
from sunfish.sample.flow import flow_generate, integrate


MODEL = ModelConfig(vocab_size=24, d_model=32, n_layers=1, n_heads=2, context=32, time_cond="sinusoidal")


def model_for(process: ProcessConfig, seed: int = 0):
    torch.manual_seed(seed)
    return build_network(MODEL, process, "cpu")


@pytest.mark.parametrize("kind", list(FlowNoise))
def test_noise_lies_on_the_simplex(kind):
    x = simplex_noise((4000, 5), kind, torch.Generator().manual_seed(0))
    assert torch.all(x >= 0) and torch.allclose(x.sum(-1), torch.ones(4000))
    assert torch.allclose(x.mean(0), torch.full((5,), 0.2), atol=0.01)  # exchangeable coordinates
    if kind is FlowNoise.DIRICHLET:  # Dirichlet(1,...,1): Var x_i = (K - 1) / (K^2 (K + 1)) = 4 / 150
        assert torch.allclose(x.var(0), torch.full((5,), 4 / 150), rtol=0.1)


@pytest.mark.parametrize("heun", [False, True])
def test_oracle_euler_and_heun_recover_the_input(heun):
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 7, (2, 9), generator=g)
    x1 = F.one_hot(tokens, 7).float()
    x0 = simplex_noise(x1.shape, FlowNoise.DIRICHLET, g)
    known = torch.zeros(2, 9, dtype=torch.bool)
    times = torch.linspace(0, 1, 6)
    ce_oracle = lambda x, t: (x1 - x) / (1 - t).clamp_min(1e-6).view(-1, 1, 1)  # p(x1) = the true one-hot
    end, nfe = integrate(ce_oracle, x0, known, x1, times, heun=heun)
    assert torch.allclose(end, x1, atol=1e-5) and torch.equal(end.argmax(-1), tokens)
    assert nfe == (9 if heun else 5)
    velocity_oracle = lambda x, t: x1 - x0  # the true straight-path velocity
    end, _ = integrate(velocity_oracle, x0, known, x1, times, heun=heun)
    assert torch.allclose(end, x1, atol=1e-5)


@pytest.mark.parametrize("loss", ["ce", "velocity"])
def test_short_run_lowers_the_loss(loss):
    process = ProcessConfig(kind="flow", flow_loss=loss, flow_noise="softmax_gaussian" if loss == "velocity" else "dirichlet")
    model = model_for(process)
    x = torch.randint(0, MODEL.vocab_size, (8, 16), generator=torch.Generator().manual_seed(3))
    measure = lambda: float(training_loss(model.eval(), x, process, 0, torch.Generator().manual_seed(9)).loss.detach())
    before = measure()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(4)
    model.train()
    for _ in range(20):
        training_loss(model, x, process, 0, g).loss.backward()
        opt.step()
        opt.zero_grad()
    assert measure() < 0.8 * before
    ce = denoising_ce_per_token(model, x, process, torch.Generator().manual_seed(0))
    assert ce.shape == (8,) and torch.all(torch.isfinite(ce)) and torch.all(ce > 0)


@pytest.mark.parametrize("solver", [Solver.EULER, Solver.HEUN])
def test_prompt_positions_are_kept(solver):
    process = ProcessConfig(kind="flow", time_warp=True)
    model = model_for(process)
    mask = MODEL.vocab_size - 1
    canvas = torch.tensor([[1, 2, 3, mask, mask, 4, mask, 5]])
    out = flow_generate(model, canvas, mask, SamplerConfig(steps=3, solver=solver), process,
                        generator=torch.Generator().manual_seed(0))
    known = canvas != mask
    assert torch.equal(out.tokens[known], canvas[known]) and not torch.any(out.tokens[~known] == -1)
    assert out.nfe == (5 if solver is Solver.HEUN else 3)
    with pytest.raises(ValueError, match="continuous models"):
        flow_generate(model, canvas, mask, SamplerConfig(solver="ddim"), process, generator=torch.Generator())


def test_cli_train_resume_sample(tmp_path, capsys, corpus):
    out = tmp_path / "run"
    tiny = ["--model.d_model=32", "--model.n_layers=1", "--model.n_heads=2", "--model.context=48",
            "--train.batch_size=4", "--train.val_every=0", "--data.val_fraction=0.2", "--no-progress",
            "--process.time_warp=true", "--process.time_warp_after=2", "--save-every", "2"]
    assert main(["train", "--process", "flow", "--data", str(corpus), "--out", str(out), "--steps", "2", *tiny]) == 0
    assert main(["train", "--process", "flow", "--data", str(corpus), "--out", str(out), "--steps", "4", "--resume", *tiny]) == 0
    from sunfish.loading import load_model

    loaded = load_model(out, torch.device("cpu"))
    assert loaded.cfg.process.kind.value == "flow" and int(loaded.model.process_io.warp.seen) == 4
    capsys.readouterr()
    assert main(["sample", str(out), "--prompt", "the cat", "--length", "10", "--steps", "3", "--solver", "heun", "--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["text"].startswith("the cat") and body["nfe"] == 5
    assert main(["infill", str(out), "--text", "the [MASK:4] sat", "--steps", "2"]) == 0
    assert capsys.readouterr().out.startswith("the ")


def test_resume_from_before_the_warp_starts_equals_an_uninterrupted_run(tmp_path, corpus):
    """A checkpoint written before `time_warp_after` holds no optimiser state for the warp (it had no gradient yet);
    resuming from it gives the warp none either, so the run equals one that was never interrupted."""
    from sunfish.loading import load_model

    from conftest import run_metrics

    tiny = ["--process", "flow", "--data", corpus, "--model.d_model=32", "--model.n_layers=1", "--model.n_heads=2",
            "--model.context=48", "--train.batch_size=4", "--train.val_every=0", "--train.log_every=1",
            "--data.val_fraction=0.2", "--no-progress", "--process.time_warp=true", "--process.time_warp_after=3",
            "--save-every", "2"]
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    assert main(["train", *tiny, "--out", str(whole), "--steps", "6"]) == 0
    shutil.copytree(whole, resumed)  # the same run, stopped after the checkpoint of step 2
    for step in (4, 6):
        shutil.rmtree(resumed / "checkpoints" / f"step-{step:06d}")
    assert main(["train", *tiny, "--out", str(resumed), "--steps", "6", "--resume"]) == 0
    drop = ("tokens_per_s", "mfu", "memory_gib", "seconds")
    strip = lambda rows: [{k: v for k, v in r.items() if k not in drop} for r in rows]
    assert strip(run_metrics(resumed)) == strip(run_metrics(whole))
    a, b = (load_model(r, torch.device("cpu")).model.state_dict() for r in (whole, resumed))
    assert int(a["process_io.warp.seen"]) == 6 and all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["process_io.warp.raw_slope"], torch.zeros(1))  # the warp trained after step 3
