"""`sunfish distill TEACHER --out RUN`: the command line over `sunfish.distill` (distillation/run.py).

`register(verbs)` adds the verb to the main parser; `dispatch(args)` runs it and returns its exit code, or None
for a verb that is not ours. Library work is imported inside the command so `--help` stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from sunfish.config import SECTIONS, DistillConfig, TrainConfig
from sunfish.flags import add_section, given

DISTILL_SECTIONS = {"train": tuple(f.name for f in dataclasses.fields(TrainConfig) if f.name != "steps"),
                    "optim": None, "data": ("synth_lang", "synth_docs", "val_fraction"),
                    "distill": tuple(f.name for f in dataclasses.fields(DistillConfig) if f.name != "teacher")}


def register(verbs: argparse._SubParsersAction) -> None:
    d = verbs.add_parser("distill", help="step distillation of a masked or block run: fewer steps at the teacher's "
                         "quality (sdtt | trajectory)",
                         description="Starts from TEACHER's weights and trains the student to decode in fewer steps: "
                                     "sdtt (its one step matches the teacher's two, rounds halve the steps) or "
                                     "trajectory (the teacher's greedy decodings with certainty forcing, for threshold "
                                     "decoding). The run lasts distill.rounds x distill.round_steps steps and samples "
                                     "like any masked or block run.")
    d.add_argument("teacher", help="the trained masked or block run (or checkpoint) to distil")
    d.add_argument("--out", type=Path, required=True, help="the distilled run folder")
    d.add_argument("--data", nargs="+", help=".txt/.jsonl files or folders, or a `sunfish data prepare` folder made "
                   "with the teacher's tokenizer (default: the built-in story corpus)")
    d.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    d.add_argument("--no-progress", action="store_true", help="no progress bar")
    for name, fields in DISTILL_SECTIONS.items():
        add_section(d, SECTIONS[name], fields=fields, short=("save_every", "seed") if name == "train" else (),
                    defaults=name == "distill", note="defaults come from TEACHER" if name != "distill" else "")
    d.set_defaults(config_sections=DISTILL_SECTIONS)


def cmd_distill(args: argparse.Namespace) -> int:
    from sunfish.api import distill

    result = distill(args.teacher, out=args.out, data=args.data, overrides=given(args, DISTILL_SECTIONS),
                     resume=args.resume, progress=not args.no_progress)
    val = f", val loss {result.final_val_loss:.4f}" if result.final_val_loss is not None else ""
    print(f"done in {result.seconds:.0f} s: distillation loss {result.final_loss:.4f}{val}; checkpoint "
          f"{result.checkpoint}; sample it: sunfish sample {args.out} --prompt \"...\"")
    return 0


def dispatch(args: argparse.Namespace) -> int | None:
    """Run the verb if it is ours and return its exit code; None otherwise."""
    if args.verb == "distill":
        return cmd_distill(args)
    return None
