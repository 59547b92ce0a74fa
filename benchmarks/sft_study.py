"""Instruction tuning study: masked diffusion against AR, EOS against PAD padding, with and without guidance.

    python benchmarks/sft_study.py [--out runs/sft-study] [--pretrain-steps 1500] [--sft-steps 300]
                                   [--seeds 0,1,2] [--rows 64] [--tasks qa,translate]

1. `sunfish data instruct` (3,000 rows, seed 0; translation from ../shared/corpora when present), keeping the
   tasks in `--tasks` (story writing has ~100-token replies, too long for this model's context by default).
2. One masked and one AR model of the same size (the quickstart preset with a 256-token context), pretrained on
   the built-in stories for `--pretrain-steps` (seed 0), scored before SFT through the plain chat template.
3. `sunfish sft` of each on the training rows for `--sft-steps`, one run per seed: masked with `--sft.pad=eos`
   and `--sft.pad=mask`, AR with EOS padding; the masked EOS runs also scored with guidance 1.0.
4. The instruct suite on the first `--rows` test rows, greedy, one step per token: QA accuracy per language,
   (in %), translation chrF per direction, and the answer-length error against the reference over all rows
   (mean |error| and signed mean, in tokens). The table gives the mean and the spread (min..max) over seeds; compute is equal within a
   row group (same steps, batch and sequence length). Results: OUT/results.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

CONTEXT = 256


def instruct_data(out: Path, tasks: set[str]) -> tuple[Path, Path]:
    """OUT/instruct/{train,test}.jsonl from `sunfish data instruct`, filtered to `tasks`."""
    from sunfish.cli import main

    folder = out / "instruct"
    if not (folder / "test.jsonl").exists():
        assert main(["data", "instruct", "--out", str(folder), "--n", "3000", "--seed", "0"]) == 0
    paths = []
    for split in ("train", "test"):
        rows = [r for r in (folder / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
                if json.loads(r)["check"].get("task") in tasks]
        path = folder / f"{split}_{'_'.join(sorted(tasks))}.jsonl"
        path.write_text("\n".join(rows) + "\n", encoding="utf-8")
        paths.append(path)
    return paths[0], paths[1]


def pretrain(out: Path, process: str, steps: int) -> Path:
    """A quickstart-sized model of `process` on the built-in stories (reused when done)."""
    import sunfish
    from sunfish.registry import SPECS

    run = out / f"base-{process}"
    if not (run / "checkpoints").exists():
        tree = {section: dict(values) for section, values in SPECS[process].train_flags.items()}
        tree.setdefault("model", {})["context"] = CONTEXT
        sunfish.train("quickstart", out=run, steps=steps, overrides=tree, progress=False, log=lambda s: None)
    return run


def fine_tune(out: Path, base: Path, data: Path, pad: str, seed: int, steps: int) -> Path:
    from sunfish.training.sft import sft

    run = out / f"sft-{base.name.removeprefix('base-')}-{pad}-s{seed}"
    if not (run / "checkpoints").exists():
        tree = {"train": {"steps": steps, "seed": seed, "batch_size": 8, "seq_len": CONTEXT, "val_every": 0},
                "optim": {"lr": 1e-3, "warmup_steps": 20}, "sft": {"pad": pad}}
        sft(base, [str(data)], out=run, tree=tree, progress=False, log=lambda s: None)
    return run


def score(run: Path, test: Path, rows: int, sampler: dict | None = None) -> dict:
    """{metric: value} of the instruct suite on `run`."""
    import sunfish
    from sunfish.config import EvalConfig
    from sunfish.eval.instruct import instruct_suite

    model = sunfish.load(run, device="cpu")
    result = instruct_suite(model, [test], EvalConfig(samples=rows, seed=0), log=lambda s: None, sampler=sampler)
    out, errors, biases, n = {}, 0.0, 0.0, 0
    for g in result["groups"]:
        for key, label in (("accuracy", "acc"), ("chrf", "chrF")):
            if g.get(key) is not None:
                out[f"{g['task']} {g['lang']} {label}"] = g[key] * (100 if key == "accuracy" else 1)
        if g["rows"] and g.get("length_error") is not None:
            errors, biases, n = errors + g["length_error"] * g["rows"], biases + g["length_bias"] * g["rows"], n + g["rows"]
    if n:
        out["|length error|"], out["length bias"] = errors / n, biases / n
    return out


def spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ({min(values):.2f}..{max(values):.2f})"


def table(results: dict[str, list[dict]]) -> str:
    keys = sorted({k for runs in results.values() for r in runs for k in r})
    lines = ["| setting | seeds | " + " | ".join(keys) + " |", "|---|---:|" + "---:|" * len(keys)]
    for name, runs in results.items():
        cells = [spread([r[k] for r in runs if k in r]) if any(k in r for r in runs) else "" for k in keys]
        lines.append(f"| {name} | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "sft-study")
    p.add_argument("--pretrain-steps", type=int, default=1500)
    p.add_argument("--sft-steps", type=int, default=300)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--tasks", default="qa,translate")
    args = p.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    train, test = instruct_data(args.out, set(args.tasks.split(",")))
    results: dict[str, list[dict]] = {}
    for process in ("masked", "ar"):
        base = pretrain(args.out, process, args.pretrain_steps)
        results[f"{process}, before SFT"] = [score(base, test, args.rows)]
        for pad in ("eos", "mask") if process == "masked" else ("eos",):
            runs = [fine_tune(args.out, base, train, pad, seed, args.sft_steps) for seed in seeds]
            results[f"{process}, SFT pad={pad}"] = [score(r, test, args.rows) for r in runs]
            if process == "masked" and pad == "eos":
                results[f"{process}, SFT pad={pad}, guidance 1"] = [score(r, test, args.rows, {"guidance": 1.0})
                                                                   for r in runs]
            print(table(results), flush=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
