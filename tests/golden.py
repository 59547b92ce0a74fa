"""Golden outputs: what `train`, `sample`, `infill` and `eval --suite likelihood` print for fixed seeds on
the nano preset, for every process kind. Recorded once before the architecture refactor (issue 13) and
compared by tests/test_golden.py, so a refactor that changes a loss or a sampled token fails.

    python tests/golden.py --record      # rewrite tests/golden/outputs.json (only when a change is intended)
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
from pathlib import Path

GOLDEN = Path(__file__).with_name("golden") / "outputs.json"

# model name -> extra `train` flags (on top of the nano preset, 30 steps, seed 0)
MODELS = {
    "masked": [],
    "ar": ["--objective", "ar"],
    "block": ["--process.block_size=16", "--model.time_cond=none"],
    "continuous": ["--process", "continuous"],
    "flow": ["--process", "flow"],
}
TRAIN = ["--preset", "nano", "--steps", "30", "--seed", "0", "--no-progress", "--train.val_every=10",
         "--train.log_every=5", "--train.batch_size=8"]

# (case name, model, verb, arguments after the run folder)
CASES = [
    ("sample-greedy", "masked", "sample", ["--prompt", "Once upon a time", "--length", "24", "--steps", "24"]),
    ("sample-temp", "masked", "sample", ["--prompt", "Once", "--length", "32", "--steps", "16", "--temperature", "0.8",
                                         "--seed", "3", "--top-p", "0.9"]),
    ("sample-fast", "masked", "sample", ["--prompt", "The dog", "--length", "32", "--block-length", "8",
                                         "--rule", "threshold", "--threshold", "0.3", "--cache", "dual"]),
    ("sample-remask", "masked", "sample", ["--prompt", "One day", "--length", "24", "--steps", "24",
                                           "--remask", "conf", "--remask-eta", "0.2", "--temperature", "0.5"]),
    ("sample-unprompted", "masked", "sample", ["--length", "24", "--steps", "12", "--policy", "margin",
                                               "--temperature", "1.0", "--seed", "7"]),
    ("infill", "masked", "infill", ["--text", "Once upon a [MASK:6] there was a [MASK:4] cat.", "--seed", "2"]),
    ("eval", "masked", "eval", []),
    ("sample", "ar", "sample", ["--prompt", "Once upon a time", "--length", "24", "--temperature", "0.7", "--seed", "1"]),
    ("eval", "ar", "eval", []),
    ("sample", "block", "sample", ["--prompt", "Once upon a time", "--length", "32", "--steps", "32",
                                   "--temperature", "0.7", "--seed", "1"]),
    ("eval", "block", "eval", []),
    ("sample", "continuous", "sample", ["--prompt", "Once", "--length", "16", "--steps", "8", "--seed", "1"]),
    ("eval", "continuous", "eval", []),
    ("sample", "flow", "sample", ["--prompt", "Once", "--length", "16", "--steps", "8", "--seed", "1"]),
]
EVAL = ["--suite", "likelihood", "--eval.max_tokens=1500", "--eval.max_rounds=4", "--eval.min_rounds=2",
        "--eval.batch_size=8", "--json"]


def _run(argv: list[str]) -> str:
    """`sunfish ARGV` in this process; its standard output (a failure raises)."""
    from sunfish.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(argv)
    if code != 0:
        raise RuntimeError(f"sunfish {' '.join(argv)} exited with {code}")
    return out.getvalue()


def _train_record(run_dir: Path) -> list[dict]:
    keep = ("step", "loss", "grad_norm", "val_loss")
    lines = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: line[k] for k in keep if k in line} for line in lines]


def produce(workdir: Path) -> dict:
    """Train every model, run every case; returns {"train/MODEL": [...], "MODEL/CASE": {...}}."""
    workdir.mkdir(parents=True, exist_ok=True)
    corpus, held = workdir / "corpus.txt", workdir / "held.txt"
    _run(["data", "synth", "--lang", "both", "--docs", "300", "--seed", "0", "--out", str(corpus)])
    _run(["data", "synth", "--lang", "en", "--docs", "20", "--seed", "9", "--out", str(held)])
    out: dict = {}
    for name, flags in MODELS.items():
        run = workdir / name
        _run(["train", *TRAIN, *flags, "--data", str(corpus), "--out", str(run)])
        out[f"train/{name}"] = _train_record(run)
    for case, model, verb, args in CASES:
        run = str(workdir / model)
        if verb == "eval":
            body = json.loads(_run(["eval", run, "--data", str(held), *EVAL]))["suites"]["likelihood"]
            out[f"{model}/{case}"] = {k: body[k] for k in ("nats_per_token", "se", "rounds", "tokens")}
        else:
            body = json.loads(_run([verb, run, *args, "--json"]))
            out[f"{model}/{case}"] = {k: body[k] for k in ("text", "steps", "nfe", "fills") if k in body}
    return out


if __name__ == "__main__":
    if sys.argv[1:] != ["--record"]:
        sys.exit(__doc__)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        result = produce(Path(tmp))
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {GOLDEN}")
