"""Notifications (--notify, training/notify.py and watch.py) delivered to a JSON webhook on 127.0.0.1 by real tiny
training runs: completion, checkpoints, an injected failure and a non-finite stop; a dead URL never stops a run."""

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest

from sunfish.checkpoint.export import export_checkpoint
from sunfish.cli import build_parser, main, train_config
from sunfish.config import ConfigError, apply_tree, load_preset
from sunfish.process.masked import LossOutput
from sunfish.training import loop
from sunfish.training.loop import train
from sunfish.training.robust import TrainingAborted

TINY = ["--model.d_model=32", "--model.n_layers=1", "--model.n_heads=2", "--model.context=32",
        "--train.batch_size=4", "--train.log_every=2", "--train.val_every=0", "--optim.warmup_steps=2",
        "--data.val_fraction=0.2", "--no-progress"]


def tiny_cfg(steps=4, **train_settings):
    tree = {"model": {"d_model": 32, "n_layers": 1, "n_heads": 2, "context": 32},
            "train": {"steps": steps, "batch_size": 4, "log_every": 2, "val_every": 0, **train_settings},
            "optim": {"warmup_steps": 2}, "data": {"val_fraction": 0.2}}
    return apply_tree(load_preset("nano"), tree)


@pytest.fixture
def webhook():
    """A JSON webhook on 127.0.0.1 (a free port) that keeps every message posted to it; stopped after the test."""
    received = []

    class Handler(BaseHTTPRequestHandler):
        timeout = 10  # seconds a connection may take: the server never hangs a test

        def do_POST(self):
            received.append(json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0)))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield SimpleNamespace(url=f"json://127.0.0.1:{server.server_port}/hook", received=received)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def dead_url() -> str:
    """A json:// URL on a port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"json://127.0.0.1:{port}/hook"


def _plant(monkeypatch, bad_calls: set[int], fault=None):
    """Training loss call n (1-based) in `bad_calls` returns NaN, or raises `fault` when given."""
    calls = {"n": 0}
    real = loop.training_loss

    def planted(*args, **kwargs):
        calls["n"] += 1
        out = real(*args, **kwargs)
        if calls["n"] in bad_calls:
            if fault is not None:
                raise fault
            return LossOutput(loss=out.loss * float("nan"), masked_tokens=out.masked_tokens, nll_sum=out.nll_sum)
        return out

    monkeypatch.setattr(loop, "training_loss", planted)


def test_completion_and_every_second_checkpoint_reach_a_json_webhook(tmp_path, corpus, webhook, capsys):
    run = tmp_path / "run"
    code = main(["train", "--preset", "nano", "--data", corpus, "--steps", "10", "--save-every", "2", *TINY,
                 "--out", str(run), "--notify", webhook.url, "--train.notify_every", "2"])
    assert code == 0
    kinds = [m["type"] for m in webhook.received]
    assert kinds == ["info", "info", "success"], webhook.received  # checkpoints 2 and 4 of 5 (the 5th: the end's)
    assert "checkpoint at step 4" in webhook.received[0]["title"]
    assert "checkpoint at step 8" in webhook.received[1]["title"]
    done = webhook.received[-1]
    assert done["title"] == "Sunfish run 'run' finished"
    assert done["message"].startswith("10 steps in ")
    assert "final loss " in done["message"] and f"checkpoint {run / 'checkpoints' / 'step-000010'}" in done["message"]
    out = capsys.readouterr().out
    assert "warning" not in out
    assert 'notify = ["json://..."]' in out and webhook.url not in out  # the printed config hides the URL's tokens


def test_an_injected_failure_sends_its_reason_and_the_last_checkpoint(tmp_path, corpus, webhook, monkeypatch):
    _plant(monkeypatch, {5}, fault=RuntimeError("injected fault in the loss\nsecond line"))
    run = tmp_path / "run"
    with pytest.raises(RuntimeError, match="injected fault"):
        train(tiny_cfg(steps=6, save_every=2, notify=(webhook.url,)), run_dir=run, data=[corpus], progress=False,
              log=lambda s: None)
    (message,) = webhook.received
    assert message["type"] == "failure" and message["title"] == "Sunfish run 'run' failed"
    reason, last, place = message["message"].splitlines()
    assert reason == "RuntimeError: injected fault in the loss"
    assert last == f"last checkpoint: {run / 'checkpoints' / 'step-000004'}"
    assert place.startswith(f"run folder {run} on ")


def test_non_finite_steps_that_stop_the_run_are_told(tmp_path, corpus, webhook, monkeypatch):
    _plant(monkeypatch, set(range(3, 100)))
    with pytest.raises(TrainingAborted):
        train(tiny_cfg(steps=8, save_every=1, max_bad_steps=2, notify=(webhook.url,)), run_dir=tmp_path / "run",
              data=[corpus], progress=False, log=lambda s: None)
    (message,) = webhook.received
    assert message["type"] == "failure" and message["title"] == "Sunfish run 'run' stopped"
    assert "2 steps in a row had a non-finite loss or gradient" in message["message"]
    assert "last checkpoint: " in message["message"] and "step-000003" in message["message"]  # step 3 was skipped, then saved


def test_a_dead_notifier_costs_one_warning_line_and_never_stops_training(tmp_path, corpus):
    logs = []
    dead = dead_url()
    result = train(tiny_cfg(steps=4, save_every=2, notify_every=1, notify=(dead,)), run_dir=tmp_path / "run",
                   data=[corpus], progress=False, log=logs.append)
    assert result.checkpoint.name == "step-000004"
    warnings = [line for line in logs if line.startswith("warning:")]
    assert len(warnings) == 2, warnings  # the checkpoint at step 2 and the end: one line each
    assert all("was not delivered" in w and "training goes on" in w and "\n" not in w for w in warnings)
    assert json.loads((result.checkpoint / "config.json").read_text())["train"]["notify"] == [dead]  # kept on resume
    export_checkpoint(tmp_path / "run", tmp_path / "export")
    assert json.loads((tmp_path / "export" / "config.json").read_text())["train"]["notify"] == []  # never shared


def test_notify_without_apprise_is_refused_in_one_sentence(tmp_path, corpus, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "apprise", None)  # `import apprise` fails as if it were not installed
    code = main(["train", "--preset", "nano", "--data", corpus, "--steps", "2", *TINY, "--out", str(tmp_path / "run"),
                 "--notify", "json://127.0.0.1:9/hook"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err == ("sunfish: error: --notify sends through the apprise library, which is not installed; "
                   "pip install 'sunfish[notify]' (or pip install apprise)")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_notify_flags_repeat_keep_commas_and_go_into_the_saved_config(tmp_path):
    url = "mailto://user:pass@example.com?to=a@example.com,b@example.com"
    args = build_parser().parse_args(["train", "--out", str(tmp_path), "--notify", "json://127.0.0.1:1/a",
                                      "--notify", url])
    cfg, keys = train_config(args)
    assert cfg.train.notify == ("json://127.0.0.1:1/a", url)
    assert cfg.to_dict()["train"]["notify"] == ["json://127.0.0.1:1/a", url]
    assert keys == ["train.notify"]


@pytest.mark.parametrize("flags, sentence", [
    (["--train.notify_every", "2"], "train.notify_every does nothing without --notify URL"),
    (["--notify", "notaurl"], "apprise cannot use the --notify URL 'notaurl'"),
])
def test_notify_settings_that_cannot_work_are_refused(tmp_path, corpus, capsys, flags, sentence):
    code = main(["train", "--preset", "nano", "--data", corpus, "--steps", "2", *TINY, "--out", str(tmp_path / "r"),
                 *flags])
    assert code == 2 and sentence in capsys.readouterr().err


def test_a_run_stopped_by_sigterm_says_so_with_its_checkpoint(tmp_path, corpus, webhook):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "sunfish", "train", "--preset", "nano", "--data", corpus, "--steps", "100000", *TINY,
           "--out", str(run), "--notify", webhook.url]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not ((run / "metrics.jsonl").exists() and (run / "metrics.jsonl").read_text().count("\n") >= 2):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else "slow"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 130
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()
    (message,) = webhook.received
    assert message["type"] == "warning" and message["title"] == "Sunfish run 'run' stopped by a signal"
    reason, last, _ = message["message"].splitlines()
    step = int(reason.removeprefix("stopped after step "))
    assert last == f"last checkpoint: {run / 'checkpoints' / f'step-{step:06d}'}"


@pytest.mark.parametrize("verb", ["train", "sft", "adapt"])
def test_every_training_verb_offers_notify(verb, capsys):
    with pytest.raises(SystemExit) as done:
        main([verb, "--help"])  # also: a '%' in a setting's help text no longer breaks --help
    assert done.value.code == 0
    assert "--notify" in capsys.readouterr().out


def test_the_metrics_sinks_get_the_config_with_the_urls_masked(tmp_path, corpus, webhook, monkeypatch):
    """TensorBoard/W&B receive the run config from MetricsLog: the notification URLs' tokens stay out of it."""
    import sunfish.training.loop as loop

    seen, real = [], loop.MetricsLog

    def spy(run_dir, start, sink, config):
        seen.append(config)
        return real(run_dir, start, sink, config)

    monkeypatch.setattr(loop, "MetricsLog", spy)
    train(tiny_cfg(steps=2, notify=(webhook.url,)), run_dir=tmp_path / "run", data=[corpus], progress=False,
          log=lambda line: None)
    assert seen and seen[0]["train"]["notify"] == ["json://..."]
