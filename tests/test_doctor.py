"""`sunfish doctor` (sunfish/diagnose): passes here with its overfit test, and fails clearly when a needed extra is
missing or broken, when the disk is full, and when the tiny model does not learn."""

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

import sunfish
from sunfish.cli import main
from sunfish.diagnose import checks as env_checks
from sunfish.diagnose import overfit as overfit_check
from sunfish.diagnose.checks import EXTRAS, Status

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def run_doctor(capsys, *argv):
    code = main(["doctor", *argv])
    return code, capsys.readouterr().out.strip().splitlines()


def test_doctor_passes_here_with_the_overfit_test(tmp_path, capsys):
    code, lines = run_doctor(capsys, "--out", str(tmp_path / "runs"))
    assert code == 0, lines
    assert lines[-1].startswith(f"all {6 + len(EXTRAS) + 2} checks passed")
    assert all(line.split()[0] in ("ok", "warn") for line in lines[:-1]), lines
    names = [line.split(":")[0].split(maxsplit=1)[1] for line in lines[:-1]]
    assert names == ["python", "torch", "sunfish", "device", "bf16", "compile", *[f"extra {e}" for e in EXTRAS],
                     "disk", "overfit"]
    assert lines[-2].startswith("ok    overfit: a tiny masked model learned 'hello world.': validation loss ")
    assert f"free at {tmp_path} (for {tmp_path / 'runs'})" in next(l for l in lines if l.startswith("ok    disk"))


def test_a_needed_extra_that_is_missing_fails_with_what_to_install(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "fastapi", None)  # `import fastapi` fails as if it were not installed
    code, lines = run_doctor(capsys, "--quick")
    assert code == 0  # missing but not needed: a warning
    assert "warn  extra serve: not installed (fastapi): `sunfish serve`: the OpenAI-compatible HTTP API and its " \
           "metrics; pip install 'sunfish[serve]'" in lines
    code, lines = run_doctor(capsys, "--quick", "--need", "serve,notify")
    assert code == 1
    assert "FAIL  extra serve: needed, but missing (fastapi): `sunfish serve`: the OpenAI-compatible HTTP API and its " \
           "metrics; pip install 'sunfish[serve]'" in lines
    assert lines[-1] == "1 check(s) failed: extra serve"
    checks = sunfish.doctor(need=["serve"], quick=True)  # the Python API returns the same checks
    assert [c.name for c in checks if c.status is Status.FAIL] == ["extra serve"]


def test_a_needed_extra_that_does_not_import_fails(tmp_path, capsys, monkeypatch):
    (tmp_path / "sunfish_test_broken.py").write_text("raise ImportError('built for another torch')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(EXTRAS, "broken", ("nothing real", ("sunfish_test_broken",)))
    assert [c.status for c in env_checks.extras() if c.name == "extra broken"] == [Status.OK]  # found, not imported
    (check,) = [c for c in env_checks.extras(("broken",)) if c.name == "extra broken"]
    assert check.line() == ("FAIL  extra broken: needed, but sunfish_test_broken (ImportError: built for another "
                            "torch) does not import; reinstall: pip install --force-reinstall 'sunfish[broken]'")


def test_an_unknown_extra_in_need_is_refused_in_one_sentence(capsys):
    assert main(["doctor", "--quick", "--need", "serv"]) == 2
    assert capsys.readouterr().err.strip().startswith("sunfish: error: unknown extra(s) serv in --need; the extras "
                                                      "are trace, data, adapt")


def test_a_full_disk_fails(tmp_path, monkeypatch):
    usage = SimpleNamespace(total=100 * 2**30, used=99.5 * 2**30, free=0.5 * 2**30)  # bytes, as shutil's
    monkeypatch.setattr(env_checks.shutil, "disk_usage", lambda path: usage)
    (check,) = env_checks.disk(tmp_path)
    assert check.status is Status.FAIL and check.line().startswith(f"FAIL  disk: 0.5 GiB free at {tmp_path}; free")


def test_the_overfit_check_fails_when_the_model_does_not_learn(monkeypatch):
    settings = {**overfit_check.SETTINGS, "optim": {"lr": 0.0, "warmup_steps": 0}}  # no learning at all
    monkeypatch.setattr(overfit_check, "SETTINGS", settings)
    monkeypatch.setattr(overfit_check, "ROUNDS", (2,))
    check = overfit_check.overfit("cpu")
    assert check.status is Status.FAIL
    assert check.detail.startswith("a tiny masked model did not learn 'hello world.' (wanted a loss below 0.6 and "
                                   "the sentence back): validation loss ")


def test_the_extras_table_describes_every_extra_of_pyproject():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert set(EXTRAS) == set(extras) - {"dev"}
