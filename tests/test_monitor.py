"""System monitoring (training/monitor.py): CPU/RAM/GPU figures in metrics.jsonl of a tiny run, and the
--train.max_gpu_temp guard driven by a fake GPU reader on a CPU-only machine (pause, cool or stop)."""

import json
import sys

import pytest

from sunfish.cli import main
from sunfish.config import apply_tree, load_preset
from sunfish.checkpoint.files import list_checkpoints
from sunfish.training.loop import train
from sunfish.training.monitor import SYSTEM_FIELDS, GpuReading, HeatGuard, SystemMonitor
from sunfish.training.robust import TrainingAborted

HOST_FIELDS = ("cpu_percent", "rss_gib", "ram_used_gib", "ram_percent")


def tiny_cfg(steps=4, **train_settings):
    tree = {"model": {"d_model": 32, "n_layers": 1, "n_heads": 2, "context": 32},
            "train": {"steps": steps, "batch_size": 4, "log_every": 2, "val_every": 0, **train_settings},
            "optim": {"warmup_steps": 2}, "data": {"val_fraction": 0.2}}
    return apply_tree(load_preset("nano"), tree)


def lines(run):
    return [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]


class FakeGpu:
    """A GPU reader that reports the temperatures given, one per reading (the last one repeats)."""

    def __init__(self, *temperatures: float):
        self.temperatures = list(temperatures)
        self.readings = 0

    def __call__(self) -> GpuReading:
        t = self.temperatures[min(self.readings, len(self.temperatures) - 1)]
        self.readings += 1
        return GpuReading(util=87.0, memory_gib=12.5, temperature=t)


def test_monitoring_fields_appear_in_metrics_jsonl(tmp_path, corpus):
    run = tmp_path / "run"
    assert main(["train", "--preset", "nano", "--data", corpus, "--steps", "4", "--no-progress", "--out", str(run),
                 "--model.d_model=32", "--model.n_layers=1", "--model.n_heads=2", "--model.context=32",
                 "--train.batch_size=4", "--train.log_every=2", "--train.val_every=0", "--data.val_fraction=0.2"]) == 0
    records = lines(run)
    assert [r["step"] for r in records] == [2, 4]
    for r in records:  # with every metric line by default, beside the training figures
        assert "loss" in r and set(HOST_FIELDS) <= set(r)
        assert 0 <= r["cpu_percent"] <= 100 and 0 < r["rss_gib"] <= r["ram_used_gib"] and 0 < r["ram_percent"] < 100
        assert not any(k.startswith("gpu_") for k in r)  # a CPU run has no GPU figures


def test_monitor_every_writes_its_own_lines_between_metric_lines_with_the_gpu_figures(tmp_path, corpus):
    run = tmp_path / "run"
    train(tiny_cfg(steps=4, monitor_every=1), run_dir=run, data=[corpus], progress=False, log=lambda s: None,
          gpu_reader=FakeGpu(60.0))
    records = lines(run)
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert ["loss" in r for r in records] == [False, True, False, True]
    for r in records:
        assert set(SYSTEM_FIELDS) <= set(r)
        assert (r["gpu_util"], r["gpu_mem_gib"], r["gpu_temp_c"]) == (87.0, 12.5, 60.0)


def test_a_gpu_that_stays_hot_pauses_then_stops_with_a_checkpoint(tmp_path, corpus):
    run, logs, gpu = tmp_path / "run", [], FakeGpu(95.0)
    with pytest.raises(TrainingAborted, match=r"training stopped after step 2: the GPU stayed at 95 C, above "
                                              r"--train.max_gpu_temp=80, after a 0.3 s pause; checkpoint .*step-000002"):
        train(tiny_cfg(steps=8, max_gpu_temp=80, cool_wait=0.3), run_dir=run, data=[corpus], progress=False,
              log=logs.append, gpu_reader=gpu)
    assert [p.name for p in list_checkpoints(run)] == ["step-000002"]
    assert any("pausing up to 0.3 s for it to cool" in line for line in logs)
    assert gpu.readings == 2  # the reading at step 2, and one after the pause


def test_a_gpu_that_cools_during_the_pause_lets_the_run_go_on(tmp_path, corpus):
    logs = []
    result = train(tiny_cfg(steps=4, max_gpu_temp=80, cool_wait=0.5), run_dir=tmp_path / "run", data=[corpus],
                   progress=False, log=logs.append, gpu_reader=FakeGpu(90.0, 70.0))
    assert result.checkpoint.name == "step-000004"
    assert any("the GPU cooled to 70 C after 0.5 s; training goes on" in line for line in logs)


def test_heat_guard_re_reads_every_ten_seconds_within_the_wait():
    slept, gpu = [], FakeGpu(91.0)
    guard = HeatGuard(85.0, 25.0, gpu, lambda s: None, sleep=slept.append)
    assert guard.check(gpu()) == "the GPU stayed at 91 C, above --train.max_gpu_temp=85, after a 25 s pause"
    assert slept == [10.0, 10.0, 5.0]
    assert HeatGuard(85.0, 25.0, gpu, lambda s: None, sleep=slept.append).check(GpuReading(None, None, 85.0)) is None


def test_max_gpu_temp_on_the_cpu_is_refused_in_one_sentence(tmp_path, corpus, capsys):
    code = main(["train", "--preset", "nano", "--data", corpus, "--steps", "2", "--out", str(tmp_path / "r"),
                 "--train.device=cpu", "--train.max_gpu_temp=85"])
    assert code == 2
    assert capsys.readouterr().err.strip() == ("sunfish: error: --train.max_gpu_temp watches a CUDA GPU's temperature "
                                               "and this run is on cpu; leave it out or train on CUDA")
    code = main(["train", "--preset", "nano", "--data", corpus, "--steps", "2", "--out", str(tmp_path / "r"),
                 "--train.cool_wait=60"])
    assert code == 2 and "train.cool_wait does nothing without --train.max_gpu_temp=C" in capsys.readouterr().err


def test_without_psutil_the_host_figures_are_left_out_with_one_note(monkeypatch):
    monkeypatch.setitem(sys.modules, "psutil", None)
    logs = []
    monitor = SystemMonitor(FakeGpu(50.0), logs.append)
    assert monitor.figures() == {"gpu_util": 87.0, "gpu_mem_gib": 12.5, "gpu_temp_c": 50.0}
    monitor.figures()
    assert logs == ["note: CPU and RAM figures need psutil (pip install 'sunfish[monitor]'); they are left out"]


def test_a_failing_gpu_reader_is_noted_once_and_never_stops_the_run(tmp_path, corpus):
    def broken():
        raise RuntimeError("NVML lost the GPU")

    logs = []
    result = train(tiny_cfg(steps=4, monitor_every=1), run_dir=tmp_path / "run", data=[corpus], progress=False,
                   log=logs.append, gpu_reader=broken)
    assert result.checkpoint.name == "step-000004"
    assert [l for l in logs if "NVML lost the GPU" in l] == [
        "warning: reading the GPU's figures failed (RuntimeError: NVML lost the GPU); they are left out while it fails"]
    assert all(set(HOST_FIELDS) <= set(r) and "gpu_util" not in r for r in lines(tmp_path / "run"))


def test_a_pause_for_a_hot_gpu_is_left_out_of_the_throughput(tmp_path, corpus):
    run = tmp_path / "run"
    train(tiny_cfg(steps=4, log_every=1, max_gpu_temp=80, cool_wait=2.0), run_dir=run, data=[corpus], progress=False,
          log=lambda s: None, gpu_reader=FakeGpu(60.0, 60.0, 90.0, 60.0))
    records = lines(run)  # step 3 read 90 C and paused 2 s before its figures were measured
    assert [r["gpu_temp_c"] for r in records] == [60.0, 60.0, 90.0, 60.0]
    others = [r["tokens_per_s"] for r in records if r["step"] != 3]
    assert records[2]["tokens_per_s"] > min(others) / 4  # 2 s in a step of milliseconds would cut it 100-fold
