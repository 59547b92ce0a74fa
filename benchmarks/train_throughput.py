"""Training throughput: tokens/s and model FLOP utilisation for presets, against a reference loop.

    python benchmarks/train_throughput.py [--repeats 5] [--steps 4] [--presets nano,micro,tiny] [--compile]

Measures, in one run: the peak fp32 matmul rate of this machine; Sunfish's training step (the same
`train_step` the trainer runs: masked-diffusion loss, backward, clipping, AdamW) for each preset; and a
reference step in the style of micro-dllm's `train.py` loop (benchmarks/reference_loop.py) at the same
architecture, 2,048-token BPE vocabulary and batch 16 x 256 as `micro`. Runs are interleaved and each
figure is the median of --repeats timings. Model FLOPs per token = 6 N + 12 n_layers d L (N counts the
head as if applied to every position, so the reference and Sunfish are credited the same work).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference_loop import RefModel, reference_step  # noqa: E402

from sunfish.config import apply_tree, load_preset  # noqa: E402
from sunfish.data.synth import generate_stories  # noqa: E402
from sunfish.model.transformer import build_model, count_parameters  # noqa: E402
from sunfish.runtime import setup_runtime  # noqa: E402
from sunfish.tokenizer import train_tokenizer  # noqa: E402
from sunfish.training.loop import train_step  # noqa: E402
from sunfish.training.optim import build_optimizer  # noqa: E402
from sunfish.training.parallel import apply_compile  # noqa: E402

SHARED_TEXT = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "en_tinystories" / "tinystories_train_head.jsonl"
VOCAB = {"nano": None, "micro": 2048, "tiny": 4096}  # None: character vocabulary
BATCH = {"nano": (16, 128), "micro": (16, 256), "tiny": (16, 256)}


def corpus_text() -> str:
    if SHARED_TEXT.exists():
        import json

        return "\n".join(json.loads(l)["text"] for l in SHARED_TEXT.read_text(encoding="utf-8").splitlines())
    print("(../shared/corpora absent: using the built-in story corpus)")
    return "\n".join(generate_stories("en", 2000, 0))


def peak_matmul_gflops(n: int = 2048, repeats: int = 7) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times) / 1e9


def flops_per_token(params: int, layers: int, d: int, length: int) -> float:
    return 6 * params + 12 * layers * d * length


class SunfishCase:
    def __init__(self, name: str, text: str, compiled: bool):
        vocab = VOCAB[name]
        tok = train_tokenizer("char" if vocab is None else "bpe", [text], vocab)
        self.data = torch.tensor(tok.encode(text))
        batch, length = BATCH[name]
        cfg = load_preset(name)
        self.cfg = apply_tree(cfg, {"model": {"vocab_size": tok.vocab_size}, "train": {"batch_size": batch, "seq_len": length}})
        torch.manual_seed(0)
        self.model = build_model(self.cfg.model)
        self.params = count_parameters(self.model)
        if compiled:
            apply_compile(self.model)
        self.opt = build_optimizer(self.model, self.cfg.optim)
        self.rt = setup_runtime("cpu", "fp32")
        self.gen = torch.Generator().manual_seed(1)
        self.mask_id, self.batch, self.length = tok.mask_id, batch, length
        m = self.cfg.model
        self.flops = flops_per_token(self.params, m.n_layers, m.d_model, length)
        self.label = f"sunfish {name}" + (" (compiled)" if compiled else "")
        self.vocab = tok.vocab_size

    def step(self) -> None:
        idx = torch.randint(len(self.data) - self.length, (self.batch,), generator=self.gen)
        x = self.data[idx[:, None] + torch.arange(self.length)]
        train_step(self.model, self.opt, [x], self.cfg, self.mask_id, self.gen, self.rt)


class ReferenceCase:
    def __init__(self, text: str):
        tok = train_tokenizer("bpe", [text], 2048)
        self.data = torch.tensor(tok.encode(text))
        torch.manual_seed(0)
        self.model = RefModel(tok.vocab_size)
        self.params = sum(p.numel() for p in self.model.parameters())
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1)
        self.mask_id, self.batch, self.length = tok.mask_id, 16, 256
        self.flops = flops_per_token(self.params, 6, 384, 256)
        self.label = "micro-dllm-style reference"
        self.vocab = tok.vocab_size

    def step(self) -> None:
        reference_step(self.model, self.opt, self.data, self.batch, self.length, self.mask_id)


def time_case(case, steps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(steps):
        case.step()
    return case.batch * case.length * steps / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=4, help="timed steps per repeat")
    ap.add_argument("--presets", default="nano,micro,tiny")
    ap.add_argument("--compile", action="store_true", help="also measure torch.compile'd blocks")
    args = ap.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    text = corpus_text()
    cases = [ReferenceCase(text)]
    for name in args.presets.split(","):
        cases.append(SunfishCase(name, text, compiled=False))
        if args.compile:
            cases.append(SunfishCase(name, text, compiled=True))
    for case in cases:  # warm-up (and compilation)
        for _ in range(2):
            case.step()
    peak = peak_matmul_gflops()
    rates = {c.label: [] for c in cases}
    for _ in range(args.repeats):
        for case in cases:
            rates[case.label].append(time_case(case, args.steps))
    peak = (peak + peak_matmul_gflops()) / 2
    base = statistics.median(rates[cases[0].label])
    print(f"\npeak fp32 matmul: {peak:.1f} GFLOP/s ({torch.get_num_threads()} threads); median of {args.repeats} x {args.steps} steps\n")
    print(f"| case | params | vocab | batch x len | tokens/s | MFU | vs reference |")
    print(f"|---|---:|---:|---:|---:|---:|---:|")
    for case in cases:
        tps = statistics.median(rates[case.label])
        mfu = tps * case.flops / (peak * 1e9)
        same_model = isinstance(case, ReferenceCase) or case.label.startswith("sunfish micro")
        ratio = f"{tps / base:.2f}x" if same_model else "-"
        print(f"| {case.label} | {case.params:,} | {case.vocab:,} | {case.batch} x {case.length} | {tps:,.0f} | {mfu:.1%} | {ratio} |")


if __name__ == "__main__":
    main()
