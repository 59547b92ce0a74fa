"""Command-line verbs for sampler tooling: `sunfish tune-sampler`, `sunfish tune-commit` and `sunfish bench sample`.

`register(verbs)` adds them to the main parser's sub-commands (`sample` joins a `bench` group, created if
no other module made one); `dispatch(args)` runs one of them and returns its exit code, or None for a
verb that is not ours. Library work is imported inside each command so `sunfish --help` stays fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sunfish.config import SamplerConfig
from sunfish.flags import add_runtime, add_section, given, subcommands

# the sampler fields each tool takes (the others it sets itself for every setting it measures)
TUNE_FIELDS = ("length", "policy", "remask", "remask_eta", "remask_start", "remask_end", "guidance")
COMMIT_FIELDS = ("length", "block_length")
BENCH_FIELDS = ("block_length", "threshold", "commit_model", "refresh_bound")
BENCH_BLOCK, BENCH_THRESHOLD = 32, 0.9  # the benchmark's block length and threshold unless given
THREADS_HELP = "CPU threads for torch (0 = torch's default; 1 is steadier on a busy machine)"


def _numbers(kind):
    def parse(value: str) -> list:
        try:
            return [kind(v) for v in value.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{value}' is not a comma-separated list of {kind.__name__} values") from None
    return parse


def _add_tune(verbs: argparse._SubParsersAction) -> None:
    from sunfish.sample.tune import Quality

    p = verbs.add_parser("tune-sampler", help="find the fastest sampler setting within a quality bound and save it as the default",
                         description="Measures the exact sampler (one token per step, no cache) and a grid of step rules, "
                                     "block lengths and cache modes on your prompts, greedily.")
    p.add_argument("path", help="run folder or checkpoint (its config.json gets the chosen setting)")
    p.add_argument("--prompts", type=Path, required=True, help="UTF-8 text file, one prompt per line (or .jsonl with \"prompt\")")
    p.add_argument("--quality", choices=[q.value for q in Quality], default="agreement",
                   help="agreement with the exact sampler's output, or gen_ppl under --ref (default agreement)")
    p.add_argument("--bound", type=float, default=0.02, help="allowed quality loss as a fraction: agreement >= 1 - "
                   "bound, or generative perplexity <= (1 + bound) x the exact sampler's (default 0.02)")
    p.add_argument("--ref", help="causal reference model (trained with --objective ar, same tokenizer) for generative perplexity")
    p.add_argument("--budget", type=float, default=300.0, help="seconds of search; settings not reached are skipped (default 300)")
    p.add_argument("--repeats", type=int, default=1, help="timed decodes per setting, median taken (default 1)")
    p.add_argument("--thresholds", type=_numbers(float), help="thresholds to try, e.g. 0.95,0.9,0.7")
    p.add_argument("--factors", type=_numbers(float), help="factor-rule values to try, e.g. 1,2 ('' leaves the rule out)")
    p.add_argument("--entropy-bounds", type=_numbers(float), help="entropy bounds (nats) to try, e.g. 0.1,1 ('' leaves the rule out)")
    p.add_argument("--steps", type=_numbers(int), help="fixed step counts to try, e.g. 32,16")
    p.add_argument("--block-lengths", type=_numbers(int), help="block lengths to try, 0 = one block (diffusion models)")
    p.add_argument("--dry-run", action="store_true", help="print the table and the choice; write nothing")
    add_runtime(p)
    p.add_argument("--threads", type=int, default=0, help=THREADS_HELP)
    add_section(p, SamplerConfig, fields=TUNE_FIELDS, short=("length",),
                note="the base of every setting tried; defaults come from the checkpoint", defaults=False)
    p.set_defaults(tools_command="tune-sampler", config_sections={"sampler": TUNE_FIELDS})


def _add_tune_commit(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser("tune-commit", help="train the learned commit rule's filter (--sampler.rule learned) on the "
                         "exact sampler's decoding of your prompts",
                         description="Decodes the prompts with the exact sampler (one token per step, confidence order, "
                                     "no cache, greedy), labels each step's masked positions by whether their prediction "
                                     "already is the token the exact decoding writes there, and trains a ~2k-parameter "
                                     "filter (sample/commit_tune.py).")
    p.add_argument("path", help="masked or block diffusion run folder or checkpoint")
    p.add_argument("--out", type=Path, help="filter file to write (default: the checkpoint's own commit_rule.safetensors, "
                   "which --sampler.rule learned then uses without --sampler.commit_model)")
    p.add_argument("--prompts", type=Path, help="UTF-8 text file, one prompt per line (or .jsonl with \"prompt\"); "
                   "default: eight built-in story openings (more prompts, a steadier filter)")
    p.add_argument("--precision", type=float, default=0.9, help="fraction of the filter's commits that must already be "
                   "the exact output's token on held-out prompts; sets its threshold (default 0.9)")
    p.add_argument("--end-precision", type=float, default=0.99, help="the same for the end-of-text head (default 0.99)")
    p.add_argument("--epochs", type=int, default=300, help="full-batch Adam steps per head (default 300)")
    p.add_argument("--seed", type=int, default=0, help="seeds the filter's initialisation")
    add_runtime(p)
    p.add_argument("--threads", type=int, default=0, help=THREADS_HELP)
    add_section(p, SamplerConfig, fields=COMMIT_FIELDS, short=COMMIT_FIELDS,
                note="the setting the filter is trained for; defaults come from the checkpoint", defaults=False)
    p.set_defaults(tools_command="tune-commit", config_sections={"sampler": COMMIT_FIELDS})


def _add_bench(verbs: argparse._SubParsersAction) -> None:
    bench = verbs.choices.get("bench") or verbs.add_parser("bench", help="benchmarks")
    p = subcommands(bench, "bench_verb").add_parser(
        "sample", help="tokens/s, NFE per token and quality of the samplers against the plain one-token-per-step baseline")
    p.add_argument("path", help="masked diffusion run folder or checkpoint")
    p.add_argument("--ar", help="causal model of the same size (--objective ar, same tokenizer): "
                   "a row, and the generative-perplexity scorer")
    p.add_argument("--block", help="block-diffusion model (--process.block_size > 0, same tokenizer): rows with its exact cache")
    p.add_argument("--reference", help="causal model larger than the others (same tokenizer): scores generative perplexity "
                   "in place of --ar, so no row is scored by itself")
    p.add_argument("--distilled", help="masked student distilled from PATH (sunfish distill): rows against its own "
                   "one-token-per-step output")
    p.add_argument("--draft", help="draft model (masked or causal, same tokenizer; e.g. from `sunfish draft`): a "
                   "draft-speculative row beside the self-speculative one")
    p.add_argument("--latent", action="append", metavar="PATH", help="a latent model around a frozen LM (--process ldlm, "
                   "cola or vfm; same tokenizer, trained with prompts): rows at --latent-steps denoising steps (VFM: its "
                   "one pass) at the lengths that fit its texts; repeat for several")
    p.add_argument("--latent-steps", type=_numbers(int), help="denoising steps of the --latent rows (default 16,64)")
    p.add_argument("--draft-len", type=int, default=2, help="speculative rows: commits drafted per verification "
                   "(default 2, the best measured on small models)")
    p.add_argument("--lengths", type=_numbers(int), help="generation lengths (default 64,256,1024, those that fit the "
                   "models' context; longer ones are skipped with a note)")
    p.add_argument("--batch", type=_numbers(int), default=[1, 8], help="batch sizes (default 1,8)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per row; the table shows the median (default 3)")
    p.add_argument("--prompts", type=Path, help="UTF-8 text file, one prompt per line, or .jsonl with \"prompt\" (default: eight built-in story openings)")
    p.add_argument("--held-out", type=Path, help="held-out text, one document per line (or .jsonl with \"text\"): first print how often "
                   "the masked model is sure and right on it, with random masks and at a block start")
    add_runtime(p)
    p.add_argument("--threads", type=int, default=0, help=THREADS_HELP)
    add_section(p, SamplerConfig, fields=BENCH_FIELDS, short=BENCH_FIELDS,
                note=f"the diffusion rows' block length (bench default {BENCH_BLOCK}) and threshold (default "
                     f"{BENCH_THRESHOLD}); a commit model (`sunfish tune-commit`, at this block length) adds the learned "
                     "rule's rows, a refresh bound a dual-cache row with adaptive refresh")
    p.set_defaults(tools_command="bench-sample", config_sections={"sampler": BENCH_FIELDS})


def register(verbs: argparse._SubParsersAction) -> None:
    _add_tune(verbs)
    _add_tune_commit(verbs)
    _add_bench(verbs)


def dispatch(args: argparse.Namespace) -> int | None:
    """Run the verb if it is one of ours and return its exit code; None otherwise."""
    command = getattr(args, "tools_command", None)
    if command == "tune-sampler":
        return cmd_tune(args)
    if command == "tune-commit":
        return cmd_tune_commit(args)
    if command == "bench-sample":
        return cmd_bench_sample(args)
    return None


def _positive(name: str, values: list[int] | None) -> None:
    from sunfish.sample.bench import BenchError

    if values is not None and (not values or min(values) < 1):
        raise BenchError(f"{name} needs positive whole numbers, e.g. {name} 64,256")


def _check_grid(args: argparse.Namespace) -> None:
    from sunfish.sample.bench import BenchError

    _positive("--steps", args.steps)
    if args.block_lengths is not None and (not args.block_lengths or min(args.block_lengths) < 0):
        raise BenchError("--block-lengths needs whole numbers >= 0 (0 = one block), e.g. --block-lengths 0,32")
    if args.thresholds is not None and (not args.thresholds or not all(0 < t <= 1 for t in args.thresholds)):
        raise BenchError("--thresholds needs values in (0, 1], e.g. --thresholds 0.95,0.9")
    if args.factors is not None and not all(f > 0 for f in args.factors):
        raise BenchError("--factors needs values > 0, e.g. --factors 1,2")
    if args.entropy_bounds is not None and not all(g >= 0 for g in args.entropy_bounds):
        raise BenchError("--entropy-bounds needs values >= 0 (nats), e.g. --entropy-bounds 0.1,1")
    if args.repeats < 1 or args.budget <= 0:
        raise BenchError("--repeats needs a count >= 1 and --budget a positive number of seconds")


def cmd_tune(args: argparse.Namespace) -> int:
    from sunfish.api import load
    from sunfish.sample.prompt import read_prompts
    from sunfish.sample.tune import Quality, chosen_values, format_trials, tune, write_sampler_defaults

    _check_grid(args)
    prompts = read_prompts(args.prompts)
    model = load(args.path, device=args.device, dtype=args.dtype, quantize=args.quantize, threads=max(args.threads, 0))
    base = model.sampler(**given(args).get("sampler", {}))
    ref = load(args.ref, device=args.device, dtype=args.dtype) if args.ref else None
    result = tune(model, prompts, length=base.length, sampler=base, quality=Quality(args.quality), bound=args.bound,
                  ref=ref, budget_s=args.budget, repeats=args.repeats, thresholds=args.thresholds, steps=args.steps,
                  block_lengths=args.block_lengths, factors=args.factors, entropy_bounds=args.entropy_bounds,
                  log=lambda line: print(line, flush=True))
    print()
    print(format_trials(result))
    bound = (f"agreement >= {1 - args.bound:.3f}" if result.quality is Quality.AGREEMENT
             else f"generative perplexity <= {1 + args.bound:.3f} x the exact sampler's")
    exact = result.trials[0]
    if result.skipped:
        print(f"\nthe --budget of {args.budget:g} s ran out: {result.skipped} settings were not measured")
    print(f"\nquality bound: {bound}; greedy decoding of {len(prompts)} prompt(s), {base.length} tokens each")
    print(f"chosen: {result.chosen.label}: {result.chosen.tokens_per_s / exact.tokens_per_s:.2f}x the exact sampler's tokens/s")
    values = chosen_values(result.chosen.cfg, model.spec.fixed_blocks)
    if args.dry_run:
        print(f"--dry-run: nothing written (would set sampler {values})")
        return 0
    target, old = write_sampler_defaults(model.path, values)
    print(f"wrote sampler defaults {values} to {target} (old values {old}; previous file kept as {target.name}.bak)")
    return 0


def cmd_tune_commit(args: argparse.Namespace) -> int:
    from sunfish.api import load
    from sunfish.sample.bench import BenchError
    from sunfish.sample.prompt import read_prompts

    if args.epochs < 1:
        raise BenchError(f"--epochs {args.epochs} is not a positive count; use e.g. --epochs 300")
    prompts = read_prompts(args.prompts) if args.prompts else None
    model = load(args.path, device=args.device, dtype=args.dtype, quantize=args.quantize, threads=max(args.threads, 0))
    r = model.train_commit_rule(prompts, out=args.out, precision=args.precision, end_precision=args.end_precision,
                                epochs=args.epochs, seed=args.seed, log=lambda line: print(line, flush=True),
                                **given(args).get("sampler", {}))
    end = "none (no EOS evidence)" if r.spec.end_threshold is None else f"{r.spec.end_threshold:.4f}"
    print(f"{r.positions} positions, {r.positive:.1%} already the exact output's token; threshold "
          f"{r.spec.threshold:.4f} (held out: precision {r.precision:.3f}, recall {r.recall:.3f}); end threshold {end}")
    print(f"check decode: {r.tokens_per_step:.2f} tokens per step (exact sampler: 1), agreement {r.agreement:.3f} "
          f"with the exact output; {r.seconds:.1f} s in all")
    use = "--sampler.rule learned" + ("" if args.out is None else f" --sampler.commit_model {r.path}")
    print(f"wrote {r.path}; sample with {use}")
    return 0


def _bench_models(args: argparse.Namespace, device: str, threads: int) -> dict:
    """The benchmark's models by role, checked: 'diffusion' (masked), and optionally 'block' and 'ar'."""
    from sunfish.api import load
    from sunfish.sample.bench import BenchError, check_reference, is_unmasking

    models = {"diffusion": load(args.path, device=device, dtype=args.dtype, quantize=args.quantize, threads=threads)}
    if not is_unmasking(models["diffusion"]):
        raise BenchError(f"'{args.path}' is {models['diffusion'].spec.a_label} model, not a masked diffusion model "
                         "(block_size 0); pass block-diffusion models with --block and causal ones with --ar")
    if args.block:
        models["block"] = load(args.block, device=device)
        if not models["block"].spec.fixed_blocks or models["block"].spec.causal:
            raise BenchError(f"--block '{args.block}' is not a block-diffusion model; "
                             "train one with --process block")
        if models["block"].tokenizer.sha256() != models["diffusion"].tokenizer.sha256():
            raise BenchError(f"--block '{args.block}' uses another tokenizer than '{args.path}'; train both on the same data")
    if args.distilled:
        models["distilled"] = load(args.distilled, device=device)
        if not is_unmasking(models["distilled"]):
            raise BenchError(f"--distilled '{args.distilled}' is {models['distilled'].spec.a_label} model, not a masked "
                             "diffusion model; pass the output of `sunfish distill`")
        if models["distilled"].tokenizer.sha256() != models["diffusion"].tokenizer.sha256():
            raise BenchError(f"--distilled '{args.distilled}' uses another tokenizer than '{args.path}'; "
                             "distill from that model")
    for role in ("ar", "reference"):
        if getattr(args, role):
            models[role] = load(getattr(args, role), device=device)
            for other in [m for name, m in models.items() if name not in ("ar", "reference")]:
                check_reference(models[role], other)
    _latent_models(args, models, device)
    if args.draft:
        from sunfish.sample.draft_model import open_draft

        open_draft(models["diffusion"], SamplerConfig(speculate="draft", draft=args.draft))  # refuses what cannot draft
        models["draft"] = models["diffusion"].drafts[args.draft]
    return models


def _latent_models(args: argparse.Namespace, models: dict, device: str) -> None:
    """Add each --latent model under its role (bench_latent.py), checked against the masked model."""
    from sunfish.api import load
    from sunfish.sample.bench_latent import check_latent, latent_role

    for i, path in enumerate(args.latent or []):
        models[latent_role(i)] = load(path, device=device)
        check_latent(models[latent_role(i)], models["diffusion"])


def _scorer(args: argparse.Namespace) -> str:
    if args.reference:
        return f"the reference model {args.reference}"
    return "the same-size causal model (its own row is scored by itself)" if args.ar else "- (no --ar or --reference)"


def cmd_bench_sample(args: argparse.Namespace) -> int:
    from sunfish.sample.bench import (DEFAULT_PROMPTS, HEADER, BenchError, confidence_profile,
                                      encodable_prompts, fitting_lengths, format_confidence, run_bench)
    from sunfish.sample.bench_latent import DEFAULT_LATENT_STEPS, is_latent_role, latent_notes
    from sunfish.sample.bench_targets import target_report
    from sunfish.sample.prompt import read_prompts

    _positive("--lengths", args.lengths)
    _positive("--batch", args.batch)
    _positive("--latent-steps", args.latent_steps)
    if args.repeats < 1:
        raise BenchError(f"--repeats {args.repeats} is not a positive count; use e.g. --repeats 3")
    if args.draft_len < 1:
        raise BenchError(f"--draft-len {args.draft_len} is not a positive count; use e.g. --draft-len 4")
    settings = given(args).get("sampler", {})
    block_length = int(settings.get("block_length", BENCH_BLOCK))
    threshold = float(settings.get("threshold", BENCH_THRESHOLD))
    if settings.get("commit_model"):
        from sunfish.sample.learned import load_filter

        load_filter(settings["commit_model"])  # a missing or foreign file is refused before any work
    models = _bench_models(args, args.device, max(args.threads, 0))
    prompts = read_prompts(args.prompts) if args.prompts else encodable_prompts(models["diffusion"], list(DEFAULT_PROMPTS))
    lengths, skipped = fitting_lengths({k: m for k, m in models.items() if not is_latent_role(k)}, prompts, args.lengths)
    for note in skipped + latent_notes(models, prompts, lengths):
        print(f"note: {note}")
    if args.held_out:
        texts = read_prompts(args.held_out, what="held-out file", noun="document", field="text")
        profile = confidence_profile(models["diffusion"], texts, threshold, block_length)
        if not profile:
            raise BenchError(f"every document in '{args.held_out}' is shorter than --block-length + 2 tokens; "
                             "give longer held-out text")
        print(f"the masked model on {len(texts)} held-out documents:\n\n{format_confidence(profile, threshold)}\n")
    print(f"device {models['diffusion'].device}; median of {args.repeats} runs; greedy, whole canvas (no EOS stop); "
          f"agreement with the row's reference output; gen. PPL under {_scorer(args)}\n")
    print(HEADER, flush=True)
    rows = run_bench(models, prompts, lengths, args.batch, args.repeats, block_length=block_length,
                     threshold=threshold, commit_model=str(settings.get("commit_model", "")),
                     refresh_bound=float(settings.get("refresh_bound", -1.0)), log=lambda line: print(line, flush=True),
                     draft_len=args.draft_len, latent_steps=tuple(args.latent_steps or DEFAULT_LATENT_STEPS))
    print("\n" + "\n".join(target_report(rows)))
    return 0
