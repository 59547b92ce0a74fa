"""Two nodes for real, on this machine: two torchrun agents (--nnodes=2 --nproc-per-node=1, c10d rendezvous on
127.0.0.1, gloo), each node with its own run folder (--train.node_local=true, no shared files). DDP and FSDP
log the same losses as one process with the same global batch, every node's folder holds complete, loadable
checkpoints, node 1's folder resumes in one process equal to the uninterrupted run, and a one-process run
resumed on two nodes ships its checkpoint to the node that lacks it."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap

import pytest
import torch

from sunfish.checkpoint.files import list_checkpoints, verify_checkpoint
from sunfish.config import apply_tree, load_preset
from sunfish.loading import load_model
from sunfish.training.loop import train

from conftest import TINY_DOCS, run_metrics as metrics

STEPS = 6
TINY = ["--model.d_model=32", "--model.n_layers=2", "--model.n_heads=2", "--model.context=32",
        "--train.batch_size=2", "--train.log_every=1", "--train.val_every=3", "--train.val_batches=2",
        "--optim.warmup_steps=2", "--data.val_fraction=0.2", "--train.ema=0.9"]
# One process group per agent's worker (PyTorch cannot reliably make a second one in a process), several
# `sunfish train` command lines in turn; "{node}" in an argument becomes this node's index (GROUP_RANK).
# A job that is a string names a folder each node removes.
WORKER = textwrap.dedent("""
    import faulthandler, json, os, shutil, sys
    faulthandler.dump_traceback_later(200, exit=True)  # a hang prints where, and the worker still ends
    import torch.distributed as dist
    from sunfish.cli import main
    dist.init_process_group("gloo")
    node = os.environ["GROUP_RANK"]
    for job in json.loads(open(sys.argv[1]).read()):
        if isinstance(job, str):  # a folder this node removes (then waits for the other node)
            shutil.rmtree(job.replace("{node}", node))
            dist.barrier()
            continue
        code = main([a.replace("{node}", node) for a in job])
        assert code == 0, (job, code)
    dist.destroy_process_group()
""")


def tiny_cfg(**train):
    tree = {"model": {"d_model": 32, "n_layers": 2, "n_heads": 2, "context": 32},
            "train": {"steps": STEPS, "batch_size": 2, "grad_accum": 2, "log_every": 1, "val_every": 3,
                      "val_batches": 2, "ema": 0.9, "save_every": 3, **train},
            "optim": {"warmup_steps": 2}, "data": {"val_fraction": 0.2}}
    return apply_tree(load_preset("nano"), tree)


def assert_same_metrics(a, b, rel=1e-5):
    assert [l["step"] for l in a] == [l["step"] for l in b] == list(range(1, STEPS + 1))
    for x, y in zip(a, b):
        assert set(x) == set(y)
        for key in x:
            assert x[key] == pytest.approx(y[key], rel=rel, abs=1e-7), (x["step"], key)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_nodes(tails: list[list[str]]) -> list[list[str]]:
    """torchrun command lines of two agents of one node each, meeting at a fresh port; tails[i] is agent i's
    script and arguments."""
    port = free_port()
    return [[sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1", "--rdzv-backend=c10d",
             f"--rdzv-endpoint=127.0.0.1:{port}", f"--rdzv-id=sunfish-{port}", "--max-restarts=0", *tail]
            for tail in tails]


def run_all(commands: list[list[str]], timeout=240) -> None:
    """Run the agents together and wait for all of them (killed, with their workers, past `timeout` seconds)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    agents = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True) for cmd in commands]  # a group of its own: killed with it
    try:
        outputs = [a.communicate(timeout=timeout)[0] for a in agents]
    finally:
        for a in agents:  # whatever is left (nothing after a clean exit): SIGTERM lets torchrun end its workers
            if not hasattr(os, "killpg"):  # Windows
                a.kill()
                a.wait()
                continue
            for sig, grace in ((signal.SIGTERM, 15), (signal.SIGKILL, None)):
                try:
                    os.killpg(a.pid, sig)
                    a.wait(timeout=grace)
                    break
                except ProcessLookupError:
                    break
                except subprocess.TimeoutExpired:
                    continue
    for a, out in zip(agents, outputs):
        assert a.returncode == 0, out[-4000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The one-process reference (2 micro-batches of 2 = 2 nodes x 2), then two two-node launches at once:
    `torchrun -m sunfish train` with DDP (each agent its own --out), and a worker that runs FSDP (once
    resumed from step 3 on both nodes), and the reference's step-3 checkpoint resumed on two nodes of which
    only node 0 holds it."""
    tmp = tmp_path_factory.mktemp("multinode")
    corpus = tmp / "corpus.txt"
    corpus.write_text("\n\n".join(TINY_DOCS), encoding="utf-8")
    train(tiny_cfg(), run_dir=tmp / "single", data=[str(corpus)], progress=False, log=lambda s: None)
    shutil.copytree(tmp / "single", tmp / "node0" / "grow")
    shutil.rmtree(tmp / "node0" / "grow" / "checkpoints" / f"step-{STEPS:06d}")
    common = ["train", "--preset", "nano", "--data", str(corpus), "--steps", str(STEPS), "--save-every", "3",
              "--no-progress", "--train.node_local=true", *TINY]
    jobs = [[*common, "--out", str(tmp / "node{node}" / "fsdp-resumed"), "--train.parallel=fsdp"],
            str(tmp / "node{node}" / "fsdp-resumed" / "checkpoints" / f"step-{STEPS:06d}"),
            [*common, "--out", str(tmp / "node{node}" / "fsdp-resumed"), "--train.parallel=fsdp", "--resume"],
            [*common, "--out", str(tmp / "node{node}" / "fsdp"), "--train.parallel=fsdp"],
            [*common, "--out", str(tmp / "node{node}" / "grow"), "--train.parallel=fsdp", "--train.grad_accum=1",
             "--resume"]]
    (tmp / "jobs.json").write_text(json.dumps(jobs))
    (tmp / "worker.py").write_text(WORKER)
    cli = two_nodes([["-m", "sunfish", *common, "--out", str(tmp / f"agent{i}" / "ddp"), "--train.parallel=ddp"]
                     for i in range(2)])  # which agent becomes node 1 is the rendezvous' choice
    worker = two_nodes([[str(tmp / "worker.py"), str(tmp / "jobs.json")]] * 2)
    run_all(cli + worker)
    return tmp, corpus


def node_folders(tmp, kind):
    return [tmp / f"agent{i}" / kind for i in range(2)] if kind == "ddp" else [tmp / f"node{i}" / kind for i in range(2)]


@pytest.mark.parametrize("kind", ["ddp", "fsdp"])
def test_two_nodes_equal_one_process_and_each_node_folder_holds_the_checkpoints(runs, kind):
    tmp, _ = runs
    reference = metrics(tmp / "single")
    for node, run in enumerate(node_folders(tmp, kind)):
        assert_same_metrics(metrics(run), reference)
        assert [p.name for p in list_checkpoints(run)] == ["step-000003", f"step-{STEPS:06d}"]
        for ckpt in list_checkpoints(run):
            verify_checkpoint(ckpt)
        if kind == "fsdp":
            assert len(list((list_checkpoints(run)[-1] / "state").iterdir())) == 2  # both ranks' shards, on each node
        for ema in (False, True):
            a = load_model(tmp / "single", torch.device("cpu"), ema=ema).model.state_dict()
            b = load_model(run, torch.device("cpu"), ema=ema).model.state_dict()
            assert all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6) for k in a), (node, ema)
        assert not (run / ".lock.owner").exists()


@pytest.mark.parametrize("kind", ["ddp", "fsdp"])
def test_node_1_folder_resumes_in_one_process_equal_to_the_uninterrupted_run(runs, kind):
    tmp, corpus = runs
    run = tmp / f"resumed-{kind}"
    shutil.copytree(node_folders(tmp, kind)[1], run)
    shutil.rmtree(run / "checkpoints" / f"step-{STEPS:06d}")
    if kind == "ddp":
        logs = []
        train(tiny_cfg(), run_dir=run, data=[str(corpus)], resume=True, progress=False, log=logs.append)
        assert any("resuming from" in s and "step-000003" in s for s in logs)
    else:  # the command line: the saved config says fsdp on node-local folders; one process keeps the global batch
        from sunfish.cli import main

        assert main(["train", "--out", str(run), "--data", str(corpus), "--resume", "--train.parallel=none",
                     "--train.grad_accum=2", "--no-progress"]) == 0
    assert_same_metrics(metrics(run), metrics(tmp / "single"))


def test_two_nodes_resume_from_their_own_folders(runs):
    tmp, _ = runs
    for node in (0, 1):
        run = tmp / f"node{node}" / "fsdp-resumed"
        assert_same_metrics(metrics(run), metrics(tmp / "single"))
        assert [p.name for p in list_checkpoints(run)] == ["step-000003", f"step-{STEPS:06d}"]
        assert not list((run / "checkpoints").glob(".*"))  # no temporary folder left


def test_a_node_without_the_checkpoint_receives_it_on_resume(runs):
    tmp, _ = runs
    reference = metrics(tmp / "single")
    assert_same_metrics(metrics(tmp / "node0" / "grow"), reference)
    logged = metrics(tmp / "node1" / "grow")  # node 1 logged from the resume on
    assert [l["step"] for l in logged] == [4, 5, 6]
    for x, y in zip(logged, reference[3:]):
        assert x == pytest.approx(y, rel=1e-5)
    for node in (0, 1):
        run = tmp / f"node{node}" / "grow"
        assert [p.name for p in list_checkpoints(run)] == ["step-000003", f"step-{STEPS:06d}"]
        verify_checkpoint(list_checkpoints(run)[0])  # node 1's copy of the checkpoint it resumed from
    assert not list((tmp / "node1" / "grow" / "checkpoints").glob(".*"))  # no staging folder left
    one, two = (load_model(tmp / f"node{n}" / "grow", torch.device("cpu")).model.state_dict() for n in (0, 1))
    assert all(torch.equal(one[k], two[k]) for k in one)


def test_node_local_in_one_process_is_one_sentence(tmp_path):
    from sunfish.cli import main

    code = main(["train", "--out", str(tmp_path / "r"), "--train.node_local=true", "--steps", "1", "--no-progress"])
    assert code == 2
