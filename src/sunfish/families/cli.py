"""`sunfish convert PATH --out DIR`: a public model's Hugging Face folder written once as a Sunfish checkpoint.

`register(verbs)` adds the verb; `dispatch(args)` runs it and returns its exit code, or None for a verb
that is not ours."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(verbs: argparse._SubParsersAction) -> None:
    c = verbs.add_parser("convert", help="write a LLaDA or Dream Hugging Face folder once as a Sunfish checkpoint "
                                         "(faster loads)")
    c.add_argument("path", type=Path, help="the Hugging Face folder (config.json, safetensors shards, tokenizer files)")
    c.add_argument("--out", type=Path, required=True, help="the Sunfish checkpoint folder to write")
    c.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"], help="dtype of the stored weights "
                   "(default fp32; bf16 halves the size)")


def dispatch(args: argparse.Namespace) -> int | None:
    if args.verb != "convert":
        return None
    from sunfish.families.convert import convert

    out = convert(args.path, args.out, dtype=args.dtype)
    print(f"converted {args.path} to {out}; run it with: sunfish sample {out} --prompt \"...\"")
    return 0
