"""`sunfish adapt`: turn a causal LM into a diffusion LM, and its helper verbs.

    sunfish adapt BASE_DIR --data ... --out RUN_DIR [--lora --lora-rank R] [--steps N] [--section.field=value ...]
    sunfish adapt cache-teacher BASE_DIR --data ... --out CACHE_DIR [--adapt.align_layers=...]
    sunfish adapt trajectories RUN_DIR --data ... --out FILE.safetensors [--per-step K]
    sunfish adapt export RUN_DIR --out HF_DIR

`register(verbs)` adds the `adapt` parser (every config field a flag, sunfish/flags.py); `dispatch(args)` runs it.
Library work is imported inside each command so `sunfish --help` stays fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sunfish.config import SECTIONS
from sunfish.flags import add_section, given, given_keys

ACTIONS = ("cache-teacher", "trajectories", "export")
ADAPT_SECTIONS = ("model", "process", "optim", "train", "data", "sampler", "adapt")
SHORT = {"adapt": ("lora", "lora_rank", "qlora", "layout"), "train": ("steps", "save_every", "seed", "notify")}


def register(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser(
        "adapt", help="adapt a causal LM (Hugging Face folder or `--objective ar` run) into a diffusion LM",
        description="sunfish adapt BASE_DIR --data ... --out RUN_DIR | adapt cache-teacher BASE_DIR ... | "
                    "adapt trajectories RUN_DIR ... | adapt export RUN_DIR --out DIR",
        epilog="Any config field: --section.field=value, e.g. --adapt.align_weight=1.0 --adapt.layout=same")
    p.add_argument("first", metavar="BASE_DIR|ACTION", help=f"the base model folder, or one of {', '.join(ACTIONS)}")
    p.add_argument("second", nargs="?", metavar="PATH", help="with an action: its base model or run folder")
    p.add_argument("--data", nargs="+", help=".txt/.jsonl files or folders (default: the built-in story corpus)")
    p.add_argument("--out", type=Path, help="run folder (adapt), cache folder, trajectory file or export folder")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.add_argument("--per-step", type=int, default=1, help="trajectories: positions committed per decoding step")
    p.add_argument("--limit", type=int, default=0, help="cache-teacher / trajectories: first N training windows only (0 = all)")
    p.add_argument("--batch-size", type=int, default=8, help="cache-teacher / trajectories: sequences per forward pass")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    for name in ADAPT_SECTIONS:
        add_section(p, SECTIONS[name], short=SHORT.get(name, ()))
    p.set_defaults(config_sections={name: None for name in ADAPT_SECTIONS})


def _config(base: str, args: argparse.Namespace):
    from sunfish.adapt.run import adapt_config
    from sunfish.checkpoint.files import list_checkpoints, read_config
    from sunfish.config import RunConfig, apply_tree
    from sunfish.validate import validate

    found = list_checkpoints(args.out) if args.resume and args.out else []
    cfg = read_config(found[-1]) if found else RunConfig(preset="adapt")
    tree = given(args)
    cfg = apply_tree(cfg, tree)
    cfg = adapt_config(base, cfg) if not found else cfg
    validate(cfg, given_keys(tree))
    return cfg


def _need(args: argparse.Namespace, what: str) -> None:
    if args.out is None:
        raise ValueError(f"sunfish adapt{'' if what == 'adapt' else ' ' + what} needs --out")
    if what != "adapt" and not args.second:
        raise ValueError(f"sunfish adapt {what} needs a folder: sunfish adapt {what} PATH --out ...")


def dispatch(args: argparse.Namespace) -> int | None:
    if args.verb != "adapt":
        return None
    from sunfish.adapt import run

    action = args.first if args.first in ACTIONS else "adapt"
    _need(args, action)
    if action == "export":
        out = run.export_hf(args.second, args.out)
        print(f"exported to {out} (AutoModelForCausalLM.from_pretrained loads it; attention must be bidirectional, "
              "see sunfish_adapt.json)")
        return 0
    if action == "trajectories":
        run.record_trajectories(args.second, args.data, args.out, per_step=args.per_step, batch_size=args.batch_size,
                                limit=args.limit)
        return 0
    if action == "cache-teacher":
        run.cache_teacher(_config(args.second, args), args.data, args.out, batch_size=args.batch_size, limit=args.limit)
        return 0
    if args.second:
        raise ValueError(f"unexpected '{args.second}': adapt takes one base folder (actions are {', '.join(ACTIONS)})")
    result = run.adapt(_config(args.first, args), run_dir=args.out, data=args.data, resume=args.resume,
                       progress=not args.no_progress)
    val = f", val loss {result.final_val_loss:.4f}" if result.final_val_loss is not None else ""
    print(f"done in {result.seconds:.0f} s: loss {result.final_loss:.4f}{val}; checkpoint {result.checkpoint}")
    return 0
