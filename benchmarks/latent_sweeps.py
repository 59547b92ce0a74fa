"""The latent processes' settings studied beside benchmarks/compare_processes.py (docs/results_processes.md): Cola's
KL weight, LDLM's decoder-input noise and an LDLM with a 4-layer DiT, each at the study's budget, seeds and code,
and the prompted LDLM and Colas that `sunfish bench sample --latent` needs (it continues prompts).

    python benchmarks/latent_sweeps.py --steps 1500 --out runs/processes --only "Cola, KL weight 0.01;..."
    python benchmarks/latent_sweeps.py --steps 4500 --out runs/processes4500 --only "LDLM, DiT 4 layers"
    python benchmarks/latent_sweeps.py --steps 1500 --out runs/processes --prompted runs/bench21
    python benchmarks/latent_sweeps.py --tables runs/processes:1500 runs/processes4500:4500

Run it after compare_processes.py on the same --out: each seed's AR run is the frozen base, and the results go to
the same results.json under names of their own, which the study's table leaves out. Without --only every variant
runs for its seeds. --tables prints the two tables of the doc from results already there.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare_processes as cp  # noqa: E402
from multiseed import spread  # noqa: E402

from sunfish.config import apply_tree  # noqa: E402

LDLM, COLA, COLA_01 = ("LDLM (noise 0.1, 32 latents of the frozen AR)", "Cola (KL 1e-3, 32 VAE latents of the frozen AR)",
                       "Cola (KL 0.1, 32 VAE latents of the frozen AR)")
LDLM_1 = "LDLM (noise 1.0, 32 latents of the frozen AR)"
VARIANTS = {  # name -> (the study's process it changes, the change, seeds)
    "Cola, KL weight 0.01": (COLA, {"process": {"kl_weight": 0.01}}, (0, 1, 2)),
    "Cola, KL weight 1": (COLA, {"process": {"kl_weight": 1.0}}, (0,)),
    "LDLM, decoder noise 0.5": (LDLM, {"process": {"decoder_noise": 0.5}}, (0,)),
    "Cola, KL 0.1, noise 1.0": (COLA_01, {"process": {"decoder_noise": 1.0}}, (0, 1, 2)),
    "LDLM, DiT 4 layers": (LDLM, {"model": {"n_layers": 4}}, (0,)),
}
PROMPTED = {"ldlm-prompted": LDLM, "cola-prompted": COLA, "cola01-prompted": COLA_01}  # seed 0, prompt_prob 0.5
KL_ROWS = [("1e-3 (the first row)", COLA), ("1e-2", "Cola, KL weight 0.01"), ("0.1 (the second row)", COLA_01),
           ("1", "Cola, KL weight 1")]
NOISE_ROWS = [("LDLM, 0.1 (the first row)", LDLM), ("LDLM, 0.5", "LDLM, decoder noise 0.5"),
              ("LDLM, 1.0 (the second row)", LDLM_1), ("Cola KL 0.1, 0.1", COLA_01), ("Cola KL 0.1, 1.0", "Cola, KL 0.1, noise 1.0")]


def merged(base: dict, change: dict) -> dict:
    return {section: {**base.get(section, {}), **change.get(section, {})} for section in {*base, *change}}


def study_of(args: argparse.Namespace, seed: int, only: str | None = None) -> cp.Study:
    """The compare_processes study these arguments name (never retraining its AR runs)."""
    argv = ["--steps", str(args.steps), "--threads", str(args.threads), "--out", str(args.out), "--seeds", str(seed)]
    argv += (["--quick"] if args.quick else []) + (["--only", only] if only else [])
    return dataclasses.replace(cp.prepare(cp.parse_args(argv)), rerun=False)


def run_variant(name: str, args: argparse.Namespace) -> None:
    """Train and evaluate variant `name` for each of its seeds, as compare_processes.run_seed does a process."""
    process, change, seeds = VARIANTS[name]
    cp.PROCESSES[name] = merged(cp.PROCESSES[process], change)
    for seed in seeds:
        cp.run_seed(study_of(args, seed, name), seed, lambda results: None)


def train_prompted(args: argparse.Namespace) -> None:
    """The study's seed-0 LDLM and Colas with prompts (process.prompt_prob 0.5), for `bench sample --latent`."""
    study, ar = study_of(args, 0), args.out / "seed0" / "AR"
    budget = cp.Budget(study, cp.base_config(study.size, args.steps, 0, args.threads), ar)
    for folder, name in PROMPTED.items():
        n = budget.steps(name)
        cfg = cp.config_for(name, cp.base_config(study.size, n, 0, args.threads), n, ar)
        cp.train_run(apply_tree(cfg, {"process": {"prompt_prob": 0.5}}), args.prompted / folder, study.corpus)
        print(f"{args.prompted / folder}: {name} with prompts, {n} steps")


def table(budgets: list[tuple[Path, str]], rows: list[tuple[str, str]], what: str) -> str:
    """A Markdown table of reconstruction, generative perplexity and distinct-2 of `rows` (label, results name)."""
    out = [f"| budget | {what} | seeds | reconstruction | gen. ppl @16 | gen. ppl @64 | gen. ppl @256 | distinct-2 @64 |",
           "|---|---|---|---|---|---|---|---|"]
    for folder, steps in budgets:
        found = {s: json.loads((folder / f"seed{s}" / "results.json").read_text(encoding="utf-8")) for s in (0, 1, 2)
                 if (folder / f"seed{s}" / "results.json").exists()}
        for label, name in rows:
            runs = {s: r[name] for s, r in found.items() if name in r}
            if not runs:
                continue
            cells = [spread([r["likelihood"]["reconstruction_accuracy"] for r in runs.values()], ".3f")]
            cells += [spread([r["generation"][k]["gen_perplexity"] for r in runs.values()], ",.0f")
                      if all(len(r["generation"]) > k for r in runs.values()) else "—" for k in range(3)]  # --quick: 2
            cells.append(spread([r["generation"][1]["distinct_2"] for r in runs.values()], ".2f"))
            out.append(f"| {steps} steps | {label} | {', '.join(map(str, runs))} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, help="the study's budget (compare_processes --steps)")
    p.add_argument("--out", type=Path, help="the study's --out (its seeds' AR runs and results.json)")
    p.add_argument("--only", help=f"semicolon-separated variants (default all): {'; '.join(VARIANTS)}")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="the study's --quick sizes (a smoke run)")
    p.add_argument("--prompted", type=Path, help="train the prompted LDLM and Colas of seed 0 into this folder instead")
    p.add_argument("--tables", nargs="+", metavar="OUT:STEPS", help="print the KL and noise tables of these studies")
    args = p.parse_args(argv)
    if args.tables:
        budgets = [(Path(t.rsplit(":", 1)[0]), t.rsplit(":", 1)[1]) for t in args.tables]
        print(table(budgets, KL_ROWS, "KL weight"), "", table(budgets, NOISE_ROWS, "process, decoder noise"), sep="\n")
        return 0
    if args.steps is None or args.out is None:
        p.error("give --steps and --out (the study's), or --tables")
    torch.set_num_threads(args.threads)
    if args.prompted:
        train_prompted(args)
        return 0
    names = [n.strip() for n in args.only.split(";")] if args.only else list(VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        p.error(f"unknown variant(s) {', '.join(unknown)}; choose from {'; '.join(VARIANTS)}")
    for name in names:
        run_variant(name, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
