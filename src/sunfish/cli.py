"""`sunfish <verb>`: each verb builds a config from its flags and calls one library function."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from sunfish.config import (
    CacheMode,
    ConfigError,
    RemaskKind,
    Policy,
    RunConfig,
    SamplerConfig,
    StepSchedule,
    apply_tree,
    load_preset,
    parse_overrides,
)
import importlib


class UsageError(ValueError):
    """Bad command-line input; the message is one sentence."""


# Modules that add verbs of their own: each has `register(verbs)` (adds sub-parsers) and
# `dispatch(args) -> int | None` (runs the verb if it is one of its own, else returns None).
VERB_MODULES = (
    "sunfish.data.cli",  # data prepare, tokenizer train|extend|stats
    "sunfish.sample.tools_cli",  # tune-sampler, bench sample
    "sunfish.adapt.cli",  # adapt, adapt cache-teacher|trajectories|export
    "sunfish.eval.cli",  # eval, compare, lm-eval
    "sunfish.train.cli",  # export, estimate
)


def _verb_modules() -> list:
    return [importlib.import_module(name) for name in VERB_MODULES]


def _sampler_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="run folder (from `sunfish train --out`) or one of its checkpoints")
    p.add_argument("--steps", type=int, help="denoising steps (1..length)")
    p.add_argument("--policy", choices=[m.value for m in Policy], help="which masks to reveal first")
    p.add_argument("--schedule", choices=[m.value for m in StepSchedule], help="tokens revealed per step")
    p.add_argument("--block-length", type=int, help="semi-autoregressive block size (0 = one block)")
    p.add_argument("--temperature", type=float, help="0 = greedy")
    p.add_argument("--top-k", type=int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--threshold", type=float, help="confidence bar of --schedule threshold")
    p.add_argument("--factor", type=float, help="factor of --schedule factor")
    p.add_argument("--entropy-bound", type=float, help="gamma (nats) of --schedule entropy_bound")
    p.add_argument("--cache", choices=[m.value for m in CacheMode], help="approximate key/value cache")
    p.add_argument("--remask", choices=[m.value for m in RemaskKind], help="ReMDM remasking of committed tokens")
    p.add_argument("--remask-eta", type=float, help="ReMDM eta in [0, 1] (cap on sigma, or its multiplier for rescale)")
    p.add_argument("--remask-start", type=float, help="remask once this fraction of a block is decoded")
    p.add_argument("--remask-end", type=float, help="... until this fraction")
    p.add_argument("--guidance", type=float, help="classifier-free guidance w >= 0 (0 = off)")
    p.add_argument("--solver", choices=["auto", "ddim", "ddpm", "euler", "heun"], help="continuous: ddim|ddpm; flow: euler|heun")
    p.add_argument("--eta", type=float, help="DDIM noise scale (0 deterministic, 1 = DDPM)")
    p.add_argument("--rounding", choices=["head", "cosine", "euclidean"], help="continuous: x0 estimate -> tokens")
    p.add_argument("--clamp", action="store_true", default=None, help="continuous: snap x0 estimates to embeddings")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--trace", type=Path, help="write the denoising as FILE.gif or FILE.mp4")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sunfish", description="Diffusion language models: train, sample, infill.")
    verbs = parser.add_subparsers(dest="verb", required=True)

    t = verbs.add_parser("train", help="train a masked diffusion LM", epilog="Any config field: --section.field=value")
    t.add_argument("--preset", default="nano", help="preset name (see `sunfish presets`)")
    t.add_argument("--data", nargs="+", help=".txt/.jsonl files or folders, or a `sunfish data prepare` shard folder (default: the built-in story corpus)")
    t.add_argument("--out", type=Path, help="run folder (default runs/PRESET)")
    t.add_argument("--steps", type=int, help="planned total optimiser steps")
    t.add_argument("--save-every", type=int, help="checkpoint every N steps (0: only at the end)")
    t.add_argument("--seed", type=int)
    t.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    t.add_argument("--objective", choices=["diffusion", "ar"], help="ar: the same backbone as a causal next-token "
                   "baseline (sets --process.kind=ar --model.attention=causal)")
    t.add_argument("--process", choices=["masked", "continuous", "flow"], help="generative process (sets --process.kind; "
                   "continuous and flow models without time conditioning get --model.time_cond=sinusoidal)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")

    s = verbs.add_parser("sample", help="generate text from a checkpoint")
    _sampler_flags(s)
    s.add_argument("--prompt", default="", help="text to continue")
    s.add_argument("--length", type=int, help="tokens to generate")
    s.add_argument("--no-stop-at-eos", action="store_true", help="fill the whole canvas even after an EOS")
    s.add_argument("--drift", action="store_true", help="with --cache: report cached-vs-exact drift per step (--json)")
    s.add_argument("--prompts", type=Path, help="file of prompts: one per line, or .jsonl with a \"prompt\" field; "
                   "prints one output per prompt (prompt i uses seed + i)")
    s.add_argument("--batch-size", type=int, help="with --prompts: prompts decoded together (default 8)")

    i = verbs.add_parser("infill", help="fill [MASK] / [MASK:n] spans in a text")
    _sampler_flags(i)
    i.add_argument("--text", required=True, help="e.g. 'Once upon a time [MASK:12] happy.'")

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


def train_config(args: argparse.Namespace, extra: list[str]) -> RunConfig:
    """Defaults < preset (or the saved config when resuming) < flags."""
    from sunfish.train.checkpoint import list_checkpoints, read_config

    out = args.out or Path("runs") / args.preset
    found = list_checkpoints(out) if args.resume else []
    cfg = read_config(found[-1]) if found else load_preset(args.preset)
    if args.objective == "ar":
        cfg = apply_tree(cfg, {"process": {"kind": "ar"}, "model": {"attention": "causal", "time_cond": "none"}})
    if args.process:
        chosen = {"process": {"kind": args.process}}
        if args.process != "masked" and cfg.model.time_cond.value == "none":
            chosen["model"] = {"time_cond": "sinusoidal"}  # Gaussian / simplex noise levels are not visible as a mask ratio is
        cfg = apply_tree(cfg, chosen)
    cfg = apply_tree(cfg, parse_overrides(extra))
    flags = {"steps": args.steps, "save_every": args.save_every, "seed": args.seed}
    flags = {k: v for k, v in flags.items() if v is not None}
    if flags:
        cfg = apply_tree(cfg, {"train": flags})
    return cfg


def cmd_train(args: argparse.Namespace, extra: list[str]) -> int:
    from sunfish.train.loop import train

    cfg = train_config(args, extra)
    out = args.out or Path("runs") / args.preset
    result = train(cfg, run_dir=out, data=args.data, resume=args.resume, progress=not args.no_progress)
    val = f", val loss {result.final_val_loss:.4f}" if result.final_val_loss is not None else ""
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks for all
        print(f"done in {result.seconds:.0f} s: loss {result.final_loss:.4f}{val}; checkpoint {result.checkpoint}")
    return 0


def _sampler_config(args: argparse.Namespace, defaults: SamplerConfig) -> SamplerConfig:
    names = {"steps": "steps", "policy": "policy", "schedule": "schedule", "block_length": "block_length",
             "temperature": "temperature", "top_k": "top_k", "top_p": "top_p", "length": "length",
             "threshold": "threshold", "factor": "factor", "entropy_bound": "entropy_bound", "cache": "cache",
             "solver": "solver", "eta": "eta", "rounding": "rounding", "clamp": "clamp"}
    names |= {"remask": "remask", "remask_eta": "remask_eta", "remask_start": "remask_start",
              "remask_end": "remask_end", "guidance": "guidance"}
    values = {field: getattr(args, flag) for flag, field in names.items() if getattr(args, flag, None) is not None}
    if getattr(args, "no_stop_at_eos", False):
        values["stop_at_eos"] = False
    return apply_tree(RunConfig(sampler=defaults), {"sampler": values}).sampler


def cmd_sample(args: argparse.Namespace, infill: bool) -> int:
    from sunfish.runtime import setup_runtime
    from sunfish.sample.text import generate, infill as do_infill
    from sunfish.train.checkpoint import load_for_inference

    rt = setup_runtime(args.device)
    loaded = load_for_inference(args.path, rt.device)
    cfg = _sampler_config(args, loaded.cfg.sampler)
    if not infill and (args.prompts is not None or args.batch_size is not None):
        return _sample_many(args, loaded, cfg)
    if infill:
        out = do_infill(loaded, args.text, cfg, seed=args.seed, trace=args.trace)
    else:
        out = generate(loaded, args.prompt, cfg, seed=args.seed, trace=args.trace, drift=args.drift)
    if args.json:
        body = out.as_json() | ({"fills": out.fills} if infill else {})
        print(json.dumps(body, ensure_ascii=False))
    else:
        print(out.text)
        if out.trace:
            print(f"[trace written to {out.trace}]", file=sys.stderr)
    return 0


def _sample_many(args: argparse.Namespace, loaded, cfg: SamplerConfig) -> int:
    """`sample --prompts FILE`: one output (or JSON line) per prompt, decoded in batches."""
    from sunfish.sample.prompt import read_prompts
    from sunfish.sample.text import generate_batch

    if args.prompts is None:
        raise UsageError("--batch-size needs --prompts FILE")
    if args.prompt or args.trace or args.drift:
        raise UsageError("--prompts takes the prompts from the file; --prompt, --trace and --drift work with one prompt")
    outs = generate_batch(loaded, read_prompts(args.prompts), cfg, seed=args.seed,
                          batch_size=8 if args.batch_size is None else args.batch_size)
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


def dispatch(args: argparse.Namespace, extra: list[str]) -> int:
    if extra and args.verb not in ("train", "adapt"):
        raise UsageError(f"unrecognised arguments: {' '.join(extra)}")
    args.overrides = extra  # --section.field=value flags, for verbs that take them
    for module in _verb_modules():
        handled = module.dispatch(args)
        if handled is not None:
            return handled
    if args.verb == "train":
        return cmd_train(args, extra)
    if args.verb in ("sample", "infill"):
        return cmd_sample(args, infill=args.verb == "infill")
    if args.verb == "presets":
        return cmd_presets()
    if args.verb == "data":
        return cmd_data_synth(args)
    return cmd_quickstart(args)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    try:
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
