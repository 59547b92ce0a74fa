"""Per-step statistics under DDP (torchrun, gloo, 2 ranks on CPU): latent processes and the learned time warp give
the same losses, loss terms and weights as one process with the same global batch (2 micro-batches). LDLM's adaptive
timestep histogram and warm-up counter (process/ldlm.py: LatentLM.after_step) and the warp's batch counter
(process/time_warp.py) move once per optimiser step from every rank's batches."""

import pytest
import torch

from sunfish.cli import main
from sunfish.loading import load_model

from conftest import TINY_DOCS, run_metrics
from test_parallel import assert_same_metrics, torchrun

BASE = ["--preset", "nano", "--objective", "ar", "--model.d_model=32", "--model.n_layers=1", "--model.n_heads=2",
        "--model.context=32", "--train.batch_size=4", "--train.seq_len=16", "--train.val_every=0", "--no-progress"]
COMMON = ["--model.d_model=32", "--model.n_layers=1", "--model.n_heads=2", "--train.seq_len=8", "--train.batch_size=2",
          "--train.log_every=1", "--train.val_every=0", "--optim.warmup_steps=2", "--no-progress", "--steps", "8"]
KINDS = {
    "ldlm": ["--process.latents=4", "--process.latent_dim=8", "--process.prompt_prob=0.5", "--process.diffusion_warmup=6"],
    "cola": ["--process.latents=4", "--process.latent_dim=8", "--process.diffusion_warmup=6"],
    "vfm": ["--process.adapter_layers=1", "--process.prompt_prob=0.5"],
    "flow": ["--process.time_warp=true", "--process.time_warp_after=6", "--model.context=16"],  # warp from step 4 on
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("latent_ddp")
    corpus = tmp / "corpus.txt"
    corpus.write_text("\n\n".join(TINY_DOCS), encoding="utf-8")
    assert main(["train", *BASE, "--data", str(corpus), "--out", str(tmp / "ar"), "--steps", "5"]) == 0
    jobs = []
    for kind, extra in KINDS.items():
        base = [] if kind == "flow" else ["--process.base", str(tmp / "ar")]
        argv = ["train", "--preset", "nano", "--process", kind, *base, "--data", str(corpus), *COMMON, *extra]
        assert main([*argv, "--out", str(tmp / f"{kind}-single"), "--train.grad_accum=2"]) == 0
        jobs.append([*argv, "--out", str(tmp / f"{kind}-ddp"), "--train.parallel=ddp"])
    torchrun(tmp, jobs)
    return tmp


@pytest.mark.parametrize("kind", list(KINDS))
def test_ddp_matches_one_process_with_the_same_global_batch(runs, kind):
    single, ddp = run_metrics(runs / f"{kind}-single"), run_metrics(runs / f"{kind}-ddp")
    terms = {"ldlm": "diffusion_mse", "cola": "kl", "vfm": "data_ce", "flow": "loss"}[kind]
    assert all(terms in m for m in single)  # the loss terms are logged, and compared below
    assert_same_metrics(ddp, single, rel=1e-4)
    a = load_model(runs / f"{kind}-single", torch.device("cpu")).model.state_dict()
    b = load_model(runs / f"{kind}-ddp", torch.device("cpu")).model.state_dict()
    assert set(a) == set(b) and all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6) for k in a)
    if kind in ("ldlm", "cola"):  # the warm-up counter and the adaptive histogram agree
        assert int(a["seen"]) == int(b["seen"]) == 16 and not torch.equal(a["t_loss"], torch.ones_like(a["t_loss"]))
    if kind == "flow":  # the warp counted every rank's batches and trained from the same step
        assert int(a["process_io.warp.seen"]) == int(b["process_io.warp.seen"]) == 16
