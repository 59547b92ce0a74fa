"""AR -> diffusion adaptation experiment: does starting from a causal model (and aligning with it) converge faster?

    python benchmarks/adaptation.py [--quick] [--pretrain-steps 1200] [--steps 400] [--out runs/adaptation]

1. Pretrain a small causal Sunfish model (`--objective ar`) on ../shared/corpora/en_tinystories.
2. Train four diffusion models for the same number of steps, same data windows, optimiser and seed:
   (a) from scratch (random init, bidirectional), (b) adapted from the causal model (flip + masked NELBO),
   (c) (b) + representation alignment against the frozen causal model (teacher cache on),
   (d) (c) + trajectory-guided masking (commit orders recorded by the final model of (b), mixed 50/50 with
   random masks).
3. Report the held-out masked NELBO (the trainer's validation loss: fixed windows, fixed noise) per step,
   the final NELBO, and the first validation step at which each arm reaches the from-scratch final NELBO;
   write docs/results_adaptation.md with the table, the plot and this command.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path

from sunfish.adapt.run import adapt, adapt_config, adapt_corpus, base_tokenizer, record_trajectories
from sunfish.config import RunConfig, apply_tree
from sunfish.training.loop import train

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "corpora" / "en_tinystories" / "tinystories_train_head.jsonl"
ARMS = ("scratch", "adapt", "adapt+align", "adapt+align+traj")


def base_config(args) -> RunConfig:
    model = {"d_model": args.width, "n_layers": args.layers, "n_heads": 4, "context": args.seq_len}
    return apply_tree(RunConfig(preset="adaptation-benchmark"), {
        "model": model,
        "data": {"tokenizer": "bpe", "bpe_vocab": args.vocab, "val_fraction": 0.03},
        "train": {"batch_size": args.batch, "seq_len": args.seq_len, "log_every": args.val_every,
                  "val_every": args.val_every, "val_batches": args.val_batches, "seed": 0},
        "optim": {"lr": args.lr, "warmup_steps": max(args.steps // 20, 2)},
    })


def pretrain(args, out: Path, log) -> Path:
    cfg = apply_tree(base_config(args), {"process": {"kind": "ar"}, "model": {"attention": "causal"},
                                         "train": {"steps": args.pretrain_steps, "val_every": 0},
                                         "optim": {"warmup_steps": max(args.pretrain_steps // 20, 2)}})
    run = out / "causal"
    if not (run / "checkpoints").is_dir():
        train(cfg, run_dir=run, data=[str(CORPUS)], progress=False, log=log)
    return run


def arm_config(args, arm: str, causal: Path, out: Path) -> RunConfig:
    cfg = apply_tree(base_config(args), {"train": {"steps": args.steps}})
    if arm == "scratch":
        return cfg
    adapt_flags = {"layout": args.layout}
    if arm != "adapt":
        adapt_flags |= {"align_weight": args.align_weight, "teacher_cache": str(out / "teacher_cache")}
    if arm == "adapt+align+traj":
        adapt_flags |= {"trajectories": str(out / "trajectories.safetensors"), "traj_mix": 0.5,
                        "traj_min_ratio": 0.05, "traj_max_ratio": 0.95}
    return adapt_config(causal, apply_tree(cfg, {"adapt": adapt_flags}))


def run_arm(args, arm: str, causal: Path, out: Path, log) -> list[dict]:
    run = out / arm
    shutil.rmtree(run, ignore_errors=True)
    cfg = arm_config(args, arm, causal, out)
    began = time.perf_counter()
    if arm == "scratch":
        # the same tokenizer and fixed windows as the adapted arms
        reference = adapt_config(causal, cfg)
        corpus = adapt_corpus(reference, [str(CORPUS)], base_tokenizer(reference))
        train(cfg, run_dir=run, data=[str(CORPUS)], progress=False, log=log, corpus=corpus)
    else:
        if arm == "adapt+align+traj" and not (out / "trajectories.safetensors").is_file():
            record_trajectories(out / "adapt", [str(CORPUS)], out / "trajectories.safetensors",
                                per_step=args.traj_per_step, batch_size=32, limit=args.traj_limit, log=log)
        adapt(cfg, run_dir=run, data=[str(CORPUS)], progress=False, log=log)
    seconds = time.perf_counter() - began
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if l.strip()]
    curve = [{"step": r["step"], "val": r["val_loss"]} for r in rows if "val_loss" in r]
    return [{"arm": arm, "seconds": seconds, **c} for c in curve]


def steps_to_reach(curve: list[dict], target: float) -> int | None:
    return next((c["step"] for c in curve if c["val"] <= target), None)


def summarise(curves: dict[str, list[dict]]) -> list[dict]:
    target = curves["scratch"][-1]["val"]
    scratch_steps = steps_to_reach(curves["scratch"], target)
    adapt_target = curves["adapt"][-1]["val"]
    adapt_steps = steps_to_reach(curves["adapt"], adapt_target)
    table = []
    for arm, curve in curves.items():
        reach = steps_to_reach(curve, target)
        reach_adapt = steps_to_reach(curve, adapt_target) if arm != "scratch" else None
        table.append({"arm": arm, "first_val": curve[0]["val"], "final_val": curve[-1]["val"], "steps_to_scratch_final": reach,
                      "speedup": (scratch_steps / reach) if reach else None, "steps_to_adapt_final": reach_adapt,
                      "speedup_vs_adapt": (adapt_steps / reach_adapt) if reach_adapt else None,
                      "seconds": curve[-1]["seconds"]})
    return table


def plot(curves: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for arm, curve in curves.items():
        ax.plot([c["step"] for c in curve], [c["val"] for c in curve], marker="o", markersize=3, label=arm)
    ax.axhline(curves["scratch"][-1]["val"], color="grey", linestyle=":", linewidth=1, label="scratch final")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("held-out masked NELBO (nats / token)")
    ax.set_title("AR -> diffusion adaptation vs diffusion from scratch")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(table: list[dict], args, command: str, plot_name: str, pretrain_s: float) -> str:
    lines = ["| arm | NELBO at first eval | final NELBO | steps to reach scratch's final | speed-up vs scratch "
             "| steps to reach adapt's final | speed-up vs adapt | wall time (s) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    never = f"not within {args.steps}"
    for r in table:
        reach = r["steps_to_scratch_final"] if r["steps_to_scratch_final"] is not None else never
        speed = f"{r['speedup']:.1f}x" if r["speedup"] else "-"
        reach_a = "-" if r["arm"] == "scratch" else (r["steps_to_adapt_final"] or never)
        speed_a = f"{r['speedup_vs_adapt']:.2f}x" if r["speedup_vs_adapt"] else "-"
        lines.append(f"| {r['arm']} | {r['first_val']:.3f} | {r['final_val']:.3f} | {reach} | {speed} | {reach_a} | {speed_a} "
                     f"| {r['seconds']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a smoke run: tiny model, a few dozen steps")
    p.add_argument("--pretrain-steps", type=int, default=1200)
    p.add_argument("--steps", type=int, default=400, help="optimiser steps of every diffusion arm")
    p.add_argument("--val-every", type=int, default=20)
    p.add_argument("--val-batches", type=int, default=4, help="held-out batches per evaluation")
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--vocab", type=int, default=1024)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--layout", default="shifted", choices=["same", "shifted"])
    p.add_argument("--align-weight", type=float, default=1.0)
    p.add_argument("--traj-per-step", type=int, default=8, help="positions committed per step when recording trajectories")
    p.add_argument("--traj-limit", type=int, default=0, help="record trajectories of the first N training windows (0 = all)")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "adaptation")
    p.add_argument("--doc", type=Path, default=ROOT / "docs" / "results_adaptation.md")
    args = p.parse_args(argv)
    if args.quick:
        args.pretrain_steps, args.steps, args.val_every, args.width, args.layers = 40, 20, 5, 64, 2
        args.seq_len, args.batch, args.vocab, args.traj_limit, args.traj_per_step = 64, 8, 512, 64, 16
        args.out = args.out.with_name(args.out.name + "-quick")
        args.doc = args.out / "results_adaptation.md"
    if not CORPUS.is_file():
        print(f"error: {CORPUS} is absent; this experiment reads ../shared/corpora", file=sys.stderr)
        return 2
    command = "python benchmarks/adaptation.py " + " ".join(argv if argv is not None else sys.argv[1:])
    args.out.mkdir(parents=True, exist_ok=True)
    quiet = lambda s: None
    began = time.perf_counter()
    causal = pretrain(args, args.out, quiet)
    pretrain_s = time.perf_counter() - began
    print(f"causal model: {causal} ({pretrain_s:.0f} s)", flush=True)
    curves: dict[str, list[dict]] = {}
    for arm in ARMS:
        curves[arm] = run_arm(args, arm, causal, args.out, quiet)
        print(f"{arm}: final held-out NELBO {curves[arm][-1]['val']:.3f} ({curves[arm][-1]['seconds']:.0f} s)", flush=True)
    table = summarise(curves)
    (args.out / "curves.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                       "curves": curves, "table": table}, indent=1))
    args.doc.parent.mkdir(parents=True, exist_ok=True)
    plot_path = args.doc.with_name("results_adaptation.png")
    plot(curves, plot_path)
    body = markdown(table, args, command, plot_path.name, pretrain_s)
    print(body)
    write_doc(args, body, command, plot_path.name, pretrain_s, curves)
    return 0


def write_doc(args, table: str, command: str, plot_name: str, pretrain_s: float, curves) -> None:
    steps = ", ".join(str(c["step"]) for c in curves["scratch"])
    text = f"""# AR -> diffusion adaptation: convergence against diffusion from scratch

Command: `{command.strip()}` ({time.strftime('%Y-%m-%d')}, CPU, shared with other jobs: wall times are noisy).

Setup: a causal Sunfish model ({args.layers} layers, width {args.width}, {args.vocab}-token BPE, context
{args.seq_len}) pretrained for {args.pretrain_steps} steps of {args.batch} x {args.seq_len} tokens on
`../shared/corpora/en_tinystories` ({pretrain_s:.0f} s). Then four diffusion models of the same architecture,
each {args.steps} steps with the same windows, seed, AdamW (lr {args.lr:g}, cosine) and batch: (a) from
scratch; (b) adapted from the causal model (bidirectional flip, {args.layout} layout, masked NELBO); (c) (b) +
representation alignment with the frozen causal model on all layers (weight {args.align_weight:g}, teacher
states kept in the on-disk cache that `sunfish adapt cache-teacher` writes, here filled during the run); (d) (c) + trajectory-guided masking
(commit orders of {'every training window' if not args.traj_limit else f'the first {args.traj_limit} training windows'} decoded by (b)'s final model, {args.traj_per_step} tokens per step,
entropy order; half the sequences masked along them with ratio ~ U[0.05, 0.95]). The NELBO is the trainer's
validation loss: plain masked NELBO on {args.val_batches} fixed held-out batches with fixed noise, evaluated at steps {steps}.

{table}

![held-out NELBO per step]({plot_name})

"Steps to reach scratch's final" is the first evaluated step whose held-out NELBO is at or below the from-scratch
model's NELBO after {args.steps} steps; the speed-up is the ratio of the two step counts. Arm (d) uses
trajectories from (b)'s trained model, so it had more compute behind it (as in d3LLM, where a trained
dLLM provides the trajectories).
"""
    args.doc.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
