"""DDP and FSDP2 under torchrun on CPU (gloo): the same losses as one process with the same global batch
(with activation checkpointing and an EMA of the weights, whose validation losses are logged), and
checkpoints that move between FSDP and a single process in both directions."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

from sunfish.config import apply_tree, load_preset
from sunfish.checkpoint.files import list_checkpoints, verify_checkpoint
from sunfish.loading import load_model
from sunfish.training.loop import train

from conftest import TINY_DOCS, run_metrics as metrics

DOCS = TINY_DOCS
STEPS = 20
TINY = ["--model.d_model=32", "--model.n_layers=2", "--model.n_heads=2", "--model.context=32",
        "--train.batch_size=2", "--train.log_every=1", "--train.val_every=5", "--train.val_batches=3",
        "--optim.warmup_steps=2", "--data.val_fraction=0.2", "--train.ema=0.9"]

# One torchrun launch runs several `sunfish train` command lines in turn (the process group is made once).
WORKER = textwrap.dedent("""
    import json, sys
    import torch.distributed as dist
    from sunfish.cli import main
    dist.init_process_group("gloo")
    for argv in json.loads(open(sys.argv[1]).read()):
        code = main(argv)
        assert code == 0, (argv, code)
    dist.destroy_process_group()
""")


def tiny_cfg(**train):
    tree = {"model": {"d_model": 32, "n_layers": 2, "n_heads": 2, "context": 32},
            "train": {"steps": STEPS, "batch_size": 2, "log_every": 1, "val_every": 5, "val_batches": 3, "ema": 0.9, **train},
            "optim": {"warmup_steps": 2}, "data": {"val_fraction": 0.2}}
    return apply_tree(load_preset("nano"), tree)


def assert_same_metrics(a, b, rel=1e-5):
    assert [l["step"] for l in a] == [l["step"] for l in b]
    for x, y in zip(a, b):
        assert set(x) == set(y)
        for key in x:
            assert x[key] == pytest.approx(y[key], rel=rel, abs=1e-7), (x["step"], key)


def torchrun(tmp_path, jobs):
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    (tmp_path / "worker.py").write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(tmp_path / "worker.py"), str(tmp_path / "jobs.json")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One single-process reference and, in one torchrun launch, DDP, FSDP and single -> FSDP resume runs."""
    tmp = tmp_path_factory.mktemp("parallel")
    corpus = tmp / "corpus.txt"
    corpus.write_text("\n\n".join(DOCS), encoding="utf-8")
    # The reference: one process, 2 micro-batches of 2 = the global batch of 2 ranks x 2.
    train(tiny_cfg(grad_accum=2, save_every=10), run_dir=tmp / "single", data=[str(corpus)], progress=False, log=lambda s: None)
    shutil.copytree(tmp / "single", tmp / "single_to_fsdp")
    shutil.rmtree(tmp / "single_to_fsdp" / "checkpoints" / f"step-{STEPS:06d}")
    common = ["train", "--preset", "nano", "--data", str(corpus), "--steps", str(STEPS), "--no-progress", *TINY]
    jobs = [
        [*common, "--out", str(tmp / "ddp"), "--train.parallel=ddp", "--train.act_ckpt=1"],
        [*common, "--out", str(tmp / "fsdp"), "--train.parallel=fsdp", "--train.act_ckpt=2", "--save-every", "10"],
        [*common, "--out", str(tmp / "single_to_fsdp"), "--train.parallel=fsdp", "--train.grad_accum=1", "--resume"],
    ]
    torchrun(tmp, jobs)
    return tmp, corpus


def test_ddp_and_fsdp_match_one_process_with_the_same_global_batch(runs):
    tmp, _ = runs
    reference = metrics(tmp / "single")
    assert len([l for l in reference if "val_loss" in l]) == 4
    assert_same_metrics(metrics(tmp / "ddp"), reference)
    assert_same_metrics(metrics(tmp / "fsdp"), reference)
    a = load_model(tmp / "single", torch.device("cpu")).model.state_dict()
    for other in ("ddp", "fsdp"):
        for ema in (True, False):
            a = load_model(tmp / "single", torch.device("cpu"), ema=ema).model.state_dict()
            b = load_model(tmp / other, torch.device("cpu"), ema=ema).model.state_dict()
            assert all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6) for k in a), (other, ema)


def test_fsdp_checkpoints_are_sharded_verified_and_exportable(runs):
    tmp, _ = runs
    ckpt = list_checkpoints(tmp / "fsdp")[-1]
    shards = sorted(p.name for p in (ckpt / "state").iterdir())
    assert len(shards) == 2 and all(name.endswith(".safetensors") for name in shards)
    assert not (ckpt / "model.safetensors").exists()
    verify_checkpoint(ckpt)
    from sunfish.cli import main

    assert main(["export", str(tmp / "fsdp"), "--out", str(tmp / "exported")]) == 0
    exported = load_model(tmp / "exported", torch.device("cpu")).model.state_dict()
    sharded = load_model(tmp / "fsdp", torch.device("cpu")).model.state_dict()
    assert all(torch.equal(exported[k], sharded[k]) for k in sharded)


def test_fsdp_checkpoint_resumes_in_one_process(runs):
    tmp, corpus = runs
    run = tmp / "fsdp_to_single"
    shutil.copytree(tmp / "fsdp", run)
    shutil.rmtree(run / "checkpoints" / f"step-{STEPS:06d}")
    cfg = apply_tree(tiny_cfg(grad_accum=2, save_every=10), {"train": {"parallel": "none"}})
    train(cfg, run_dir=run, data=[str(corpus)], resume=True, progress=False, log=lambda s: None)
    assert_same_metrics(metrics(run), metrics(tmp / "single"))


def test_one_process_checkpoint_resumes_under_fsdp(runs):
    tmp, _ = runs
    assert_same_metrics(metrics(tmp / "single_to_fsdp"), metrics(tmp / "single"))
    assert (list_checkpoints(tmp / "single_to_fsdp")[-1] / "state").is_dir()


def test_parallel_without_torchrun_is_one_sentence(tmp_path):
    from sunfish.cli import main

    env_rank = os.environ.pop("RANK", None)
    try:
        code = main(["train", "--out", str(tmp_path / "r"), "--train.parallel=fsdp", "--steps", "1", "--no-progress"])
    finally:
        if env_rank is not None:
            os.environ["RANK"] = env_rank
    assert code == 2
