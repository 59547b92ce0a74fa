"""`sunfish estimate`: the memory model against measured peaks on the CPU, and the CLI's answers."""

import json

import pytest

from sunfish.cli import main
from sunfish.config import ParallelKind
from sunfish.training.estimate import EstimateInput, estimate, measure_step_peak, preset_model


@pytest.mark.parametrize("preset,batch,seq,act_ckpt", [("nano", 8, 128, 0), ("nano", 8, 128, 1), ("nano", 4, 64, 0)])
def test_estimate_within_15_percent_of_a_measured_training_step(preset, batch, seq, act_ckpt):
    model = preset_model(preset)
    predicted = estimate(EstimateInput(model=model, batch=batch, seq_len=seq, dtype="fp32", act_ckpt=act_ckpt)).total
    measured = measure_step_peak(model, batch, seq, act_ckpt)
    assert predicted == pytest.approx(measured, rel=0.15)


def test_sharding_offload_and_checkpointing_move_memory_where_expected():
    model = preset_model("sunfish-1.4b")
    base = EstimateInput(model=model, batch=4, seq_len=2048)
    single = estimate(base)
    fsdp = estimate(EstimateInput(**{**base.__dict__, "parallel": ParallelKind.FSDP, "gpus": 4}))
    offload = estimate(EstimateInput(**{**base.__dict__, "parallel": ParallelKind.FSDP, "gpus": 4, "offload": True}))
    ckpt = estimate(EstimateInput(**{**base.__dict__, "act_ckpt": 1}))
    assert single.parameters == 1_451_329_536
    assert single.optimizer == 8 * single.parameters and fsdp.optimizer == single.optimizer / 4
    assert offload.optimizer == 0 and offload.host_bytes > 0 and offload.total < fsdp.total
    assert ckpt.activations < single.activations / 3 and ckpt.activations == single.activations_ckpt_all
    assert ckpt.tokens_per_s == pytest.approx(single.tokens_per_s * 6 / 8)
    assert fsdp.tokens_per_s == pytest.approx(4 * single.tokens_per_s)


def test_estimate_cli_says_whether_it_fits(capsys):
    assert main(["estimate", "--preset", "sunfish-1.4b", "--batch", "4", "--gpu-mem", "24"]) == 0
    assert "does NOT fit" in capsys.readouterr().out
    argv = ["estimate", "--preset", "sunfish-1.4b", "--batch", "4", "--gpu-mem", "24", "--parallel", "fsdp",
            "--gpus", "2", "--offload", "--act-ckpt", "--tokens", "1e10", "--json"]
    assert main(argv) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["fits"] and body["parameters"] == 1_451_329_536
    assert body["days"] == pytest.approx(1e10 / body["tokens_per_s"] / 86400)


@pytest.mark.parametrize("argv", [["--mfu", "2"], ["--offload"], ["--seq", "99999"], ["--gpus", "0"]])
def test_estimate_bad_input_is_one_sentence(argv, capsys):
    assert main(["estimate", "--preset", "nano", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sunfish: error: ")
