"""Command-line verbs around training: `sunfish sft`, `sunfish export` and `sunfish estimate`.

`register(verbs)` adds them to the main parser; `dispatch(args)` runs one and returns its exit code, or
None for a verb that is not ours. Library work is imported inside each command so `--help` stays fast.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sunfish.checkpoint.export import ExportFormat
from sunfish.config import SECTIONS, ParallelKind
from sunfish.flags import add_section, given

SFT_SECTIONS = {"train": None, "optim": None, "sft": ("pad", "lora", "lora_rank", "lora_alpha", "lora_targets", "qlora"),
                "data": ("val_fraction",)}


def _add_sft(verbs: argparse._SubParsersAction) -> None:
    s = verbs.add_parser("sft", help="supervised fine-tuning of a trained run on conversations (chat)",
                         description="Starts from BASE's weights, adds the chat tokens to its tokenizer and trains on "
                                     "the assistant turns only (docs: README, Instruction tuning and chat); with "
                                     "--lora only LoRA adapters and the chat tokens' rows train.")
    s.add_argument("base", help="the trained run (or checkpoint) to fine-tune: masked, block or autoregressive")
    s.add_argument("--data", nargs="+", required=True, help=".jsonl files (rows {\"prompt\", \"response\"} or "
                   "{\"messages\": [...]}), folders of them, or a saved Hugging Face dataset folder")
    s.add_argument("--out", type=Path, required=True, help="the SFT run folder")
    s.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    for name, fields in SFT_SECTIONS.items():
        add_section(s, SECTIONS[name], fields=fields, short=("steps", "save_every", "seed", "notify", "pad", "lora") if name in ("train", "sft") else (),
                    defaults=name == "sft", note="defaults come from BASE" if name != "sft" else "")
    s.set_defaults(config_sections=SFT_SECTIONS)


def cmd_sft(args: argparse.Namespace) -> int:
    from sunfish.training.sft import sft

    result = sft(args.base, args.data, out=args.out, tree=given(args, SFT_SECTIONS), resume=args.resume,
                 progress=not args.no_progress)
    print(f"done in {result.seconds:.0f} s: loss {result.final_loss:.4f}; checkpoint {result.checkpoint}; "
          f"chat with it: sunfish sample {args.out} --chat --prompt \"...\"")
    return 0


def register(verbs: argparse._SubParsersAction) -> None:
    _add_sft(verbs)
    e = verbs.add_parser("export", help="consolidate a run's checkpoint (full or FSDP-sharded) into one folder: "
                         "Sunfish's layout, a transformers folder or LLaDA's layout")
    e.add_argument("path", type=Path, help="run folder (its newest good checkpoint) or a checkpoint folder")
    e.add_argument("--out", type=Path, required=True, help="folder for model.safetensors, config.json and the tokenizer")
    e.add_argument("--format", dest="fmt", choices=[f.value for f in ExportFormat], default=ExportFormat.SUNFISH.value,
                   help="sunfish: a checkpoint every verb opens (default); hf: transformers' AutoModel.from_pretrained "
                        "after `import sunfish.hf`; llada: LLaDA's config and tensor names (LLaDA-shaped models only)")
    e.add_argument("--best", action="store_true", help="the checkpoint with the lowest validation loss instead of the newest")
    weights = e.add_mutually_exclusive_group()
    weights.add_argument("--ema", dest="ema", action="store_true", default=None, help="the EMA weights (default when saved)")
    weights.add_argument("--raw", dest="ema", action="store_false", help="the raw weights even when an EMA was saved")

    s = verbs.add_parser("estimate", help="memory per device and training time of a preset before running it")
    s.add_argument("--preset", required=True, help="preset name (see `sunfish presets`)")
    s.add_argument("--batch", type=int, default=0, help="sequences per micro-batch per device (default: the preset's)")
    s.add_argument("--seq", type=int, default=0, help="tokens per sequence (default: the preset's context)")
    s.add_argument("--parallel", choices=[k.value for k in ParallelKind], default="none")
    s.add_argument("--gpus", type=int, default=1, help="data-parallel devices")
    s.add_argument("--gpu-mem", type=float, default=80.0, help="memory per device in GiB (default 80)")
    s.add_argument("--act-ckpt", type=int, nargs="?", const=1, default=0, metavar="K",
                   help="activation checkpointing of every K-th block (bare flag: every block)")
    s.add_argument("--offload", action="store_true", help="FSDP CPU offload of weights, gradients and optimizer state")
    s.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16", help="compute precision (default bf16)")
    s.add_argument("--mfu", type=float, default=0.4, help="model FLOP utilisation assumed (default 0.4)")
    s.add_argument("--gpu-flops", type=float, default=989.0, help="peak TFLOP/s per device (default 989, H100 bf16)")
    s.add_argument("--tokens", type=float, default=1e9, help="token budget for the time estimate (default 1e9)")
    s.add_argument("--json", action="store_true", help="print one JSON object")


def cmd_export(args: argparse.Namespace) -> int:
    from sunfish.checkpoint.export import export_checkpoint

    done = export_checkpoint(args.path, args.out, best=args.best, ema=args.ema, fmt=args.fmt)
    print(f"exported {done.source} to {done.folder} as {args.fmt} ({', '.join(done.files)})")
    return 0


def cmd_estimate(args: argparse.Namespace) -> int:
    from sunfish.config import load_preset
    from sunfish.training.estimate import EstimateInput, estimate, preset_model, report

    for name, value, low in (("--gpus", args.gpus, 1), ("--gpu-mem", args.gpu_mem, 1e-9), ("--gpu-flops", args.gpu_flops, 1e-9),
                             ("--tokens", args.tokens, 1), ("--batch", args.batch, 0), ("--seq", args.seq, 0), ("--act-ckpt", args.act_ckpt, 0)):
        if value < low:
            raise ValueError(f"{name} must be at least {low:g}, not {value:g}")
    if not 0 < args.mfu <= 1:
        raise ValueError(f"--mfu is a fraction in (0, 1], not {args.mfu:g}")
    run = load_preset(args.preset)
    model = preset_model(args.preset)
    seq = args.seq or model.context
    if seq > model.context:
        raise ValueError(f"--seq {seq} exceeds the preset's context of {model.context} tokens")
    inp = EstimateInput(model=model, batch=args.batch or run.train.batch_size, seq_len=seq,
                        parallel=ParallelKind(args.parallel), gpus=args.gpus, gpu_mem_gib=args.gpu_mem,
                        act_ckpt=args.act_ckpt, offload=args.offload, dtype=args.dtype, mfu=args.mfu,
                        gpu_tflops=args.gpu_flops, tokens=args.tokens)
    if inp.offload and inp.parallel is not ParallelKind.FSDP:
        raise ValueError("--offload needs --parallel fsdp (offload moves FSDP's shards to the CPU)")
    est = estimate(inp)
    if args.json:
        body = {"parameters": est.parameters, "weights": est.weights, "gradients": est.gradients,
                "optimizer": est.optimizer, "activations": est.activations, "total": est.total,
                "activations_no_ckpt": est.activations_no_ckpt, "activations_ckpt_all": est.activations_ckpt_all,
                "host": est.host_bytes, "fits": est.total <= inp.gpu_mem_gib * 2**30,
                "tokens_per_s": est.tokens_per_s, "days": est.days}
        print(json.dumps(body))
    else:
        print(report(inp, est, args.preset))
    return 0


def dispatch(args: argparse.Namespace) -> int | None:
    """Run the verb if it is one of ours and return its exit code; None otherwise."""
    if args.verb == "sft":
        return cmd_sft(args)
    if args.verb == "export":
        return cmd_export(args)
    if args.verb == "estimate":
        return cmd_estimate(args)
    return None
