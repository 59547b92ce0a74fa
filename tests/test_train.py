import json
import shutil

import pytest
import torch

from sunfish.config import apply_tree, load_preset
from sunfish.checkpoint.files import list_checkpoints, read_config
from sunfish.loading import load_model
from sunfish.training.loop import train
from sunfish.training.optim import lr_at

from conftest import TINY_DOCS, run_metrics as metrics

DOCS = TINY_DOCS


def small_cfg(steps=12, **train):
    cfg = load_preset("nano")
    tree = {
        "model": {"d_model": 32, "n_layers": 1, "n_heads": 2, "context": 32},
        "train": {"steps": steps, "batch_size": 4, "log_every": 2, "val_every": 3, "val_batches": 2, **train},
        "optim": {"warmup_steps": 2},
        "data": {"val_fraction": 0.2},
    }
    return apply_tree(cfg, tree)


def test_resumed_run_matches_uninterrupted(tmp_path, corpus):
    full = tmp_path / "full"
    train(small_cfg(save_every=6), run_dir=full, data=[corpus], progress=False, log=lambda s: None)
    part = tmp_path / "part"
    shutil.copytree(full, part)
    shutil.rmtree(part / "checkpoints" / "step-000012")  # as if killed between steps 6 and 12
    with (part / "metrics.jsonl").open("a") as f:  # a line logged after the last checkpoint
        f.write(json.dumps({"step": 8, "loss": 99.0, "lr": 0.0, "tokens_per_s": 1.0}) + "\n")
    train(small_cfg(save_every=6), run_dir=part, data=[corpus], resume=True, progress=False, log=lambda s: None)
    assert metrics(part) == metrics(full)
    a = load_model(full, torch.device("cpu")).model.state_dict()
    b = load_model(part, torch.device("cpu")).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_metrics_and_checkpoint_contents(tmp_path, corpus):
    run = tmp_path / "run"
    result = train(small_cfg(steps=6, save_every=3), run_dir=run, data=[corpus], progress=False, log=lambda s: None)
    lines = metrics(run)
    assert [l["step"] for l in lines] == [2, 3, 4, 6]
    assert all({"step", "loss", "lr"} <= set(l) for l in lines)
    assert "val_loss" in lines[1] and "val_loss" in lines[-1]
    assert [p.name for p in list_checkpoints(run)] == ["step-000003", "step-000006"]
    names = {p.name for p in result.checkpoint.iterdir()}
    assert {"model.safetensors", "optimizer.safetensors", "rng.safetensors", "state.json", "config.json", "tokenizer.json",
            "manifest.json"} <= names
    assert read_config(result.checkpoint).model.vocab_size > 0
    assert not any(p.name.startswith(".") for p in (run / "checkpoints").iterdir())


def test_seeded_runs_repeat(tmp_path, corpus):
    for name in ("a", "b"):
        train(small_cfg(steps=4), run_dir=tmp_path / name, data=[corpus], progress=False, log=lambda s: None)
    assert metrics(tmp_path / "a") == metrics(tmp_path / "b")


def test_resume_with_other_data_is_refused(tmp_path, corpus):
    run = tmp_path / "run"
    train(small_cfg(steps=4, save_every=2), run_dir=run, data=[corpus], progress=False, log=lambda s: None)
    other = tmp_path / "other.txt"
    other.write_text("\n\n".join(reversed(DOCS)), encoding="utf-8")
    with pytest.raises(ValueError, match="differs"):
        train(small_cfg(steps=8), run_dir=run, data=[str(other)], resume=True, progress=False, log=lambda s: None)


def test_lr_schedule_warmup_then_cosine_to_floor():
    cfg = load_preset("nano").optim
    lrs = [lr_at(s, 200, cfg) for s in range(200)]
    assert lrs[0] == pytest.approx(cfg.lr / cfg.warmup_steps)
    assert lrs[cfg.warmup_steps - 1] == pytest.approx(cfg.lr)
    assert lrs[-1] == pytest.approx(cfg.min_lr_ratio * cfg.lr)
    assert all(a >= b for a, b in zip(lrs[cfg.warmup_steps :], lrs[cfg.warmup_steps + 1 :]))


def test_weight_decay_only_on_matrices():
    from sunfish.model.transformer import build_model
    from sunfish.training.optim import build_optimizer

    cfg = apply_tree(load_preset("nano"), {"model": {"vocab_size": 40}})
    opt = build_optimizer(build_model(cfg.model), cfg.optim)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and all(p.ndim == 2 for p in decay["params"])
    assert no_decay["weight_decay"] == 0.0 and all(p.ndim == 1 for p in no_decay["params"])


def test_short_run_on_real_text_lowers_validation_loss(tmp_path):
    from conftest import shared_corpus

    data = shared_corpus("en_tinystories/tinystories_train_head.jsonl")
    cfg = apply_tree(load_preset("nano"), {"train": {"steps": 60, "val_every": 30, "val_batches": 2, "batch_size": 8},
                                           "model": {"context": 64}})
    train(cfg, run_dir=tmp_path / "run", data=[str(data)], progress=False, log=lambda s: None)
    vals = [l["val_loss"] for l in metrics(tmp_path / "run") if "val_loss" in l]
    assert len(vals) == 2 and vals[1] < vals[0]


def test_fresh_run_never_overwrites_checkpoints(tmp_path, corpus):
    run = tmp_path / "run"
    train(small_cfg(steps=2), run_dir=run, data=[corpus], progress=False, log=lambda s: None)
    with pytest.raises(ValueError, match="already holds checkpoints"):
        train(small_cfg(steps=2), run_dir=run, data=[corpus], progress=False, log=lambda s: None)
    assert (run / "checkpoints" / "step-000002" / "model.safetensors").is_file()
