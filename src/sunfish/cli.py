"""`sunfish <verb>`: each verb parses its flags (generated from the config dataclasses, sunfish/flags.py), calls
the Python API (sunfish/api.py) or one library function, and prints the result; nothing else."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path

from sunfish.config import SECTIONS, apply_tree, load_preset
from sunfish.flags import (Parser, UsageError, absorb_renamed, add_runtime, add_sampler, add_section, check_leftovers,
                           given, given_keys)

# Modules that add verbs of their own: each has `register(verbs)` (adds sub-parsers) and
# `dispatch(args) -> int | None` (runs the verb if it is one of its own, else returns None).
VERB_MODULES = (
    "sunfish.data.cli",  # data prepare, tokenizer train|extend|stats
    "sunfish.sample.tools_cli",  # tune-sampler, tune-commit, bench sample
    "sunfish.sample.chat_cli",  # chat
    "sunfish.adapt.cli",  # adapt, adapt cache-teacher|trajectories|export
    "sunfish.eval.cli",  # eval, compare, lm-eval
    "sunfish.training.cli",  # export, estimate
    "sunfish.training.draft_cli",  # draft (speculative decoding's draft model)
    "sunfish.distillation.cli",  # distill
    "sunfish.families.cli",  # convert
    "sunfish.serve.cli",  # serve
    "sunfish.diagnose.cli",  # doctor
)
TRAIN_SECTIONS = ("model", "process", "optim", "train", "data", "sampler")
TRAIN_SHORT = ("steps", "save_every", "seed", "notify")  # --steps is --train.steps, ...
INFILL_IGNORES = ("length", "stop_at_eos")  # infill's canvas is the text; it never stops at EOS


def _verb_modules() -> list:
    return [importlib.import_module(name) for name in VERB_MODULES]


def _add_train(verbs: argparse._SubParsersAction) -> None:
    from sunfish.registry import SPECS

    t = verbs.add_parser("train", help="train a diffusion LM (or its AR baseline)", epilog="Any config field: --section.field=value")
    t.add_argument("--preset", default="nano", help="preset name (see `sunfish presets`)")
    t.add_argument("--data", nargs="+", help=".txt/.jsonl files or folders, a `sunfish data prepare` shard folder, or the folder or URL (https://, "
                   "s3://, gs://, file://) of tar shards from `data prepare --format tar` (default: the built-in story corpus)")
    t.add_argument("--out", type=Path, help="run folder (default runs/PRESET)")
    t.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    t.add_argument("--process", choices=list(SPECS), help="generative process: sets the config fields it needs "
                   "(ar: causal attention; block: block_size 16, no time conditioning; continuous and flow models "
                   "without time conditioning get --model.time_cond=sinusoidal; ldlm, cola and vfm train around the "
                   "frozen causal LM of --process.base)")
    t.add_argument("--objective", choices=["diffusion", "ar"], help="ar: the same as --process ar")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    for name in TRAIN_SECTIONS:
        add_section(t, SECTIONS[name], short=TRAIN_SHORT if name == "train" else ())


def _add_sampling(verbs: argparse._SubParsersAction) -> None:
    s = verbs.add_parser("sample", help="generate text from a checkpoint")
    s.add_argument("path", help="run folder (from `sunfish train --out`), one of its checkpoints, or an exported folder")
    s.add_argument("--prompt", default="", help="text to continue")
    s.add_argument("--prompts", type=Path, help="file of prompts: one per line, or .jsonl with a \"prompt\" field; "
                   "prints one output per prompt (prompt i uses seed + i)")
    s.add_argument("--batch-size", type=int, help="with --prompts: prompts decoded together (default 8)")
    s.add_argument("--drift", action="store_true", help="with --cache: report cached-vs-exact drift per step (--json)")
    s.add_argument("--no-stop-at-eos", dest="sampler.stop_at_eos", action="store_const", const="false",
                   help="fill the whole canvas even after an EOS (= --sampler.stop_at_eos=false)")
    s.add_argument("--chat", action="store_true", help="--prompt is a user message: apply the tokenizer's chat template (or the plain default, docs/serving.md) "
                   "and print the assistant's reply, stopped at the template's end-of-turn token")
    s.add_argument("--system", help="with --chat: a system message before the user's")
    i = verbs.add_parser("infill", help="fill [MASK] / [MASK:n] spans in a text")
    i.add_argument("path", help="run folder, checkpoint or exported folder")
    i.add_argument("--text", required=True, help="e.g. 'Once upon a time [MASK:12] happy.'")
    for p, skip in ((s, ()), (i, INFILL_IGNORES)):
        p.add_argument("--seed", type=int, default=0, help="seeds the sampler's noise (default 0)")
        p.add_argument("--trace", type=Path, help="write the denoising as FILE.gif or FILE.mp4")
        p.add_argument("--json", action="store_true", help="print one JSON object")
        add_runtime(p)
        add_sampler(p, skip=skip)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="sunfish", description="Diffusion language models: train, sample, infill, evaluate.")
    verbs = parser.add_subparsers(dest="verb", required=True)
    _add_train(verbs)
    _add_sampling(verbs)
    verbs.add_parser("presets", help="list the presets")
    d = verbs.add_parser("data", help="corpus tools")
    dverbs = d.add_subparsers(dest="data_verb", required=True)
    syn = dverbs.add_parser("synth", help="write the built-in children's-story corpus")
    syn.add_argument("--lang", choices=["en", "ru", "both"], default="both")
    syn.add_argument("--docs", type=int, default=1000)
    syn.add_argument("--seed", type=int, default=0)
    syn.add_argument("--out", type=Path, required=True, help="output .txt or .jsonl file")
    q = verbs.add_parser("quickstart", help="make the built-in corpus, train a small model, show samples")
    q.add_argument("--out", type=Path, default=Path("runs/quickstart"))
    q.add_argument("--steps", type=int, help="training steps (default: the quickstart preset's)")
    for module in _verb_modules():
        module.register(verbs)
    return parser


def train_config(args: argparse.Namespace):
    """Defaults < preset (or the saved config when resuming) < --process/--objective < flags; and the dotted
    keys the user set (what `validate` may refuse as unused)."""
    from sunfish.checkpoint.files import list_checkpoints, read_config
    from sunfish.registry import SPECS

    out = args.out or Path("runs") / args.preset
    found = list_checkpoints(out) if args.resume else []
    cfg = read_config(found[-1]) if found else load_preset(args.preset)
    process = "ar" if args.objective == "ar" else args.process
    if process:
        spec = SPECS[process]
        cfg = apply_tree(cfg, spec.train_flags)
        if spec.wants_time and cfg.model.time_cond.value == "none":
            cfg = apply_tree(cfg, {"model": {"time_cond": "sinusoidal"}})
    tree = given(args)
    return apply_tree(cfg, tree), given_keys(tree)


def cmd_train(args: argparse.Namespace) -> int:
    from sunfish.api import train

    cfg, keys = train_config(args)
    out = args.out or Path("runs") / args.preset
    result = train(cfg, out=out, data=args.data, resume=args.resume, progress=not args.no_progress, given=keys)
    val = f", val loss {result.final_val_loss:.4f}" if result.final_val_loss is not None else ""
    if result.plateau_exit is not None:
        val += f", left the unigram plateau at step {result.plateau_exit}"
    elif result.ctx_gain is not None:
        val += f", still on the unigram plateau (ctx_gain {result.ctx_gain:.3f})"
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks for all
        print(f"done in {result.seconds:.0f} s: loss {result.final_loss:.4f}{val}; checkpoint {result.checkpoint}")
    return 0


def cmd_sample(args: argparse.Namespace, infill: bool) -> int:
    from sunfish.api import load

    settings = given(args).get("sampler", {})
    model = load(args.path, device=args.device, dtype=args.dtype, quantize=args.quantize)
    if infill:
        out = model.infill(args.text, seed=args.seed, trace=args.trace, **settings)
    elif args.prompts is not None or args.batch_size is not None:
        return _sample_many(args, model, settings)
    elif args.chat:
        out = model.chat(args.prompt, system=args.system, seed=args.seed, trace=args.trace, **settings)
    else:
        if args.system:
            raise UsageError("--system goes with --chat")
        out = model.generate(args.prompt, seed=args.seed, trace=args.trace, drift=args.drift, **settings)
    if args.json:
        body = out.as_json() | ({"fills": out.fills} if infill else {})
        print(json.dumps(body, ensure_ascii=False))
    else:
        print(out.text)
        if out.trace:
            print(f"[trace written to {out.trace}]", file=sys.stderr)
    return 0


def _sample_many(args: argparse.Namespace, model, settings: dict) -> int:
    """`sample --prompts FILE`: one output (or JSON line) per prompt, decoded in batches."""
    from sunfish.sample.prompt import read_prompts

    if args.prompts is None:
        raise UsageError("--batch-size needs --prompts FILE")
    if args.prompt or args.trace or args.drift:
        raise UsageError("--prompts takes the prompts from the file; --prompt, --trace and --drift work with one prompt")
    outs = model.generate(read_prompts(args.prompts), seed=args.seed,
                          batch_size=8 if args.batch_size is None else args.batch_size, **settings)
    for out in outs:
        print(json.dumps(out.as_json(), ensure_ascii=False) if args.json else out.text)
    return 0


def cmd_presets() -> int:
    from sunfish.model.size import presets_table

    print(presets_table())
    return 0


def cmd_data_synth(args: argparse.Namespace) -> int:
    from sunfish.data.sources import write_documents
    from sunfish.data.synth import generate_stories

    n = write_documents(args.out, generate_stories(args.lang, args.docs, args.seed))
    print(f"wrote {n} stories to {args.out}")
    return 0


def cmd_quickstart(args: argparse.Namespace) -> int:
    from sunfish.quickstart import run_quickstart

    run_quickstart(args.out, steps=args.steps)
    return 0


def _offered(args: argparse.Namespace) -> dict:
    """The config sections (and fields) the chosen verb's flags cover, for `check_leftovers`."""
    if args.verb == "train":
        return {s: None for s in TRAIN_SECTIONS}
    if args.verb in ("sample", "infill"):
        return {"sampler": None}
    return getattr(args, "config_sections", {})


def dispatch(args: argparse.Namespace, extra: list[str]) -> int:
    check_leftovers(args.verb, absorb_renamed(args, extra), _offered(args))
    for module in _verb_modules():
        handled = module.dispatch(args)
        if handled is not None:
            return handled
    if args.verb == "train":
        return cmd_train(args)
    if args.verb in ("sample", "infill"):
        return cmd_sample(args, infill=args.verb == "infill")
    if args.verb == "presets":
        return cmd_presets()
    if args.verb == "data":
        return cmd_data_synth(args)
    return cmd_quickstart(args)


def main(argv: list[str] | None = None) -> int:
    from sunfish.portable import readable_output

    readable_output()  # Windows: a redirected stdout prints Russian text as UTF-8, not an encoding error
    try:
        args, extra = build_parser().parse_known_args(argv)
        return dispatch(args, extra)
    except KeyboardInterrupt:
        print("sunfish: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError) as err:
        if os.environ.get("SUNFISH_DEBUG"):
            raise
        print(f"sunfish: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
