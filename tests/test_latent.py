"""Processes around a tiny frozen Sunfish AR base (LDLM, process/ldlm.py; Cola, process/cola.py; VFM, process/vfm.py):
reconstruction, the diffusion loss, a bit-identical frozen base, sampling and traces from the CLI, resume equal to an
uninterrupted run, evaluation and refusals."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from sunfish.cli import main

from conftest import TINY_DOCS, cli_error, run_metrics

BASE = ["--preset", "nano", "--objective", "ar", "--model.d_model=32", "--model.n_layers=1", "--model.n_heads=2",
        "--model.context=64", "--train.batch_size=4", "--train.seq_len=32", "--train.val_every=0", "--no-progress"]
# real compression, two tokens per latent (K = 4 for L = 8): the tiny corpus reads back near-exactly after 800 steps
# (8 s; 0.91 after 320). Four tokens per latent (K = 2) stayed at 0.35 after 800 steps with 4 heads, 0.84 after 1200
# with 8: the banded start gives each head one token of a latent's share, so a share wider than the heads learns slowly
LATENT = ["--preset", "nano", "--process", "ldlm", "--model.d_model=64", "--model.n_layers=1", "--model.n_heads=4",
          "--train.batch_size=8", "--train.seq_len=8", "--process.latents=4", "--process.latent_dim=32",
          "--process.perceiver_layers=0", "--optim.lr=5e-3", "--optim.warmup_steps=5",
          "--optim.grad_clip=0", "--optim.weight_decay=0", "--process.hidden_weight=0", "--process.decoder_noise=0",
          "--train.val_every=0", "--no-progress"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("latent")
    corpus = root / "corpus.txt"
    corpus.write_text("\n\n".join(TINY_DOCS), encoding="utf-8")
    base = root / "ar"
    assert main(["train", *BASE, "--data", str(corpus), "--out", str(base), "--steps", "20"]) == 0
    return {"root": root, "corpus": corpus, "base": base}


@pytest.fixture(scope="module")
def run(world):
    out = world["root"] / "ldlm"
    assert main(["train", *LATENT, "--process.base", str(world["base"]), "--data", str(world["corpus"]), "--out",
                 str(out), "--steps", "800", "--train.log_every=100", "--process.diffusion_warmup=100000"]) == 0
    return out


def test_round_trip_is_near_exact_and_the_diffusion_loss_falls(world, run):
    from sunfish.adapt.windows import adapt_corpus
    from sunfish.loading import load_model

    loaded = load_model(run)
    corpus = adapt_corpus(loaded.cfg, [str(world["corpus"])], loaded.tokenizer)
    windows = corpus.train.windows(8)
    assert windows.shape[1] == 2 * loaded.cfg.process.latents  # two tokens per latent: a real compression
    correct, total = loaded.spec.reconstruction(loaded.model, windows)
    assert correct / total >= 0.99, correct / total
    logged = run_metrics(run)
    assert all({"recon_ce", "hidden_mse", "diffusion_mse", "recon_acc"} <= set(m) for m in logged)
    assert logged[-1]["diffusion_mse"] < 0.7 * logged[0]["diffusion_mse"]
    assert logged[-1]["recon_ce"] < logged[0]["recon_ce"]


@pytest.mark.parametrize("kind, extra", [
    ("ldlm", {"latents": 4, "latent_dim": 8, "param": "v", "diffusion_warmup": 0, "prompt_prob": 0.5}),
    ("vfm", {"adapter_layers": 1, "prompt_prob": 0.5}),
])
def test_frozen_base_stays_bit_identical(world, kind, extra):
    from sunfish.adapt.latent import build_latent, latent_config
    from sunfish.checkpoint.files import read_config, resolve_checkpoint
    from sunfish.config import apply_tree
    from sunfish.registry import spec_of, training_loss
    from sunfish.training.optim import build_optimizer

    cfg = apply_tree(read_config(resolve_checkpoint(world["base"])), {
        "process": {"kind": kind, "base": str(world["base"]), **extra},
        "model": {"time_cond": "adaln" if kind == "ldlm" else "none", "attention": "bidirectional"},
        "train": {"seq_len": 8}})
    cfg = latent_config(cfg)
    torch.manual_seed(0)
    model = build_latent(cfg, "cpu").train()
    assert spec_of(cfg.process).frozen_base
    before = {k: v.clone() for k, v in model.base.state_dict().items()}
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    assert not any(p.requires_grad for p in model.base.parameters())
    assert not set(map(id, model.base.parameters())) & set(map(id, model.parameters()))  # not in the optimiser
    optimizer = build_optimizer(model, cfg.optim)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 40, (4, 8), generator=g)
    for _ in range(3):
        training_loss(model, x, cfg.process, -1, g).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert all(torch.equal(before[k], v) for k, v in model.base.state_dict().items())
    assert not model.base.training
    assert any(not torch.equal(trained[k], v) for k, v in model.state_dict().items())
    assert not any(k.startswith("base.") for k in model.state_dict())  # checkpoints hold the trained parts only
    base_params = sum(p.numel() for p in model.base.parameters())  # MFU counts the base's passes
    assert model.frozen_flops_per_token == (2 if kind == "ldlm" else 4) * base_params
    assert set(model.take_terms()) == ({"recon_ce", "hidden_mse", "diffusion_mse", "recon_acc"} if kind == "ldlm"
                                       else {"data_ce", "obs_ce", "kl"})


def test_sample_trace_and_eval_from_the_cli(world, run, capsys, tmp_path):
    capsys.readouterr()
    assert main(["sample", str(run), "--steps", "6", "--json"]) == 0  # the saved length fits the context
    body = json.loads(capsys.readouterr().out)
    assert body["nfe"] == 6 and isinstance(body["text"], str)
    export = tmp_path / "export"  # Sunfish's own layout: the trained parts, the base still named by its path
    assert main(["export", str(run), "--out", str(export)]) == 0
    capsys.readouterr()
    assert main(["sample", str(export), "--length", "7", "--steps", "6", "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert (again["text"], again["nfe"]) == (body["text"], body["nfe"])  # same seed, same text
    trace = tmp_path / "t.gif"
    assert main(["sample", str(run), "--length", "7", "--steps", "4", "--trace", str(trace)]) == 0
    assert trace.is_file() and trace.stat().st_size > 0
    capsys.readouterr()
    assert main(["eval", str(run), "--data", str(world["corpus"]), "--suite", "likelihood,generation", "--json",
                 "--ref-model", str(world["base"]), "--eval.sample_length=7", "--eval.sample_steps=4",
                 "--eval.samples=2", "--out", str(tmp_path / "eval")]) == 0
    suites = json.loads(capsys.readouterr().out)["suites"]
    lik = suites["likelihood"]
    assert lik["no_likelihood"].startswith("no likelihood bound exists for latent diffusion (LDLM) models")
    assert lik["reconstruction_accuracy"] > 0.9
    assert suites["generation"][0]["gen_perplexity"] > 1  # generative perplexity under the causal base


def test_trace_decodes_every_step(run):
    from sunfish.config import SamplerConfig
    from sunfish.loading import load_model
    from sunfish.registry import DecodeJob, decode

    loaded = load_model(run)
    tok, steps = loaded.tokenizer, []
    canvas = torch.full((1, 8), tok.mask_id)
    canvas[0, 0] = tok.bos_id
    job = DecodeJob(mask_id=tok.mask_id, process=loaded.cfg.process, generator=torch.Generator().manual_seed(0),
                    callback=steps.append)
    out = decode(loaded.model, canvas, 1, SamplerConfig(steps=5), job)
    assert [s.step for s in steps] == [1, 2, 3, 4, 5] and torch.equal(steps[-1].tokens, out.tokens)
    assert int(out.tokens[0, 0]) == tok.bos_id and not (out.tokens == tok.mask_id).any()


def test_a_prompted_ldlm_conditions_on_the_prompt_and_keeps_it(world):
    from sunfish.adapt.latent import build_latent, latent_config
    from sunfish.checkpoint.files import read_config, resolve_checkpoint
    from sunfish.config import SamplerConfig, apply_tree
    from sunfish.sample.ldlm import ldlm_generate

    cfg = latent_config(apply_tree(read_config(resolve_checkpoint(world["base"])), {
        "process": {"kind": "ldlm", "base": str(world["base"]), "latents": 4, "latent_dim": 8, "prompt_prob": 0.5,
                    "param": "v"}, "model": {"time_cond": "adaln", "attention": "bidirectional"}, "train": {"seq_len": 8}}))
    torch.manual_seed(0)
    model = build_latent(cfg, "cpu").eval()
    canvas = torch.full((1, 8), 49)
    canvas[0, :3] = torch.tensor([1, 7, 9])
    out = ldlm_generate(model, canvas, 3, 49, SamplerConfig(steps=3), cfg.process, generator=torch.Generator().manual_seed(0))
    assert out.tokens[0, :3].tolist() == [1, 7, 9] and not (out.tokens == 49).any()
    seen = []
    model.denoiser.prompt.register_forward_hook(lambda m, i, o: seen.append(i[0].shape))
    ldlm_generate(model, canvas, 3, 49, SamplerConfig(steps=2), cfg.process, generator=torch.Generator().manual_seed(0))
    assert seen == [(1, 3, model.base.width)] * 2  # the DiT reads the frozen LM's states of the 3 prompt tokens


def test_bf16_inference(world, run):
    """The frozen base's float states meet a bf16 network (what `auto` picks on CUDA): sampling and reconstruction."""
    from sunfish.api import load
    from sunfish.adapt.windows import adapt_corpus

    model = load(str(run), device="cpu", dtype="bf16")
    assert next(model.model.base.parameters()).dtype == torch.bfloat16
    assert isinstance(model.generate("", length=7, steps=3).text, str)
    windows = adapt_corpus(model.cfg, [str(world["corpus"])], model.tokenizer).train.windows(8)
    correct, total = model.spec.reconstruction(model.model, windows)
    assert correct / total > 0.9


def test_resume_equals_an_uninterrupted_run(world):
    common = [*LATENT, "--process.base", str(world["base"]), "--data", str(world["corpus"]), "--train.log_every=1",
              "--save-every", "3", "--process.diffusion_warmup=4"]
    whole, parts = world["root"] / "whole", world["root"] / "parts"
    assert main(["train", *common, "--out", str(whole), "--steps", "6"]) == 0
    shutil.copytree(whole, parts)  # the same run, stopped after the checkpoint of step 3
    shutil.rmtree(parts / "checkpoints" / "step-000006")
    assert main(["train", *common, "--out", str(parts), "--steps", "6", "--resume"]) == 0
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("tokens_per_s", "memory_gib")} for r in rows]
    assert strip(run_metrics(whole)) == strip(run_metrics(parts))
    from safetensors.torch import load_file

    a, b = (load_file(r / "checkpoints" / "step-000006" / "model.safetensors") for r in (whole, parts))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_refusals(world, run, capsys):
    err = cli_error(capsys, ["train", "--process", "ldlm", "--out", str(world["root"] / "nobase"), "--steps", "1",
                             "--no-progress"])
    assert "pass --process.base PATH" in err
    err = cli_error(capsys, ["train", "--process", "ldlm", "--process.base", str(run), "--out",
                             str(world["root"] / "notcausal"), "--steps", "1", "--no-progress"])
    assert "a latent model's base is a causal LM" in err
    err = cli_error(capsys, ["train", "--process", "vfm", "--process.base", str(world["base"]), "--train.compile=true",
                             "--out", str(world["root"] / "compiled"), "--steps", "1", "--no-progress"])
    assert "does not compile its network yet" in err
    err = cli_error(capsys, ["infill", str(run), "--text", "the [MASK:2] sat"])
    assert "generates only after a prompt; infilling needs a model that fills masks anywhere (masked diffusion" in err
    err = cli_error(capsys, ["export", str(run), "--out", str(world["root"] / "hf_export"), "--format", "hf"])
    assert "is a network around a frozen base; export it with --format sunfish" in err
    err = cli_error(capsys, ["sample", str(run), "--temperature", "0.5"])
    assert "sampler.temperature does nothing for latent diffusion (LDLM) models" in err
    err = cli_error(capsys, ["sample", str(run), "--prompt", "the", "--length", "3"])
    assert "trained without prompts" in err
    err = cli_error(capsys, ["train", "--process", "masked", "--process.latents=4", "--out",
                             str(world["root"] / "masked"), "--steps", "1", "--no-progress"])
    assert "process.latents does nothing for masked diffusion models" in err


def test_a_hugging_face_base_trains_and_samples(world, capsys):
    pytest.importorskip("transformers")
    from test_adapt_helpers import make_hf_model

    base = make_hf_model(world["root"] / "gpt2", "gpt2")
    out = world["root"] / "hf_ldlm"
    assert main(["train", "--preset", "nano", "--process", "ldlm", "--process.base", str(base), "--data",
                 str(world["corpus"]), "--out", str(out), "--steps", "3", "--train.seq_len=8", "--process.latents=4",
                 "--process.latent_dim=8", "--model.d_model=32", "--model.n_layers=1", "--model.n_heads=2",
                 "--train.batch_size=4", "--train.val_every=0", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["sample", str(out), "--length", "7", "--steps", "3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["nfe"] == 3


def test_vfm_trains_resumes_samples_and_traces(world, capsys, tmp_path):
    common = ["--preset", "nano", "--process", "vfm", "--process.base", str(world["base"]), "--data",
              str(world["corpus"]), "--model.d_model=32", "--model.n_layers=1", "--model.n_heads=2",
              "--process.adapter_layers=1", "--train.batch_size=8", "--train.seq_len=16", "--optim.lr=3e-3",
              "--train.log_every=1", "--save-every", "4", "--train.val_every=0", "--no-progress"]
    whole, parts = world["root"] / "vfm_whole", world["root"] / "vfm_parts"
    assert main(["train", *common, "--out", str(whole), "--steps", "8"]) == 0
    shutil.copytree(whole, parts)
    shutil.rmtree(parts / "checkpoints" / "step-000008")
    assert main(["train", *common, "--out", str(parts), "--steps", "8", "--resume"]) == 0
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("tokens_per_s", "memory_gib")} for r in rows]
    logged = run_metrics(whole)
    assert strip(logged) == strip(run_metrics(parts))
    assert all({"data_ce", "obs_ce", "kl"} <= set(m) for m in logged)
    assert logged[-1]["loss"] < logged[0]["loss"]
    capsys.readouterr()
    trace = tmp_path / "vfm.gif"
    assert main(["sample", str(whole), "--prompt", "the cat", "--length", "6", "--json", "--trace", str(trace)]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["text"].startswith("the cat") and body["nfe"] == 1 and trace.is_file()
    err = cli_error(capsys, ["sample", str(whole), "--steps", "4"])
    assert "sampler.steps does nothing for noise-adapter flow map (VFM) models" in err


def test_cola_trains_a_vae_with_free_bits_and_samples(world, capsys):
    from sunfish.loading import load_model

    out = world["root"] / "cola"
    assert main(["train", "--preset", "nano", "--process", "cola", "--process.base", str(world["base"]), "--data",
                 str(world["corpus"]), "--out", str(out), "--steps", "40", "--model.d_model=64", "--model.n_layers=1",
                 "--model.n_heads=2", "--train.batch_size=8", "--train.seq_len=8", "--process.latents=8",
                 "--process.latent_dim=16", "--process.perceiver_layers=0", "--optim.lr=5e-3", "--train.log_every=10",
                 "--train.val_every=0", "--process.free_bits=0.5", "--no-progress"]) == 0
    logged = run_metrics(out)
    assert all("kl" in m for m in logged) and logged[-1]["recon_ce"] < 0.5 * logged[0]["recon_ce"]
    capsys.readouterr()
    assert main(["sample", str(out), "--length", "7", "--steps", "3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["nfe"] == 3
    model = load_model(out).model  # free bits: a posterior equal to the prior still costs free_bits per dimension
    with torch.no_grad():
        model.encoder.out.weight.zero_()
        model.log_var.weight.zero_()
        model.log_var.bias.zero_()
    _, kl = model.latents(torch.randn(2, 8, model.base.width), None)
    assert kl.item() == pytest.approx(16 * 0.5)


def test_warm_up_and_adaptive_timesteps(world):
    from sunfish.adapt.latent import build_latent, latent_config
    from sunfish.checkpoint.files import read_config, resolve_checkpoint
    from sunfish.config import apply_tree
    from sunfish.process.ldlm import T_BINS, diffusion_term, draw_times, warmup_weight

    cfg = latent_config(apply_tree(read_config(resolve_checkpoint(world["base"])), {
        "process": {"kind": "ldlm", "base": str(world["base"]), "latents": 4, "latent_dim": 8, "param": "v",
                    "diffusion_warmup": 10}, "model": {"time_cond": "adaln", "attention": "bidirectional"},
        "train": {"seq_len": 8}}))
    torch.manual_seed(0)
    model = build_latent(cfg, "cpu").train()
    h = model.states(torch.randint(0, 40, (4, 8))).float()
    for seen, share in ((0, 0.0), (5, 0.5), (20, 1.0)):
        model.seen.fill_(seen)
        assert warmup_weight(model, cfg.process) == share
    model.seen.fill_(0)  # no diffusion gradient reaches the encoder at the start of the warm-up
    diffusion_term(model, model.encoder(h), h, cfg.process, torch.Generator().manual_seed(0)).mean().backward()
    assert all(p.grad is None or not p.grad.any() for p in model.encoder.parameters())
    assert any(p.grad is not None and p.grad.any() for p in model.denoiser.parameters())
    model.t_loss.fill_(1.0)
    model.t_loss[5] = 10.0  # a hard time bin is drawn in proportion to its running loss
    t = draw_times(model, 4000, cfg.process, torch.Generator().manual_seed(0))
    share = ((t * T_BINS).long() == 5).float().mean().item()
    assert share == pytest.approx(0.8 * 10 / 29 + 0.2 / T_BINS, abs=0.03)


def test_the_server_runs_a_latent_model_and_refuses_what_it_cannot_do(run):
    """`sunfish serve` of an LDLM model: a completion from noise equals Model.generate's; a prompt the model was not
    trained to continue is a 400 with the one-sentence reason, and the server keeps answering."""
    pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install -e .[serve])")
    from fastapi.testclient import TestClient

    import sunfish
    import sunfish.serve

    model = sunfish.load(str(run), device="cpu")
    with TestClient(sunfish.serve.build_app(model)) as client:
        info = client.get("/v1/sunfish").json()
        assert info["process"] == "latent diffusion (LDLM)" and "steps" in info["fields"]
        assert "temperature" not in info["fields"]
        assert info["fields"]["solver"]["choices"] == ["auto", "ddim", "ddpm"]  # not the flow solvers it refuses
        body = {"prompt": "", "max_tokens": 7, "seed": 3, "sunfish": {"steps": 4}}
        answer = client.post("/v1/completions", json=body).json()
        assert answer["choices"][0]["text"] == model.generate("", length=7, steps=4, seed=3).text
        assert answer["sunfish"]["choices"][0]["nfe"] == 4  # the DiT's passes, counted though they bypass the merger
        refused = client.post("/v1/completions", json={**body, "prompt": "th", "max_tokens": 5})
        assert refused.status_code == 400 and "trained without prompts" in refused.json()["error"]["message"]
        again = client.post("/v1/completions", json=body).json()
        assert again["choices"] == answer["choices"]  # still serving, the same text for the same seed
