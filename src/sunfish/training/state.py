"""What a training run holds between steps (`RunState`), and how it goes into a checkpoint and comes back.

A checkpoint of step s holds the weights, optimiser moments, EMA weights, the data position and every
noise stream's generator state after step s, so `restore` continues exactly where `save` left off.
`sunfish.training.loop` builds the state (`_setup`) and advances it (`_step`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch

from sunfish.config import ParallelKind, RunConfig
from sunfish.data.loader import RandomWindows, ShardBatches
from sunfish.data.sources import DataError
from sunfish.model.transformer import Transformer
from sunfish.registry import ProcessSpec
from sunfish.runtime import Runtime
from sunfish.checkpoint.files import TrainingState, read_state
from sunfish.checkpoint.weights import load_weights
from sunfish.training.corpus import Corpus
from sunfish.training.checkpoint import load_training_extras, prune_checkpoints, save_checkpoint
from sunfish.training.observe import MetricsLog
from sunfish.training.optim import WeightEMA
from sunfish.training.plateau import PlateauExit, Probe
from sunfish.training.parallel import DistInfo, gather_rows
from sunfish.training.robust import BadStepGuard

if TYPE_CHECKING:
    from tqdm import tqdm

    from sunfish.progress import PlainProgress
    from sunfish.training.watch import RunWatch


@dataclass
class Streams:
    """Noise generators of this rank's micro-batches. Micro-batch k of rank r is global micro-batch
    j = k W + r of the step, and stream j is seeded from (seed, j), so W ranks with A micro-batches draw
    the same noise as one process with W A micro-batches of the same size (and the same data rows)."""

    gens: list[torch.Generator]
    index: list[int]  # global stream number j of each generator
    total: int  # streams per step over all ranks (W x A)

    @classmethod
    def create(cls, seed: int, accum: int, info: DistInfo, rt: Runtime) -> "Streams":
        index = [k * info.world + info.rank for k in range(accum)]
        return cls([rt.generator(seed + 1 + (j << 32)) for j in index], index, accum * info.world)

    def states(self, info: DistInfo, device: torch.device) -> torch.Tensor:
        """(W x A, S) uint8 generator states of all ranks' streams, in stream order."""
        parts = gather_rows(torch.stack([g.get_state().cpu() for g in self.gens]), info, device)  # W x (A, S)
        return torch.stack([parts[j % info.world][j // info.world] for j in range(self.total)])

    def restore(self, states: torch.Tensor, step: int, seed: int, log: Callable[[str], None]) -> None:
        if states.dim() == 1 and self.total == 1:  # a checkpoint from before per-micro-batch streams
            states = states[None]
        if states.dim() == 2 and states.shape[0] == self.total:
            for g, j in zip(self.gens, self.index):
                g.set_state(states[j].clone().to(g.get_state().device))  # a fresh tensor: set_state reads from storage start
            return
        saved = states.shape[0] if states.dim() == 2 else 1
        log(f"note: the checkpoint has {saved} noise streams per step and this run uses {self.total} "
            "(ranks x grad_accum differ); continuing with fresh noise streams")
        for g, j in zip(self.gens, self.index):
            g.manual_seed(seed + 1 + (j << 32) + 7919 * step)


@dataclass(kw_only=True)
class Throughput:
    """Tokens/s since the previous measurement, and model FLOP utilisation (MFU) of a tokens/s figure."""

    tokens_per_step: int  # over all ranks: B x A x L x W
    flops_per_token: float  # training FLOPs per token (observe.flops_per_token)
    peak: float | None  # peak FLOP/s of one device; None when unknown (no MFU then)
    world: int  # devices
    tick: float = 0.0  # time.perf_counter() at the previous measurement
    tick_step: int = 0  # the step of the previous measurement

    def restart(self, step: int) -> None:
        """Count from now and `step` (after a pause that is not training, e.g. validation)."""
        self.tick, self.tick_step = time.perf_counter(), step

    def pause(self, seconds: float) -> None:
        """Leave `seconds` that were not training (a pause for a hot GPU) out of the next measurement."""
        self.tick += seconds

    def measure(self, step: int) -> float:
        """Tokens/s over the steps since the previous measurement; starts the next one."""
        now = time.perf_counter()
        tps = self.tokens_per_step * (step - self.tick_step) / max(now - self.tick, 1e-9)
        self.tick, self.tick_step = now, step
        return tps

    def mfu(self, tokens_per_s: float) -> float:
        """Achieved over peak FLOP/s of all devices (only when `peak` is known)."""
        return tokens_per_s * self.flops_per_token / (self.peak * self.world)


@dataclass(kw_only=True)
class RunState:
    """Everything a training run holds between steps. `step` is the last finished optimiser step; the
    figures of that step (loss, gradient norm, lr) and the latest validation loss travel with it."""

    cfg: RunConfig  # with the tokenizer's vocabulary size
    run_dir: Path
    rt: Runtime
    info: DistInfo
    log: Callable[[str], None]  # a no-op on ranks other than 0
    corpus: Corpus
    seq_len: int  # tokens per training row
    model: Transformer
    parameters: int  # of the model, counted before parallelisation
    trainer: torch.nn.Module  # the model's objective, wrapped for DDP/FSDP: trainer(x0, generator) -> loss
    optimizer: torch.optim.Optimizer
    ema: WeightEMA | None  # None when train.ema is 0
    batches: RandomWindows | ShardBatches  # this rank's training rows
    streams: Streams  # noise generators of this rank's micro-batches
    guard: BadStepGuard
    meter: Throughput
    last_checkpoint: Path | None  # the newest checkpoint written or resumed from
    watch: RunWatch  # system figures, GPU heat and notifications (training/watch.py)
    start: int = 0  # the step the run (re)started from
    step: int = 0
    lr: float = math.nan
    loss: float = math.nan  # mean over ranks of the latest step
    grad_norm: float = math.nan
    val_loss: float | None = None  # the latest validation loss
    spec: ProcessSpec | None = None  # the process's registry entry
    measure: Callable | None = None  # the plateau probe's per-batch figure (training/plateau.py); None: no mask rate
    probe: Probe | None = None  # the latest plateau probe
    plateau: PlateauExit = field(default_factory=PlateauExit)  # the plateau exit, once the probe confirms it
    # Opened by loop._setup once the resume point is checked:
    val_batches: list[torch.Tensor] = field(default_factory=list)  # (B, L) each, the same on every rank
    metrics: MetricsLog | None = None  # rank 0 only
    bar: tqdm | PlainProgress | None = None  # progress (shown by rank 0; see sunfish.progress)
    step_hook: Callable[[int], dict] | None = None  # called with each step's number before it runs (loop.train)
    hook_figures: dict = field(default_factory=dict)  # what step_hook returned for the latest step, for metrics.jsonl


def save(state: RunState, val_loss: float | None) -> Path:
    """Checkpoint of the finished step (val_loss: measured at this step, or None), then the rank that writes
    the run folder prunes old checkpoints; returns the new checkpoint's folder."""
    cfg, info = state.cfg, state.info
    rng = {"data": state.batches.state(), "noise": state.streams.states(info, state.rt.device)}
    extra = {"val_loss": val_loss, "world": info.world, "parallel": cfg.train.parallel.value, "ema": state.ema is not None,
             **state.plateau.state()}
    meta = TrainingState(step=state.step, data_fingerprint=state.corpus.train.fingerprint(), extra=extra)
    path = save_checkpoint(state.run_dir, state.step, state.model, state.optimizer, rng, meta, cfg,
                           state.corpus.tokenizer, ema=state.ema.shadow if state.ema else None,
                           sharded=cfg.train.parallel is ParallelKind.FSDP, info=info)
    if info.writes_files:
        for old in prune_checkpoints(state.run_dir, cfg.train.keep_last):
            state.log(f"removed {old.name} (keeping the last {cfg.train.keep_last} and the best by validation loss)")
    return path


def restore(state: RunState, ckpt: Path) -> None:
    """Continue from `ckpt`: weights, optimiser, EMA, data position and noise streams; the training data
    must be the data the checkpoint was trained on."""
    meta = read_state(ckpt)
    if meta.data_fingerprint != state.corpus.train.fingerprint():
        raise DataError(f"the training data differs from the data of the run in '{state.run_dir}'; resume with the same --data")
    load_weights(state.model, ckpt)
    rng = load_training_extras(ckpt, state.model, state.optimizer, state.ema.shadow if state.ema else None)
    state.batches.restore(rng["data"])
    state.streams.restore(rng["noise"], meta.step, state.cfg.train.seed, state.log)
    state.start = state.step = meta.step
    state.plateau = PlateauExit.from_state(meta.extra)
    state.log(f"resuming from {ckpt} at step {state.start}")
