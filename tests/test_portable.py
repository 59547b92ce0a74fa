"""Windows conditions, as far as Linux can show them: every module imports with the Unix-only modules made
unimportable, and the CLI prepares tar shards with worker processes, trains from them with DataLoader
workers, resumes and samples under the `spawn` start method (Windows' only one) with those modules gone, in
the parent and in every spawned worker; the resumed run equals an uninterrupted one trained here under normal
conditions. The CI workflow that runs the
suite on Linux, Windows and macOS is valid YAML with one job per system running scripts/test.sh."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import sunfish
from sunfish.cli import main
from sunfish.portable import compiler_missing, peak_rss_gib, readable_output, stop_signals, worker_start_method

from conftest import run_metrics as metrics

ROOT = Path(__file__).resolve().parents[1]
UNIX_ONLY = ("resource", "fcntl", "termios", "pwd", "grp")
# Runs at the start of every interpreter (the CLI's and each spawned worker's), before anything is imported.
SITE = textwrap.dedent(f"""
    import multiprocessing, os, sys
    for name in {UNIX_ONLY!r}:
        sys.modules[name] = None  # as on Windows: importing it fails
    multiprocessing.set_start_method("spawn", force=True)
    with open(os.environ["PORTABLE_LOG"], "a") as f:
        f.write(" ".join(sys.argv) + "\\n")
""")
# Runs `sunfish` command lines in turn in one interpreter (each would otherwise pay torch's import).
JOBS = textwrap.dedent("""
    import json, shutil, sys
    from sunfish.cli import main
    for job in json.loads(open(sys.argv[1], encoding="utf-8").read()):
        if isinstance(job, dict):
            shutil.rmtree(job["remove"])
        elif main(job) != 0:
            raise SystemExit(f"failed: {job}")
""")
TINY = ["--model.d_model=32", "--model.n_layers=1", "--model.n_heads=2", "--model.context=64",
        "--train.batch_size=2", "--train.log_every=1", "--train.val_every=3", "--train.val_batches=1",
        "--optim.warmup_steps=1", "--no-progress"]


@pytest.fixture(scope="module")
def windowsish(tmp_path_factory):
    """run(*argv) -> CompletedProcess of `python -m sunfish ARGV` under Windows conditions; the log of interpreters."""
    site = tmp_path_factory.mktemp("site")
    (site / "sitecustomize.py").write_text(SITE, encoding="utf-8")
    log = site / "interpreters.log"
    src = str(Path(sunfish.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), src, os.environ.get("PYTHONPATH", "")]),
           "PORTABLE_LOG": str(log), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}

    def run(*argv, timeout=120):
        done = subprocess.run([sys.executable, *argv], env=env, capture_output=True, text=True, timeout=timeout)
        assert done.returncode == 0, (argv, done.stderr[-3000:])
        return done
    return run, log


def test_every_module_imports_without_the_unix_only_modules(windowsish):
    run, _ = windowsish
    probe = textwrap.dedent("""
        import importlib, multiprocessing, pkgutil, sunfish
        assert multiprocessing.get_start_method() == "spawn"
        try:
            import resource
            raise SystemExit("resource is still importable")
        except ImportError:
            pass
        names = [m.name for m in pkgutil.walk_packages(sunfish.__path__, "sunfish.") if not m.name.endswith("__main__")]
        failed = []
        for name in names:
            try:
                importlib.import_module(name)
            except Exception as err:
                failed.append(f"{name}: {err!r}")
        print(len(names))
        assert not failed, failed
    """)
    done = run("-c", probe, timeout=300)
    assert int(done.stdout.split()[-1]) > 100  # the whole package was walked


def test_cli_prepares_trains_resumes_and_samples_under_spawn_without_unix_modules(windowsish, tmp_path):
    run, log = windowsish
    from sunfish.data.sources import write_documents
    from sunfish.data.synth import generate_stories

    corpus = tmp_path / "stories.jsonl"
    write_documents(corpus, generate_stories("both", 120, 0))
    prepare = ["data", "prepare", str(corpus), "--format", "tar", "--train-tokenizer", "400", "--seq-len", "64",
               "--min-words", "5", "--no-progress"]
    # Here, normally: one worker prepares tar shards; the reference run of 6 steps reads them in this process.
    assert main([*prepare, "--out", str(tmp_path / "prep1"), "--workers", "1"]) == 0
    train = ["train", "--preset", "nano", "--data", str(tmp_path / "prep1"), *TINY, "--save-every", "3"]
    assert main([*train, "--out", str(tmp_path / "reference"), "--steps", "6", "--data.workers=0"]) == 0
    # Windows conditions, in one interpreter: two spawned workers prepare the same shards; 6 steps with two
    # spawned DataLoader workers streaming the shards, a resume from step 3's checkpoint, and a sample.
    run_dir = tmp_path / "run"
    jobs = [[*prepare, "--out", str(tmp_path / "prep2"), "--workers", "2"],
            [*train, "--out", str(run_dir), "--steps", "6", "--data.workers=2"],
            {"remove": str(run_dir / "checkpoints" / "step-000006")},  # as if stopped after step 3's checkpoint
            [*train, "--out", str(run_dir), "--steps", "6", "--data.workers=2", "--resume"],
            ["sample", str(run_dir), "--prompt", "the cat", "--length", "16", "--steps", "4", "--json"]]
    (tmp_path / "jobs.json").write_text(json.dumps(jobs), encoding="utf-8")
    done = run("-c", JOBS, str(tmp_path / "jobs.json"), timeout=300)
    spawned = [l for l in log.read_text().splitlines() if "--multiprocessing-fork" in l]
    assert len(spawned) >= 6  # 2 prepare and 2 x 2 DataLoader workers were spawned interpreters (blocking alike)
    manifests = [json.loads((tmp_path / p / "manifest.json").read_text(encoding="utf-8")) for p in ("prep1", "prep2")]
    assert manifests[0]["streams"] == manifests[1]["streams"]  # shard files by SHA-256
    a, b = metrics(run_dir), metrics(tmp_path / "reference")
    assert [l["step"] for l in a] == list(range(1, 7)) == [l["step"] for l in b]
    for x, y in zip(a, b):
        assert x == pytest.approx(y, rel=1e-6)
    if sys.platform != "win32":  # without `resource` no peak memory is known here (Windows asks its own API)
        assert all(l["memory_gib"] == 0.0 for l in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()))
    assert json.loads(done.stdout.strip().splitlines()[-1])["text"]


def test_portable_helpers_on_this_system():
    assert peak_rss_gib() > 0  # resource.getrusage here
    import signal

    assert signal.SIGTERM in stop_signals() and signal.SIGINT in stop_signals()
    assert (getattr(signal, "SIGBREAK", None) in stop_signals()) == hasattr(signal, "SIGBREAK")
    import multiprocessing

    assert worker_start_method() == (multiprocessing.get_start_method(allow_none=True)
                                     or ("fork" if sys.platform.startswith("linux") else "spawn"))
    import torch

    assert compiler_missing(torch.device("meta")) is None


@pytest.mark.parametrize("windows", [True, False])
def test_a_redirected_output_in_a_code_page_prints_russian_text(monkeypatch, windows):
    import io

    import sunfish.portable as portable

    monkeypatch.setattr(portable, "WINDOWS", windows)
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="cp1252")  # what Windows gives a pipe or a file
    readable_output((stream,))
    stream.write("Маша нашла мяч")
    stream.flush()
    assert raw.getvalue().decode("utf-8" if windows else "ascii") == (
        "Маша нашла мяч" if windows else "\\u041c\\u0430\\u0448\\u0430 \\u043d\\u0430\\u0448\\u043b\\u0430 \\u043c\\u044f\\u0447")


def test_compile_without_a_compiler_is_skipped_with_one_note(monkeypatch):
    import shutil

    import torch

    from sunfish.config import load_preset
    from sunfish.model.transformer import build_model
    from sunfish.training.parallel import apply_compile

    monkeypatch.setattr(shutil, "which", lambda name: None)
    import dataclasses

    model = build_model(dataclasses.replace(load_preset("nano").model, vocab_size=64), torch.device("cpu"))
    notes = []
    assert apply_compile(model, notes.append) is False
    assert len(notes) == 1 and "torch.compile needs" in notes[0] and "training uncompiled" in notes[0]


def test_ci_workflow_runs_the_suite_on_linux_windows_and_macos():
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed; the workflow's YAML is not checked")
    flow = yaml.safe_load((ROOT / ".github" / "workflows" / "ci.yml").read_text(encoding="utf-8"))
    job = flow["jobs"]["test"]
    assert set(job["strategy"]["matrix"]["os"]) == {"ubuntu-latest", "windows-latest", "macos-latest"}
    commands = "\n".join(step.get("run", "") for step in job["steps"])
    assert "bash scripts/test.sh" in commands and "bash scripts/test.sh" in (ROOT / ".ci" / "run").read_text()
    assert "torch==2.13.0" in commands  # the same pin as scripts/setup.sh
