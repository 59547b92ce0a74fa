"""The command line: the contract's verbs work, and bad input gets one sentence and a non-zero exit."""

import json

import pytest

from sunfish.cli import main

from test_train import DOCS

TINY = ["--model.d_model=32", "--model.n_layers=1", "--model.n_heads=2", "--model.context=64",
        "--train.batch_size=4", "--train.val_every=0", "--data.val_fraction=0.2", "--no-progress"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    corpus = root / "corpus.txt"
    corpus.write_text("\n\n".join(DOCS), encoding="utf-8")
    out = root / "run"
    assert main(["train", "--preset", "nano", "--data", str(corpus), "--out", str(out), "--steps", "4", *TINY]) == 0
    return out


def error_of(capsys, argv) -> str:
    assert main(argv) != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("sunfish: error: ") and "Traceback" not in err and len(err.splitlines()) == 1
    return err


def test_sample_json_contract(run_dir, capsys):
    capsys.readouterr()
    assert main(["sample", str(run_dir), "--prompt", "the cat", "--length", "12", "--steps", "4", "--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert set(body) == {"text", "steps", "nfe", "seconds", "tokens_per_s"}
    assert body["text"].startswith("the cat") and body["steps"] == 4 and body["nfe"] == 4


def test_sample_plain_and_policies(run_dir, capsys):
    for policy in ("confidence", "margin", "entropy", "random"):
        assert main(["sample", str(run_dir), "--length", "8", "--policy", policy, "--temperature", "0.5"]) == 0
    assert capsys.readouterr().out.strip()


def test_infill_keeps_text(run_dir, capsys):
    capsys.readouterr()
    assert main(["infill", str(run_dir), "--text", "the cat [MASK:5] the mat.", "--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["text"].startswith("the cat ") and body["text"].endswith(" the mat.")
    assert len(body["fills"]) == 1 and len(body["fills"][0]) == 5  # char tokenizer: 5 characters


def test_trace_gif(run_dir, tmp_path):
    trace = tmp_path / "t.gif"
    assert main(["sample", str(run_dir), "--length", "10", "--steps", "5", "--trace", str(trace)]) == 0
    assert trace.stat().st_size > 0


def test_presets_table(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert "micro" in out and "10,706,304" in out and "sunfish-1.4b" in out


def test_data_synth(tmp_path, capsys):
    out = tmp_path / "s.jsonl"
    assert main(["data", "synth", "--lang", "ru", "--docs", "5", "--seed", "1", "--out", str(out)]) == 0
    lines = out.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 5 and all(json.loads(l)["text"] for l in lines)


def test_resume_flag(run_dir, capsys):
    assert main(["train", "--preset", "nano", "--out", str(run_dir), "--resume", "--steps", "6",
                 "--data", str(run_dir.parent / "corpus.txt"), "--no-progress"]) == 0
    assert (run_dir / "checkpoints" / "step-000006").is_dir()


def test_bad_inputs(tmp_path, run_dir, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n\n ", encoding="utf-8")
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    train = ["train", "--preset", "nano", "--out", str(tmp_path / "x"), "--steps", "1", "--no-progress"]
    assert "does not exist" in error_of(capsys, [*train, "--data", str(tmp_path / "missing.txt")])
    assert "empty" in error_of(capsys, [*train, "--data", str(empty)])
    assert "UTF-8" in error_of(capsys, [*train, "--data", str(latin1)])
    assert "unknown preset" in error_of(capsys, ["train", "--preset", "gigantic"])
    assert "unknown config key" in error_of(capsys, [*train, "--model.widht=3"])
    assert "unknown config section" in error_of(capsys, [*train, "--modle.width=3"])
    assert "not a valid int" in error_of(capsys, [*train, "--model.d_model=big"])
    assert "context" in error_of(capsys, ["sample", str(run_dir), "--prompt", "the cat " * 10, "--length", "40"])
    assert "not a Sunfish run" in error_of(capsys, ["sample", str(tmp_path)])
    assert "no [MASK]" in error_of(capsys, ["infill", str(run_dir), "--text", "nothing to fill"])
    assert "does not have" in error_of(capsys, ["sample", str(run_dir), "--prompt", "日本"])


def test_quickstart_end_to_end(tmp_path, capsys):
    out = tmp_path / "qs"
    assert main(["quickstart", "--out", str(out), "--steps", "20"]) == 0
    printed = capsys.readouterr().out
    assert "--- English" in printed and "--- Russian" in printed and "infill" in printed
    assert "word 3-grams occur in the training corpus" in printed
    assert (out / "trace.gif").stat().st_size > 0 and (out / "corpus.txt").stat().st_size > 100_000
    assert (out / "run" / "checkpoints" / "step-000020" / "model.safetensors").is_file()


def test_block_diffusion_trains_and_samples(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(DOCS), encoding="utf-8")
    out = tmp_path / "bd3"
    assert main(["train", "--preset", "nano", "--data", str(corpus), "--out", str(out), "--steps", "3",
                 "--process.block_size=8", *TINY]) == 0
    capsys.readouterr()
    assert main(["sample", str(out), "--prompt", "the cat", "--length", "20", "--steps", "10", "--json",
                 "--no-stop-at-eos"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["text"].startswith("the cat") and body["steps"] == 10 and body["nfe"] == 12  # + 2 cache commits
    assert "block diffusion" in error_of(capsys, ["infill", str(out), "--text", "the [MASK:3] sat"])


def test_data_pipeline_verbs_are_wired(tmp_path, capsys):
    """`sunfish data prepare` output trains with `sunfish train --data DIR`; `tokenizer stats` answers."""
    corpus = tmp_path / "c.jsonl"
    from sunfish.data.sources import write_documents
    from sunfish.data.synth import generate_stories

    write_documents(corpus, generate_stories("both", 300, 0))
    prepared = tmp_path / "prep"
    assert main(["data", "prepare", str(corpus), "--out", str(prepared), "--train-tokenizer", "600", "--seq-len", "64",
                 "--min-words", "5", "--workers", "1", "--no-progress"]) == 0
    assert (prepared / "manifest.json").is_file()
    out = tmp_path / "run"
    assert main(["train", "--preset", "nano", "--data", str(prepared), "--out", str(out), "--steps", "2",
                 "--model.context=64", "--train.val_every=0", "--no-progress"]) == 0
    assert (out / "checkpoints" / "step-000002" / "model.safetensors").is_file()
    capsys.readouterr()
    assert main(["tokenizer", "stats", str(prepared / "tokenizer.json"), "--text", f"en={corpus}"]) == 0
    assert capsys.readouterr().out.strip()


def test_damaged_or_foreign_checkpoints_are_refused(run_dir, tmp_path, capsys):
    import shutil

    ckpt = sorted((run_dir / "checkpoints").iterdir())[-1]
    foreign = tmp_path / "foreign"
    shutil.copytree(ckpt, foreign)
    config = json.loads((foreign / "config.json").read_text())
    config["model"]["d_model"] = 64  # the weights were trained at width 32
    (foreign / "config.json").write_text(json.dumps(config))
    assert "damaged: config.json has" in error_of(capsys, ["sample", str(foreign), "--length", "4"])  # the manifest
    (foreign / "manifest.json").unlink()  # a checkpoint without a manifest is checked against its model alone
    assert "another model" in error_of(capsys, ["sample", str(foreign), "--length", "4"])
    truncated = tmp_path / "truncated"
    shutil.copytree(ckpt, truncated)
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
    assert "damaged" in error_of(capsys, ["sample", str(truncated), "--length", "4"])
    (truncated / "config.json").write_text("{not json")
    assert "damaged" in error_of(capsys, ["sample", str(truncated), "--length", "4"])
