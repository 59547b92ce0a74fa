"""The unigram plateau: the trainer's probe is logged and kept, the curricula do what they say, and the recipe the
presets use (a causal warm-up under the shifted layout) leaves the plateau where plain NELBO stays on it."""

import json

import pytest
import torch

from sunfish.config import AttentionKind, Layout, ProcessConfig, apply_tree, load_preset
from sunfish.checkpoint.files import list_checkpoints, read_state
from sunfish.data.sources import write_documents
from sunfish.data.synth import generate_stories
from sunfish.process.autoregressive import causal_warmup_loss, next_token_loss
from sunfish.process.curriculum import FINAL, Stage, stage_at
from sunfish.process.masked import sample_times
from sunfish.training.loop import train
from sunfish.training.plateau import EXIT_GAIN, PlateauExit, Probe

from conftest import cli_error, make_model, replace

QUIET = lambda s: None


def tiny_run(steps: int, seed: int, **tree) -> object:
    """2 layers x 64 over characters of the built-in stories, context 128, the probe every 25 steps."""
    cfg = load_preset("nano")
    cfg = apply_tree(cfg, {"model": {"d_model": 64, "n_layers": 2, "n_heads": 2, "context": 128},
                           "data": {"val_fraction": 0.05},
                           "train": {"steps": steps, "batch_size": 8, "seed": seed, "val_every": 25, "val_batches": 2,
                                     "log_every": 25, "threads": 1},
                           "optim": {"lr": 3e-3, "warmup_steps": 20}})
    return apply_tree(cfg, tree)


@pytest.fixture(scope="module")
def stories(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("stories") / "stories.txt"
    write_documents(path, generate_stories("both", 400, 0))
    return str(path)


def lines_of(run) -> list[dict]:
    return [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]


def test_probe_is_logged_at_each_validation_and_kept_in_checkpoints(tmp_path, corpus):
    run = tmp_path / "run"
    cfg = apply_tree(tiny_run(6, 0), {"model": {"d_model": 32, "context": 32}, "train": {"val_every": 3, "save_every": 3}})
    result = train(cfg, run_dir=run, data=[corpus], progress=False, log=QUIET)
    validated = [l for l in lines_of(run) if "val_loss" in l]
    assert [l["step"] for l in validated] == [3, 6]
    for line in validated:
        assert {"ctx_gain", "ce_low", "ce_high"} <= set(line)
        assert line["ctx_gain"] == pytest.approx(1 - line["ce_low"] / line["ce_high"], abs=1e-4)
    assert result.ctx_gain == pytest.approx(validated[-1]["ctx_gain"], abs=1e-5)
    exits = [l["plateau_exit"] for l in lines_of(run) if "plateau_exit" in l]
    assert exits == ([] if result.plateau_exit is None else [result.plateau_exit])
    assert all("plateau_exit" in read_state(c).extra for c in list_checkpoints(run))


def test_exit_needs_two_passes_in_a_row_and_is_the_first_of_them():
    track, high, low = PlateauExit(), Probe(ce_low=2.0, ce_high=4.0), Probe(ce_low=3.9, ce_high=4.0)
    assert [track.update(s, p) for s, p in [(50, high), (100, low), (150, high), (200, high), (250, low)]] == \
        [False, False, False, True, False]
    assert track.step == 150  # the spike at 50 did not count; the exit stays once found
    assert PlateauExit.from_state(PlateauExit(None, 300, 1).state()) == PlateauExit(None, 300, 1)


def test_autoregressive_runs_have_no_probe(tmp_path, corpus):
    cfg = apply_tree(tiny_run(3, 0), {"model": {"d_model": 32, "context": 32, "attention": "causal"},
                                      "process": {"kind": "ar"}, "train": {"val_every": 3}})
    result = train(cfg, run_dir=tmp_path / "ar", data=[corpus], progress=False, log=QUIET)
    assert result.ctx_gain is None and result.plateau_exit is None
    assert not any("ctx_gain" in l for l in lines_of(tmp_path / "ar"))


def test_stages_of_the_curricula():
    p = ProcessConfig(causal_warmup=0.1, mask_curriculum=0.5, mask_curriculum_start=0.2, block_size=16,
                      block_curriculum=0.4, block_curriculum_start=1)  # of 100 steps: 10, 50 and 40
    stage = lambda s: stage_at(p, s, 100)
    assert stage(0).causal and stage(9).causal and not stage(10).causal
    assert stage(10).t_max == pytest.approx(0.2 + 0.8 * 10 / 50) and stage(50).t_max == 1.0
    assert [stage(s).block_size for s in (10, 20, 30, 39, 40)] == [2, 4, 8, 15, 0]  # 0: the final size
    assert stage_at(p, 1, 20).causal and not stage_at(p, 2, 20).causal  # lengths follow the run's
    assert stage_at(ProcessConfig(), 0, 100) == FINAL
    assert stage_at(p, 0, 100, reads={"mask_curriculum"}) == Stage(t_max=0.2)  # curricula the process does not read


def test_mask_curriculum_draws_times_below_t_max():
    t = sample_times(1000, ProcessConfig(), torch.Generator().manual_seed(0), t_max=0.3)
    assert float(t.min()) >= 1e-3 and float(t.max()) <= 0.3 and float(t.max()) > 0.29
    grid = sample_times(1000, ProcessConfig(discrete_steps=10), torch.Generator().manual_seed(0), t_max=0.3)
    assert {round(v, 6) for v in grid.tolist()} == {0.1, 0.2, 0.3}


def test_causal_warmup_loss_is_the_autoregressive_loss_in_either_layout(tiny_model_cfg):
    x = torch.randint(0, 32, (3, 20), generator=torch.Generator().manual_seed(1))
    causal = make_model(replace(tiny_model_cfg, attention=AttentionKind.CAUSAL))
    bidirectional = make_model(tiny_model_cfg)
    shifted = make_model(replace(tiny_model_cfg, layout=Layout.SHIFTED))
    reference = next_token_loss(causal, x).loss
    for model in (bidirectional, shifted):  # the same weights (seed 0), another attention or layout
        assert torch.allclose(causal_warmup_loss(model, x).loss, reference, atol=1e-6)


@pytest.mark.parametrize("flags, says", [
    (["--process", "block", "--process.causal_warmup=0.1"], "process.causal_warmup does nothing for block diffusion"),
    (["--process.mask_curriculum_start=0.3"], "does nothing without process.mask_curriculum > 0"),
    (["--process.block_curriculum=0.5"], "process.block_curriculum does nothing for masked diffusion"),
    (["--objective", "ar", "--process.mask_curriculum=0.5"], "process.mask_curriculum does nothing for autoregressive"),
    (["--process", "block", "--process.block_curriculum=0.5", "--process.block_curriculum_start=32"],
     "must not exceed process.block_size"),
    (["--process.causal_warmup=0.95"], "is out of range"),
])
def test_curriculum_knobs_that_do_nothing_are_refused(capsys, tmp_path, flags, says):
    assert says in cli_error(capsys, ["train", "--preset", "nano", *flags, "--out", str(tmp_path / "r")])


@pytest.mark.parametrize("process", ["masked", "block", "ar", "continuous", "flow"])
def test_every_process_trains_from_the_quickstart_preset(process):
    """The preset's shifted layout and causal warm-up are masked diffusion's recipe: `--process NAME` gives the other
    processes the layout they need, and no curriculum their objective does not read."""
    from sunfish.cli import build_parser, train_config
    from sunfish.registry import spec_of
    from sunfish.validate import validate

    cfg, given = train_config(build_parser().parse_args(["train", "--preset", "quickstart", "--process", process]))
    spec = validate(cfg, given)
    reads = spec.process_fields
    assert [stage_at(cfg.process, s, cfg.train.steps, reads).causal for s in (0, cfg.train.steps - 1)] == \
        [process == "masked", False]
    assert spec is spec_of(cfg.process)


def test_the_presets_recipe_leaves_the_plateau_where_plain_nelbo_does_not(tmp_path, stories):
    """Seeded: on this config plain NELBO stays on the plateau (ctx_gain < 0.02) for 200 steps; the causal
    warm-up under the shifted layout (the quickstart preset's recipe) is off it by the first validation pass."""
    recipe = load_preset("quickstart")
    assert recipe.process.causal_warmup > 0 and recipe.model.layout is Layout.SHIFTED
    plain = train(tiny_run(200, 1), run_dir=tmp_path / "plain", data=[stories], progress=False, log=QUIET)
    warm = train(tiny_run(200, 1, process={"causal_warmup": 0.125}, model={"layout": "shifted"}),
                 run_dir=tmp_path / "warm", data=[stories], progress=False, log=QUIET)
    assert plain.plateau_exit is None and plain.ctx_gain < EXIT_GAIN
    assert warm.plateau_exit is not None and warm.plateau_exit <= 50
    assert warm.ctx_gain > 2 * EXIT_GAIN
    assert warm.final_val_loss < plain.final_val_loss


def test_the_study_script_runs_and_writes_its_block(tmp_path):
    """benchmarks/plateau_study.py at its smoke size: one table row per recipe and seed, the marked doc block, and
    a second call reuses the runs instead of training them again."""
    from conftest import load_benchmark

    study = load_benchmark("plateau_study")
    threads = torch.get_num_threads()
    doc = tmp_path / "results.md"
    argv = ["--size", "quick", "--steps", "12", "--seeds", "0,1", "--corpora", "stories", "--only",
            "masked NELBO;causal warm-up, shifted", "--val-every", "4", "--threads", "1", "--out", str(tmp_path / "runs"),
            "--doc", str(doc)]
    try:
        assert study.main(argv) == 0
        first = json.loads((tmp_path / "runs" / "results.json").read_text())
        assert study.main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    assert json.loads((tmp_path / "runs" / "results.json").read_text()) == first
    assert sorted(first) == [f"stories/{n}/{s}" for n in ("AR", "causal warm-up, shifted", "masked NELBO") for s in (0, 1)]
    text = doc.read_text()
    assert text.count("<!-- plateau_study quick 12: begin -->") == 1 and "## Leaving the unigram plateau" in text
    rows = [l for l in text.splitlines() if l.startswith("| ") and not l.startswith("| recipe")]
    assert [r.split(" | ")[0] for r in rows] == ["| AR", "| masked NELBO", "| causal warm-up, shifted"]
