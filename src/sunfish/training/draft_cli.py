"""`sunfish draft TARGET --out RUN`: distil a small draft model for speculative decoding (training/draft.py).

`register(verbs)` adds the verb to the main parser; `dispatch(args)` runs it, or returns None for another verb.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sunfish.config import SECTIONS
from sunfish.flags import add_section, given

DRAFT_SECTIONS = {"train": None, "optim": None, "data": ("val_fraction",)}


def register(verbs: argparse._SubParsersAction) -> None:
    d = verbs.add_parser("draft", help="train a small draft model from a masked diffusion run by distillation "
                         "(for --sampler.speculate draft)",
                         description="The draft learns TARGET's predictions (KL at the masked positions of noised "
                                     "training windows) with TARGET's tokenizer and process; sample with "
                                     "`sunfish sample TARGET --sampler.speculate draft --sampler.draft RUN`.")
    d.add_argument("target", help="the masked diffusion run (or checkpoint) to distil")
    d.add_argument("--out", type=Path, required=True, help="the draft's run folder")
    d.add_argument("--size", default="half", help="the draft's network: half | quarter (of TARGET's width and "
                   "depth) or a preset name (its model section; default half)")
    d.add_argument("--data", nargs="+", help=".txt/.jsonl files or folders (default: the built-in story corpus)")
    d.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    d.add_argument("--no-progress", action="store_true", help="no progress bar")
    for name, fields in DRAFT_SECTIONS.items():
        add_section(d, SECTIONS[name], fields=fields, short=("steps", "save_every", "seed") if name == "train" else (),
                    note="defaults come from TARGET")
    d.set_defaults(config_sections=DRAFT_SECTIONS)


def dispatch(args: argparse.Namespace) -> int | None:
    if args.verb != "draft":
        return None
    from sunfish.training.draft import train_draft

    result = train_draft(args.target, args.out, size=args.size, data=args.data, tree=given(args, DRAFT_SECTIONS),
                         resume=args.resume, progress=not args.no_progress)
    print(f"done in {result.seconds:.0f} s: loss {result.final_loss:.4f}; checkpoint {result.checkpoint}; sample "
          f"with it: sunfish sample {args.target} --sampler.speculate draft --sampler.draft {args.out}")
    return 0
