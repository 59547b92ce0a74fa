"""A run that survives kills, signals, bad batches, damaged checkpoints and a second run in its folder."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from sunfish.cli import main
from sunfish.config import apply_tree, load_preset
from sunfish.process.masked import LossOutput
from sunfish.training import loop
from sunfish.checkpoint.files import CheckpointError, list_checkpoints, read_state, verify_checkpoint
from sunfish.loading import load_model
from sunfish.training.loop import train
from sunfish.training.robust import RunInUseError, TrainingAborted

from conftest import TINY_DOCS, run_metrics as metrics

DOCS = TINY_DOCS
TINY = ["--model.d_model=32", "--model.n_layers=1", "--model.n_heads=2", "--model.context=32",
        "--train.batch_size=4", "--train.log_every=1", "--train.val_every=4", "--train.val_batches=2",
        "--optim.warmup_steps=2", "--data.val_fraction=0.2"]
QUIET = lambda s: None


def tiny_cfg(steps=8, **train):
    tree = {"model": {"d_model": 32, "n_layers": 1, "n_heads": 2, "context": 32},
            "train": {"steps": steps, "batch_size": 4, "log_every": 1, "val_every": 4, "val_batches": 2, **train},
            "optim": {"warmup_steps": 2}, "data": {"val_fraction": 0.2}}
    return apply_tree(load_preset("nano"), tree)


def weights(run_dir):
    return load_model(run_dir, torch.device("cpu")).model.state_dict()


@pytest.mark.skipif(sys.platform == "win32", reason="kill -9 and SIGTERM from outside are Unix signals")
def test_kill_9_at_random_points_then_resume_equals_an_uninterrupted_run(tmp_path, corpus):
    steps = 18
    argv = ["train", "--preset", "nano", "--data", corpus, "--steps", str(steps), "--save-every", "3", "--no-progress", *TINY]
    assert main([*argv, "--out", str(tmp_path / "reference")]) == 0
    run = tmp_path / "chaos"
    cmd = [sys.executable, "-m", "sunfish", *argv, "--out", str(run), "--resume"]
    rng = random.Random(4)
    interruptions = []
    for sig in (signal.SIGKILL, signal.SIGKILL, signal.SIGTERM):
        done = len(metrics(run)) if (run / "metrics.jsonl").exists() else 0
        target = done + rng.randint(2, 5)
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        while proc.poll() is None:
            lines = (run / "metrics.jsonl").read_text().count("\n") if (run / "metrics.jsonl").exists() else 0
            if lines >= target:
                time.sleep(rng.random() * 0.02)
                proc.send_signal(sig)
                break
            time.sleep(0.002)
        code = proc.wait(timeout=120)
        err = proc.stderr.read()
        proc.stderr.close()
        interruptions.append(code)
        for ckpt in list_checkpoints(run):
            verify_checkpoint(ckpt)  # no kill ever leaves a damaged checkpoint under a real name
        if sig == signal.SIGTERM and code != 0:
            assert code == 130, err
            newest = read_state(list_checkpoints(run)[-1]).step
            assert newest == max(l["step"] for l in metrics(run))  # the stop wrote the last finished step
    assert interruptions.count(-signal.SIGKILL) >= 2
    assert main([*argv, "--out", str(run), "--resume"]) == 0
    a, b = metrics(run), metrics(tmp_path / "reference")
    assert [l["step"] for l in a] == [l["step"] for l in b]
    for x, y in zip(a, b):
        assert x == pytest.approx(y, rel=1e-6)
    ref, got = weights(tmp_path / "reference"), weights(run)
    assert all(torch.allclose(ref[k], got[k], rtol=1e-5, atol=1e-7) for k in ref)
    assert_unlocked(run)


def _plant_nan(monkeypatch, bad_calls):
    real = loop.training_loss
    calls = {"n": 0}

    def loss_with_nan(model, x0, cfg, mask_id, generator, stage=None):
        out = real(model, x0, cfg, mask_id, generator, stage)
        calls["n"] += 1
        if model.training and calls["n"] in bad_calls:
            return LossOutput(loss=out.loss * float("nan"), masked_tokens=out.masked_tokens, nll_sum=out.nll_sum)
        return out

    monkeypatch.setattr(loop, "training_loss", loss_with_nan)


def test_planted_nan_batch_is_skipped(tmp_path, corpus, monkeypatch):
    _plant_nan(monkeypatch, bad_calls={3})  # the third training batch (step 3)
    logs = []
    train(tiny_cfg(steps=6), run_dir=tmp_path / "run", data=[corpus], progress=False, log=logs.append)
    lines = metrics(tmp_path / "run")
    assert {"step": 3, "skipped": True, "lr": pytest.approx(lines[2]["lr"])} == lines[2]
    assert all(l.get("skipped") is None and l["loss"] == l["loss"] for l in lines if l["step"] != 3)
    assert any("step 3 skipped: non-finite loss" in s for s in logs)
    assert all(torch.isfinite(v).all() for v in weights(tmp_path / "run").values())


def test_too_many_bad_steps_in_a_row_abort_with_one_sentence(tmp_path, corpus, monkeypatch):
    _plant_nan(monkeypatch, bad_calls=set(range(2, 100)))
    with pytest.raises(TrainingAborted, match=r"training stopped at step 4: 3 steps in a row had a non-finite"):
        train(tiny_cfg(steps=8, max_bad_steps=3), run_dir=tmp_path / "run", data=[corpus], progress=False, log=QUIET)
    assert_unlocked(tmp_path / "run")


def test_truncated_checkpoint_is_refused_and_resume_falls_back(tmp_path, corpus, capsys):
    full = tmp_path / "full"
    train(tiny_cfg(steps=8, save_every=4), run_dir=full, data=[corpus], progress=False, log=QUIET)
    run = tmp_path / "run"
    shutil.copytree(full, run)
    damaged = run / "checkpoints" / "step-000008" / "model.safetensors"
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="is damaged: model.safetensors has"):
        load_model(run, torch.device("cpu"))
    assert main(["sample", str(run), "--length", "8", "--steps", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sunfish: error: checkpoint") and "damaged" in err[0]
    logs = []
    train(tiny_cfg(steps=8, save_every=4), run_dir=run, data=[corpus], resume=True, progress=False, log=logs.append)
    assert any("step-000008" in s and "falling back to the previous checkpoint" in s for s in logs)
    assert any("resuming from" in s and "step-000004" in s for s in logs)
    assert metrics(run) == metrics(full)
    verify_checkpoint(list_checkpoints(run)[-1])


def test_flipped_byte_is_caught_by_the_hash(tmp_path, corpus):
    run = tmp_path / "run"
    train(tiny_cfg(steps=2), run_dir=run, data=[corpus], progress=False, log=QUIET)
    path = list_checkpoints(run)[-1] / "optimizer.safetensors"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="SHA-256 of optimizer.safetensors differs"):
        verify_checkpoint(list_checkpoints(run)[-1])


HOLDER = """
import json, os, socket, sys, time
from filelock import FileLock
lock = FileLock(sys.argv[1] + "/.lock")
lock.acquire(timeout=0)
open(sys.argv[1] + "/.lock.owner", "w").write(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
print("held", flush=True)
time.sleep(60)
"""


def assert_unlocked(run):
    """The run released its folder: no owner file, and the lock can be taken at once."""
    from filelock import FileLock

    assert not (run / ".lock.owner").exists()
    lock = FileLock(str(run / ".lock"))
    lock.acquire(timeout=0)
    lock.release()


def test_lock_refuses_a_live_run_and_takes_over_a_dead_one(tmp_path, corpus):
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunInUseError, match=f"is in use by another run \\(pid {holder.pid}"):
            train(tiny_cfg(steps=2), run_dir=run, data=[corpus], progress=False, log=QUIET)
    finally:
        holder.kill()  # SIGKILL: the holder cannot release anything; the system drops its lock
        holder.wait()
        holder.stdout.close()
    logs = []
    train(tiny_cfg(steps=2), run_dir=run, data=[corpus], progress=False, log=logs.append)
    assert any(f"took over the lock of a run that is no longer alive (pid {holder.pid})" in s for s in logs)
    assert_unlocked(run)


def test_a_stop_file_checkpoints_and_the_resumed_run_equals_an_uninterrupted_one(tmp_path, corpus):
    train(tiny_cfg(steps=6, save_every=3), run_dir=tmp_path / "reference", data=[corpus], progress=False, log=QUIET)
    run = tmp_path / "run"
    run.mkdir()
    (run / "STOP").write_text("")
    logs = []
    with pytest.raises(loop.TrainingInterrupted):
        train(tiny_cfg(steps=6, save_every=3), run_dir=run, data=[corpus], progress=False, log=logs.append)
    assert [p.name for p in list_checkpoints(run)] == ["step-000001"]
    assert any("stopped by the STOP file after step 1" in s for s in logs)
    assert not (run / "STOP").exists()  # removed, so the resume runs on
    train(tiny_cfg(steps=6, save_every=3), run_dir=run, data=[corpus], resume=True, progress=False, log=QUIET)
    a, b = metrics(run), metrics(tmp_path / "reference")
    assert [l["step"] for l in a] == [l["step"] for l in b]
    for x, y in zip(a, b):
        assert x == pytest.approx(y, rel=1e-6)
    assert_unlocked(run)


def test_keep_last_keeps_the_newest_and_the_best(tmp_path, corpus):
    run = tmp_path / "run"
    train(tiny_cfg(steps=10, save_every=2, val_every=2, keep_last=2), run_dir=run, data=[corpus], progress=False, log=QUIET)
    kept = [p.name for p in list_checkpoints(run)]
    vals = {l["step"]: l["val_loss"] for l in metrics(run) if "val_loss" in l}
    best = min(vals, key=vals.get)
    assert kept[-2:] == ["step-000008", "step-000010"]
    assert set(kept) == {"step-000008", "step-000010", f"step-{best:06d}"}
    assert main(["export", str(run), "--best", "--out", str(tmp_path / "best")]) == 0
    assert read_state(tmp_path / "best").extra["exported_from"].endswith(f"step-{best:06d}")


def test_ema_weights_are_saved_and_used_for_sampling(tmp_path, corpus):
    run = tmp_path / "run"
    train(tiny_cfg(steps=6, ema=0.9), run_dir=run, data=[corpus], progress=False, log=QUIET)
    ckpt = list_checkpoints(run)[-1]
    assert (ckpt / "ema.safetensors").is_file()
    averaged = load_model(run, torch.device("cpu")).model.state_dict()
    raw = load_model(run, torch.device("cpu"), ema=False).model.state_dict()
    assert any(not torch.equal(averaged[k], raw[k]) for k in raw)
    assert main(["export", str(run), "--raw", "--out", str(tmp_path / "raw")]) == 0
    exported = load_model(tmp_path / "raw", torch.device("cpu")).model.state_dict()
    assert all(torch.equal(exported[k], raw[k]) for k in raw)


def test_layerwise_learning_rates(tmp_path):
    from sunfish.model.transformer import build_model
    from sunfish.training.optim import build_optimizer, set_lr

    cfg = apply_tree(load_preset("nano"), {"model": {"vocab_size": 40}, "optim": {"lr_embed": 0.5, "lr_attn": 2.0}})
    model = build_model(cfg.model)
    opt = build_optimizer(model, cfg.optim)
    set_lr(opt, 1e-3)
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert lr_of[id(model.embed.weight)] == pytest.approx(5e-4)
    assert lr_of[id(model.blocks[0].attn.qkv.weight)] == pytest.approx(2e-3)
    assert lr_of[id(model.blocks[0].mlp.up.weight)] == pytest.approx(1e-3)
    assert sum(len(g["params"]) for g in opt.param_groups) == len({id(p) for p in model.parameters()})


def test_tensorboard_scalars_and_grad_norm(tmp_path, corpus):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    train(tiny_cfg(steps=4, log="tensorboard"), run_dir=run, data=[corpus], progress=False, log=QUIET)
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/val_loss", "train/lr", "train/grad_norm", "train/tokens_per_s", "train/memory_gib"} <= tags
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4]
    assert all("grad_norm" in l for l in metrics(run))


def test_wandb_offline_run(tmp_path, corpus, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    train(tiny_cfg(steps=2, log="wandb"), run_dir=run, data=[corpus], progress=False, log=QUIET)
    offline = list((run / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and any(offline[0].glob("*.wandb"))
    assert len(metrics(run)) == 2
