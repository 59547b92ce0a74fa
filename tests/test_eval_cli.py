"""`sunfish eval` and `sunfish compare` from the command line: files written, bad input -> one sentence, exit 2."""

import json

import pytest

from sunfish.cli import main

from conftest import cli_error

from test_train import DOCS

TINY = ["--model.d_model=32", "--model.n_layers=1", "--model.n_heads=2", "--model.context=64", "--train.batch_size=4",
        "--train.val_every=0", "--train.log_every=1", "--data.val_fraction=0.2", "--no-progress"]
FAST = ["--eval.max_tokens=300", "--eval.max_rounds=4", "--eval.samples=2", "--eval.sample_length=10",
        "--eval.sample_steps=2,10", "--eval.infill_windows=2"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalcli")
    corpus, held = root / "corpus.txt", root / "held.txt"
    corpus.write_text("\n\n".join(DOCS), encoding="utf-8")
    held.write_text("\n\n".join(DOCS[:6]), encoding="utf-8")
    runs = {}
    for name, extra in (("mdlm", []), ("ar", ["--objective", "ar"])):
        runs[name] = root / name
        assert main(["train", "--preset", "nano", "--data", str(corpus), "--out", str(runs[name]), "--steps", "3",
                     *extra, *TINY]) == 0
    return root, runs, held


def test_eval_writes_json_and_report(setup, capsys):
    root, runs, held = setup
    capsys.readouterr()
    assert main(["eval", str(runs["mdlm"]), "--data", str(held), "--ref-model", str(runs["ar"]), *FAST]) == 0
    out = capsys.readouterr().out
    assert "perplexity" in out and "bits per byte" in out and "generation, 10 steps" in out
    body = json.loads((runs["mdlm"] / "eval" / "eval.json").read_text(encoding="utf-8"))
    assert set(body["suites"]) == {"likelihood", "generation", "infill"}
    assert body["suites"]["likelihood"]["tokens"] > 0 and body["suites"]["generation"][0]["gen_perplexity"] > 1
    report = (runs["mdlm"] / "eval" / "report.md").read_text(encoding="utf-8")
    assert "| perplexity |" in report and "loss.png" in report
    for png in ("loss.png", "quality_vs_steps.png", "quality_vs_speed.png"):
        assert (runs["mdlm"] / "eval" / png).stat().st_size > 0


def test_eval_json_and_compare(setup, capsys):
    root, runs, held = setup
    capsys.readouterr()
    assert main(["eval", str(runs["ar"]), "--data", str(held), "--suite", "likelihood,infill", "--json", *FAST]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["suites"]["likelihood"]["exact"] is True
    assert "skipped" in body["suites"]["infill"]  # a causal model cannot infill: recorded, not fatal
    capsys.readouterr()
    assert main(["compare", str(runs["mdlm"]), str(runs["ar"]), "--out", str(root / "cmp")]) == 0
    table = capsys.readouterr().out
    assert "| metric | mdlm | ar |" in table and "bits per byte" in table
    assert (root / "cmp" / "compare.md").is_file()




def test_bad_input_gets_one_sentence(setup, capsys, tmp_path):
    root, runs, held = setup
    assert "unknown suite" in cli_error(capsys, ["eval", str(runs["mdlm"]), "--data", str(held), "--suite", "speed"])
    assert "--parallel" in cli_error(capsys, ["eval", str(runs["mdlm"]), "--suite", "translation"])
    assert "not a Sunfish run" in cli_error(capsys, ["eval", str(tmp_path), "--data", str(held)])
    assert "eval.rel_se" in cli_error(capsys, ["eval", str(runs["mdlm"]), "--data", str(held), "--eval.rel_se=abc"])
    assert "held-out text" in cli_error(capsys, ["eval", str(runs["mdlm"]), "--suite", "likelihood"])
    assert "no eval.json" in cli_error(capsys, ["compare", str(tmp_path)])
    assert "neither a Sunfish run" in cli_error(capsys, ["eval", str(runs["mdlm"]), "--suite", "generation",
                                                        "--ref-model", str(tmp_path), *FAST])
