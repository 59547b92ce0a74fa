"""Progress: a tqdm bar on a terminal; elsewhere one plain line per `every` units and a last one, no
carriage returns; nothing when disabled. Lines are counted, never timed."""

import io

from tqdm import tqdm

from sunfish.config import apply_tree, load_preset
from sunfish.data.pack import PackConfig
from sunfish.data.prepare import prepare
from sunfish.data.synth import generate_stories
from sunfish.progress import PlainProgress, progress
from sunfish.training.loop import train


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def run(stream, total=10, every=3, initial=0, steps=None, **kw) -> list[str]:
    """Count one unit at a time (or `steps` units per update) to `total`, then close; the lines written."""
    bar = progress(total=total, initial=initial, desc="train", every=every, stream=stream, **kw)
    for n in steps or [1] * (total - initial):
        bar.set_postfix(loss=f"{n:.3f}")
        bar.update(n)
    bar.close()
    return stream.getvalue().splitlines()


def test_a_plain_line_every_n_steps_and_a_final_one():
    stream = io.StringIO()
    lines = run(stream, total=10, every=3)
    assert "\r" not in stream.getvalue()
    assert [l.split()[1] for l in lines] == ["3/10", "6/10", "9/10", "10/10"]
    assert all(l.startswith("train ") and "loss=1.000" in l for l in lines)


def test_no_extra_final_line_when_the_last_step_was_shown():
    assert [l.split()[1] for l in run(io.StringIO(), total=9, every=3)] == ["3/9", "6/9", "9/9"]


def test_a_resumed_count_keeps_the_multiples_of_every():
    assert [l.split()[1] for l in run(io.StringIO(), total=12, every=5, initial=7)] == ["10/12", "12/12"]


def test_large_updates_write_one_line_per_crossing():
    lines = run(io.StringIO(), total=None, every=100, steps=[70] * 5, unit="B", unit_scale=True)
    assert [l.split()[1] for l in lines] == ["140B", "210B", "350B"]


def test_the_line_carries_the_latest_figures():
    stream = io.StringIO()
    bar = progress(total=4, desc="train", every=2, stream=stream)
    for step in range(1, 5):
        bar.set_postfix(loss=f"{step / 10:.3f}", tok_s=f"{1234.5 * step:,.0f}")
        bar.update(1)
    bar.close()
    first, second = stream.getvalue().splitlines()
    assert first.startswith("train 2/4 (50%) [") and first.endswith("] loss=0.200 tok_s=2,469")
    assert second.startswith("train 4/4 (100%) [") and second.endswith("] loss=0.400 tok_s=4,938")


def test_disabled_writes_nothing():
    stream = io.StringIO()
    assert run(stream, disable=True) == [] and stream.getvalue() == ""
    terminal = Terminal()
    assert run(terminal, disable=True) == []


def test_a_terminal_gets_a_tqdm_bar():
    bar = progress(total=3, desc="train", every=2, stream=Terminal())
    assert isinstance(bar, tqdm)
    bar.close()
    assert isinstance(progress(total=3, stream=io.StringIO()), PlainProgress)


def test_training_to_a_log_file_writes_one_line_per_log_step(tmp_path, corpus, capsys):
    cfg = apply_tree(load_preset("nano"), {
        "model": {"d_model": 32, "n_layers": 1, "n_heads": 2, "context": 32},
        "train": {"steps": 7, "batch_size": 4, "log_every": 3, "val_every": 0}, "data": {"val_fraction": 0.2}})
    train(cfg, run_dir=tmp_path / "run", data=[corpus], progress=True, log=lambda s: None)
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if l.startswith("train ")]
    assert "\r" not in err
    assert [l.split()[1] for l in lines] == ["3/7", "6/7", "7/7"]
    assert all(" loss=" in l and " lr=" in l and " tok_s=" in l for l in lines)


def test_prepare_to_a_log_file_writes_plain_lines(tmp_path, capsys):
    docs = tmp_path / "docs.txt"
    docs.write_text("\n\n".join(generate_stories("en", 40, 0)), encoding="utf-8")
    pack = PackConfig(seq_len=64, val_fraction=0.1, seed=0, shard_tokens=64 * 20)
    prepare([str(docs)], tmp_path / "out", pack=pack, train_vocab=300, workers=1, progress=True, log=lambda s: None)
    err = capsys.readouterr().err
    assert "\r" not in err
    assert {l.split()[0] for l in err.splitlines()} == {"clean", "pack"}
    assert err.splitlines()[-1].startswith("pack ") and "(100%)" in err.splitlines()[-1]
