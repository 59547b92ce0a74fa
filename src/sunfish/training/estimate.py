"""Memory and cost of a training run before it starts: `sunfish estimate --preset NAME ...`.

Per device, for AdamW training of the Transformer in model/transformer.py:

- weights: fp32 master copy, 4 P bytes (FSDP: 4 P / N, plus the gathered compute copy of two blocks and
  of the root's embeddings and head); bf16 autocast without FSDP keeps a bf16 copy of each matrix, 2 P.
- gradients: fp32, 4 P (DDP: twice, its all-reduce buckets hold a copy; FSDP: 4 P / N).
- optimizer: AdamW's two fp32 moments, 8 P (FSDP: / N). CPU offload moves weights, gradients and moments
  to host memory.
- activations: what each block saves for its backward pass, counted tensor by tensor from the block's
  code (elements per token: norm inputs and outputs, q/k/v, rotated q and k, attention output and its
  reshaped copy: 11 d; SwiGLU: 4 f, squared ReLU: 3 f; QK-norm: 2 d more), plus the loss: the masked half
  of the positions through the head, logits, log-softmax and their gradient in fp32. With activation
  checkpointing a wrapped block keeps only its input (d per token) and one block is recomputed at a time.

Throughput at a given model FLOP utilisation uses 6 P + 12 layers d L FLOPs per token (PaLM, appendix B);
activation checkpointing recomputes the forward pass, so the same hardware utilisation gives 6/8 of it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from sunfish.config import MLPKind, ModelConfig, ParallelKind, TokenizerChoice, load_preset
from sunfish.model.size import CHAR_VOCAB
from sunfish.model.transformer import build_model, count_parameters, ff_width
from sunfish.training.observe import flops_per_token

GIB = 2**30
MASKED_FRACTION = 0.5  # mean share of masked positions under the linear schedule with antithetic t


@dataclass(frozen=True)
class EstimateInput:
    model: ModelConfig  # with vocab_size set
    batch: int  # sequences per micro-batch per device
    seq_len: int  # tokens per sequence
    parallel: ParallelKind = ParallelKind.NONE
    gpus: int = 1  # data-parallel devices
    gpu_mem_gib: float = 80.0  # memory per device
    act_ckpt: int = 0  # checkpoint every k-th block; 0 = off
    offload: bool = False  # FSDP CPU offload
    dtype: str = "bf16"  # compute dtype: bf16 (autocast / FSDP mixed precision) or fp32
    mfu: float = 0.4  # model FLOP utilisation assumed for the time estimate
    gpu_tflops: float = 989.0  # peak dense TFLOP/s per device (H100/H200 bf16)
    tokens: float = 1e9  # token budget for the time estimate


@dataclass(frozen=True)
class Estimate:
    parameters: int
    weights: float  # bytes per device
    gradients: float
    optimizer: float
    activations: float
    activations_no_ckpt: float
    activations_ckpt_all: float
    host_bytes: float  # moved to CPU memory by offload
    flops_per_token: float
    tokens_per_s: float
    days: float

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations


def _param_split(cfg: ModelConfig) -> tuple[int, int]:
    """(all parameters, parameters of one block), counted on the meta device."""
    model = build_model(cfg, "meta")
    return count_parameters(model), count_parameters(model.blocks[0])


def activation_bytes(cfg: ModelConfig, batch: int, seq_len: int, act_ckpt: int, elem: int) -> float:
    """Peak bytes of activations: what the forward pass keeps for backward, plus the larger of the loss's
    gradient (at the start of backward) and one block's backward (its gradients, and its recomputed
    activations under activation checkpointing)."""
    d, f, tokens = cfg.d_model, ff_width(cfg), batch * seq_len
    per_block = 11 * d + (4 * f if cfg.mlp is MLPKind.SWIGLU else 3 * f) + (2 * d if cfg.qk_norm else 0)
    per_block = (per_block * elem + cfg.n_heads * 4) * tokens  # + fp32 log-sum-exp per head
    wrapped = 0 if act_ckpt <= 0 else len(range(0, cfg.n_layers, act_ckpt))
    blocks = (cfg.n_layers - wrapped) * per_block + wrapped * d * elem * tokens
    masked = MASKED_FRACTION * tokens
    logits = masked * cfg.vocab_size * (elem + (4 if elem != 4 else 0) + 4)  # logits (+ fp32 copy), log-softmax
    head = 2 * d * elem * tokens + masked * d * elem + logits  # embedding out, final norm out, masked rows
    up = 2 * f if cfg.mlp is MLPKind.SWIGLU else f
    block_grads = (up + 2 * d) * elem * tokens  # gradients flowing through one block's MLP in backward
    backward = max(masked * cfg.vocab_size * 4, (per_block if wrapped else 0.0) + block_grads)
    return blocks + head + backward


def estimate(inp: EstimateInput) -> Estimate:
    cfg, n = inp.model, max(inp.gpus, 1)
    params, block = _param_split(cfg)
    root = params - cfg.n_layers * block
    elem = 2 if inp.dtype == "bf16" else 4
    fsdp = inp.parallel is ParallelKind.FSDP
    shard = n if fsdp else 1
    master, grads, moments = 4 * params / shard, 4 * params / shard, 8 * params / shard
    if fsdp:
        gathered = (2 * block + root) * elem  # two blocks in flight (prefetch) and the root's weights
        weights, transient_grads = master + gathered, (block + root) * 4
    else:
        weights, transient_grads = master + (2 * params if elem == 2 else 0), 0.0  # autocast's bf16 weight copies
        if inp.parallel is ParallelKind.DDP:
            grads *= 2  # the all-reduce buckets
    host = 0.0
    if inp.offload:
        host = master + grads + moments
        weights, grads, moments = weights - master, 0.0, 0.0
    acts = activation_bytes(cfg, inp.batch, inp.seq_len, inp.act_ckpt, elem)
    fpt = flops_per_token(params, cfg.n_layers, cfg.d_model, inp.seq_len)
    recompute = 6 / 8 if inp.act_ckpt else 1.0
    tps = inp.mfu * inp.gpu_tflops * 1e12 * n / fpt * recompute
    return Estimate(
        parameters=params,
        weights=weights,
        gradients=grads + transient_grads,
        optimizer=moments,
        activations=acts,
        activations_no_ckpt=activation_bytes(cfg, inp.batch, inp.seq_len, 0, elem),
        activations_ckpt_all=activation_bytes(cfg, inp.batch, inp.seq_len, 1, elem),
        host_bytes=host,
        flops_per_token=fpt,
        tokens_per_s=tps,
        days=inp.tokens / tps / 86400,
    )


def preset_model(name: str) -> ModelConfig:
    """The preset's ModelConfig with its vocabulary size filled in (char presets: a typical 66 symbols)."""
    run = load_preset(name)
    vocab = run.model.vocab_size or (CHAR_VOCAB if run.data.tokenizer is TokenizerChoice.CHAR else run.data.bpe_vocab)
    return dataclasses.replace(run.model, vocab_size=vocab)


def report(inp: EstimateInput, est: Estimate, preset: str) -> str:
    """The estimate as a short table."""
    gib = lambda b: f"{b / GIB:,.2f} GiB"
    fits = est.total <= inp.gpu_mem_gib * GIB
    ckpt = f"every {inp.act_ckpt} block(s)" if inp.act_ckpt else "off"
    lines = [
        f"preset {preset}: {est.parameters:,} parameters; micro-batch {inp.batch} x {inp.seq_len} tokens per device; "
        f"{inp.parallel.value} on {inp.gpus} device(s); {inp.dtype}; activation checkpointing {ckpt}"
        + ("; CPU offload" if inp.offload else ""),
        "",
        f"  weights      {gib(est.weights):>14}",
        f"  gradients    {gib(est.gradients):>14}",
        f"  optimizer    {gib(est.optimizer):>14}   (AdamW, fp32 moments)",
        f"  activations  {gib(est.activations):>14}   (no checkpointing {gib(est.activations_no_ckpt)}, "
        f"every block {gib(est.activations_ckpt_all)})",
        f"  total        {gib(est.total):>14}   per device of {inp.gpu_mem_gib:g} GiB: "
        + ("fits" if fits else "does NOT fit"),
    ]
    if est.host_bytes:
        lines.append(f"  host memory  {gib(est.host_bytes):>14}   (offloaded weights, gradients, moments, per device)")
    lines += [
        "",
        f"  {est.flops_per_token / 1e9:,.2f} GFLOP per token; at {inp.mfu:.0%} MFU of {inp.gpu_tflops:g} TFLOP/s per device: "
        f"{est.tokens_per_s:,.0f} tokens/s, {est.days:,.2f} days for {inp.tokens:,.0f} tokens",
    ]
    return "\n".join(lines)


def measure_step_peak(cfg: ModelConfig, batch: int, seq_len: int, act_ckpt: int = 0, seed: int = 0) -> int:
    """Peak bytes of tensors alive during one fp32 training step on the CPU (weights, AdamW state after a
    first step, activations, gradients), tracked by PyTorch's own MemTracker."""
    from torch.distributed._tools.mem_tracker import MemTracker

    from sunfish.config import ProcessConfig
    from sunfish.registry import training_loss
    from sunfish.training.optim import build_optimizer
    from sunfish.training.parallel import apply_activation_checkpointing
    from sunfish.config import OptimConfig

    torch.manual_seed(seed)
    model = build_model(cfg, "cpu")
    apply_activation_checkpointing(model, act_ckpt)
    optimizer = build_optimizer(model, OptimConfig())
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, cfg.vocab_size - 1, (batch, seq_len), generator=gen)
    mask_id = cfg.vocab_size - 1

    def step() -> None:
        training_loss(model, x, ProcessConfig(), mask_id, gen).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)

    step()  # the first step creates AdamW's moments and the gradient buffers
    tracker = MemTracker()
    tracker.track_external(model, optimizer)
    with tracker:
        step()
    return int(tracker.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"])
