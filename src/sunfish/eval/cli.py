"""Command-line verbs of the evaluation suite: `sunfish eval`, `sunfish compare` and `sunfish lm-eval`.

`register(verbs)` adds them to the main parser; `dispatch(args)` runs one and returns its exit code, or
None for a verb that is not ours. Every EvalConfig field is a flag `--eval.field=value`, generated from
the dataclass.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sunfish.config import EvalConfig, apply_section
from sunfish.flags import add_runtime, add_section, given


def eval_config(args: argparse.Namespace) -> EvalConfig:
    return apply_section(EvalConfig(), "eval", given(args).get("eval", {}))


def register(verbs: argparse._SubParsersAction) -> None:
    e = verbs.add_parser("eval", help="evaluate a checkpoint: likelihood, generation, infilling, translation, instructions",
                         epilog="Settings: --eval.field=value (e.g. --eval.max_tokens=32768 --eval.sample_steps=16,64)")
    e.add_argument("path", help="run folder (from `sunfish train --out`) or one of its checkpoints")
    e.add_argument("--data", nargs="+", default=[], help="held-out .txt/.jsonl files or folders (instruct: its rows, "
                   "DIR/test.jsonl from `sunfish data instruct`)")
    e.add_argument("--suite", default="", help="comma-separated: likelihood,generation,infill,translation,instruct "
                   "(default: all but instruct; translation only with --parallel)")
    e.add_argument("--ref-model", help="reference causal LM for generative perplexity: a Sunfish --objective ar run "
                   "or a local Hugging Face model folder")
    e.add_argument("--parallel", help="English-Russian TSV (columns en, ru) for the translation suite")
    e.add_argument("--out", type=Path, help="folder for eval.json, report.md and plots (default RUN/eval)")
    e.add_argument("--json", action="store_true", help="print eval.json instead of the table")
    add_runtime(e)
    add_section(e, EvalConfig)
    e.set_defaults(config_sections={"eval": None})

    c = verbs.add_parser("compare", help="several evaluated runs side by side")
    c.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR", help="run folders evaluated with `sunfish eval`")
    c.add_argument("--out", type=Path, help="also write compare.md and plots into this folder")

    h = verbs.add_parser("lm-eval", help="run lm-evaluation-harness tasks on a checkpoint")
    h.add_argument("path", help="run folder or checkpoint")
    h.add_argument("--tasks", required=True, help="comma-separated lm-eval task names")
    h.add_argument("--include-path", help="folder of extra task YAML files")
    h.add_argument("--only-included", action="store_true", help="index only the tasks under --include-path (faster start)")
    h.add_argument("--limit", type=float, help="documents per task (or a fraction)")
    h.add_argument("--mc-samples", type=int, default=32, help="Monte Carlo NELBO draws per loglikelihood request")
    h.add_argument("--device", default="auto")
    h.add_argument("--out", type=Path, help="write the results JSON here")


def dispatch(args: argparse.Namespace) -> int | None:
    if args.verb == "eval":
        return cmd_eval(args)
    if args.verb == "compare":
        return cmd_compare(args)
    if args.verb == "lm-eval":
        return cmd_lm_eval(args)
    return None


def cmd_eval(args: argparse.Namespace) -> int:
    from sunfish.eval.report import parse_suites, run_eval, summary_rows, text_table, write_report

    cfg = eval_config(args)
    suites = parse_suites(args.suite, has_parallel=bool(args.parallel))
    quiet = (lambda _: None) if args.json else print
    body = run_eval(args.path, args.data, suites, cfg, ref_model=args.ref_model, parallel=args.parallel,
                    device=args.device, dtype=args.dtype, quantize=args.quantize, log=quiet)
    out = args.out or Path(body["run_dir"]) / "eval"  # a run's folder, or a public model's own folder
    report = write_report(body, out)
    if args.json:
        print(json.dumps(body, ensure_ascii=False))
    else:
        print()
        print(text_table(summary_rows(body)))
        print(f"\nwrote {out / 'eval.json'} and {report}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from sunfish.eval.report import compare

    print(compare(args.runs, args.out))
    if args.out:
        print(f"\nwrote {args.out / 'compare.md'}")
    return 0


def cmd_lm_eval(args: argparse.Namespace) -> int:
    from sunfish.eval.harness import run_tasks

    results = run_tasks(args.path, args.tasks.split(","), include_path=args.include_path, limit=args.limit,
                        mc_samples=args.mc_samples, device=args.device, builtin=not args.only_included)
    text = json.dumps(results, indent=2, ensure_ascii=False, default=str)
    if args.out:
        from sunfish.fileio import write_text_atomic

        write_text_atomic(args.out, text + "\n")
    print(text)
    return 0
