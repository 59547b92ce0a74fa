"""The training loop: corpus -> tokenizer -> batches -> masked-diffusion loss -> AdamW, with checkpoints.

Everything random flows from `train.seed` through explicit generators (weights, data positions, noise),
so a run resumed from a checkpoint logs exactly what the uninterrupted run would have, and W data-parallel
ranks compute what one process with W times the micro-batches would. Steps with a non-finite loss or
gradient are skipped; SIGTERM/SIGINT write a checkpoint and stop; a lock keeps a second run out.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from sunfish.config import ModelConfig, ParallelKind, RunConfig, describe
from sunfish.data.loader import TokenStream, split_documents
from sunfish.data.shards import PreparedData, PreparedSplit, is_prepared
from sunfish.data.sources import DataError, read_documents
from sunfish.model.transformer import Transformer, build_model, count_parameters
from sunfish.registry import attach_layers, training_loss
from sunfish.runtime import Runtime, setup_runtime
from sunfish.tokenizer import Tokenizer, train_tokenizer
from sunfish.checkpoint.files import (CheckpointError, TrainingState, list_checkpoints, newest_good_checkpoint,
                                      read_state)
from sunfish.checkpoint.weights import load_weights
from sunfish.training.checkpoint import load_training_extras, prune_checkpoints, save_checkpoint
from sunfish.validate import validate
from sunfish.training.observe import MetricsLog, flops_per_token, peak_flops, peak_memory_gib
from sunfish.training.optim import WeightEMA, build_optimizer, lr_at, set_lr
from sunfish.training.parallel import (
    DistInfo,
    ModelAndLoss,
    all_mean,
    all_sum,
    any_rank,
    barrier,
    close_distributed,
    gather_rows,
    gradient_sync,
    init_distributed,
    parallelize,
    reshard,
)
from sunfish.training.robust import BadStepGuard, RunInUseError, RunLock, StopRequest


@dataclass
class TrainResult:
    run_dir: Path
    checkpoint: Path
    final_loss: float
    final_val_loss: float | None
    parameters: int
    seconds: float


@dataclass
class Corpus:
    tokenizer: Tokenizer
    train: TokenStream | PreparedSplit  # both offer len(), fingerprint(), check_length() and batches()
    val: TokenStream | PreparedSplit


def load_corpus_documents(cfg: RunConfig, data: list[str] | None) -> list[str]:
    """Documents from files, or the built-in story corpus when no data is given."""
    if data:
        return read_documents(data)
    from sunfish.data.synth import generate_stories

    return generate_stories(cfg.data.synth_lang, cfg.data.synth_docs, cfg.train.seed)


def build_corpus(cfg: RunConfig, docs: list[str], tokenizer: Tokenizer | None) -> Corpus:
    """Split, train a tokenizer if none is given, and tokenize both splits."""
    split = split_documents(docs, cfg.data.val_fraction, cfg.train.seed)
    if tokenizer is None:
        # Characters are collected from all documents so validation text never holds an unknown one.
        source = docs if cfg.data.tokenizer.value == "char" else split.train
        tokenizer = train_tokenizer(cfg.data.tokenizer.value, source, cfg.data.bpe_vocab)
    make = lambda d: TokenStream.from_documents(d, tokenizer.encode_batch, tokenizer.bos_id, tokenizer.eos_id)
    return Corpus(tokenizer=tokenizer, train=make(split.train), val=make(split.val))


def open_corpus(cfg: RunConfig, data: list[str] | None, tokenizer: Tokenizer | None) -> Corpus:
    """A folder from `sunfish data prepare` (its shards and tokenizer), or documents split and tokenized here."""
    if data and len(data) == 1 and is_prepared(data[0]):
        prepared = PreparedData.open(data[0])
        own = prepared.tokenizer()
        if tokenizer is not None and tokenizer.to_json() != own.to_json():
            raise DataError(f"the tokenizer in '{data[0]}' differs from the checkpoint's; resume with the data the run was trained on")
        return Corpus(tokenizer=own, train=prepared.split("train"), val=prepared.split("val"))
    return build_corpus(cfg, load_corpus_documents(cfg, data), tokenizer)


def seq_len_of(cfg: RunConfig) -> int:
    seq_len = cfg.train.seq_len or cfg.model.context
    if seq_len > cfg.model.context:
        raise ValueError(f"train.seq_len ({seq_len}) exceeds model.context ({cfg.model.context})")
    return seq_len



class TrainingInterrupted(KeyboardInterrupt):
    """SIGTERM or SIGINT arrived; a checkpoint of the last finished step was written before stopping."""


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


def validation_loss(trainer: torch.nn.Module, batches: list[torch.Tensor], seed: int, info: DistInfo, rt: Runtime) -> float:
    """Mean loss on fixed batches with fixed noise (stream i for batch i), split across ranks, so values are
    comparable across steps, runs and numbers of ranks."""
    trainer.eval()
    total, count = 0.0, 0
    rounds = -(-len(batches) // info.world)  # every rank runs the same number of passes (FSDP gathers in each)
    with torch.no_grad():
        for r in range(rounds):
            i = r * info.world + info.rank
            x = batches[min(i, len(batches) - 1)]
            with rt.autocast():
                loss = float(trainer(x.to(rt.device), rt.generator(seed + 3 + (i << 32))))
            if i < len(batches):
                total, count = total + loss, count + 1
    reshard(trainer)
    trainer.train()
    total, count = all_sum([total, float(count)], info, rt.device)
    return total / count


def forward_backward(
    trainer: torch.nn.Module,
    model: Transformer,
    batches: list[torch.Tensor],
    streams: Streams,
    grad_clip: float,
    info: DistInfo,
    rt: Runtime,
) -> tuple[float, float]:
    """Forward and backward over this rank's micro-batches; returns (mean loss over all ranks, gradient norm).

    The optimiser step is left to the caller, which skips it when either figure is not finite.
    """
    loss_value = 0.0
    for k, x0 in enumerate(batches):
        with gradient_sync(trainer, k == len(batches) - 1):
            with rt.autocast():
                loss = trainer(x0.to(rt.device), streams.gens[k])
            (loss / len(batches)).backward()
        loss_value += float(loss.detach()) / len(batches)
    loss_value = all_mean(loss_value, info, rt.device)
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip if grad_clip > 0 else float("inf"))
    if hasattr(norm, "full_tensor"):  # FSDP: a DTensor
        norm = norm.full_tensor()
    return loss_value, float(norm)


def train_step(model: Transformer, optimizer: torch.optim.Optimizer, batches: list[torch.Tensor], cfg: RunConfig,
               mask_id: int, noise_gen: torch.Generator, rt: Runtime) -> float:
    """One single-process optimiser step over `batches` with one noise generator; returns the mean loss.
    (The unit of work of benchmarks/train_throughput.py; the loop itself uses `forward_backward`.)"""
    objective = ModelAndLoss(model, lambda m, x, g: training_loss(m, x, cfg.process, mask_id, g).loss)
    streams = Streams([noise_gen] * len(batches), list(range(len(batches))), len(batches))
    loss, _ = forward_backward(objective, model, batches, streams, cfg.optim.grad_clip, DistInfo(), rt)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss


def _resume_point(run_dir: Path, resume: bool, log: Callable[[str], None]) -> Path | None:
    """The checkpoint to continue from; a fresh run never writes over a folder that holds checkpoints."""
    found = list_checkpoints(run_dir)
    if not resume:
        if found:
            raise ValueError(
                f"'{run_dir}' already holds checkpoints ({found[-1].name}); pass --resume to continue that run "
                "or choose another --out"
            )
        return None
    if not found:
        log(f"no checkpoint in '{run_dir}' yet: starting a new run there")
        return None
    good = newest_good_checkpoint(run_dir, log)
    if good is None:
        raise CheckpointError(f"every checkpoint in '{run_dir}' is damaged; start a new run with another --out")
    return good


def _lock(run_dir: Path, info: DistInfo, rt: Runtime, log: Callable[[str], None]) -> RunLock | None:
    """Rank 0 takes the run folder's lock; every rank fails together when it is held by a live run."""
    lock, error = None, None
    if info.is_main:
        try:
            lock = RunLock(run_dir).acquire()
            if lock.took_over is not None:
                log(f"note: took over the lock of a run that is no longer alive (pid {lock.took_over})")
        except RunInUseError as err:
            error = err
    if any_rank(error is not None, info, rt.device):
        raise error or RunInUseError(f"the run folder '{run_dir}' is in use by another run")
    return lock


def train(
    cfg: RunConfig,
    *,
    run_dir: Path,
    data: list[str] | None = None,
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
    model_factory: Callable[[ModelConfig, torch.device], Transformer] = build_model,
    corpus: Corpus | None = None,
) -> TrainResult:
    """Train (or resume) a masked diffusion LM and return where its final checkpoint is.

    Under torchrun with --train.parallel=ddp|fsdp every rank calls this; rank 0 logs and holds the lock.
    `model_factory(model_cfg, device)` builds the network (default: a freshly initialised Transformer).
    `corpus` replaces the one read from `data` (`sunfish adapt` brings the base model's tokenizer).
    """
    start_time = time.perf_counter()
    validate(cfg)
    rt = setup_runtime(cfg.train.device, cfg.train.dtype, cfg.train.threads)
    info = init_distributed(cfg.train.parallel, rt.device)
    say = log if info.is_main else (lambda s: None)
    lock = None
    try:
        if info.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
        barrier(info)
        lock = _lock(run_dir, info, rt, say)
        return _train(cfg, run_dir, data, resume, progress and info.is_main, say, model_factory, rt, info, start_time,
                      corpus)
    finally:
        if lock is not None:
            lock.release()
        close_distributed(info)


def _train(cfg: RunConfig, run_dir: Path, data: list[str] | None, resume: bool, progress: bool,
           log: Callable[[str], None], model_factory, rt: Runtime, info: DistInfo, start_time: float,
           corpus: Corpus | None = None) -> TrainResult:
    resume_from = _resume_point(run_dir, resume, log)
    if corpus is None:
        saved_tokenizer = Tokenizer.load(resume_from / "tokenizer.json") if resume_from else None
        corpus = open_corpus(cfg, data, saved_tokenizer)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=corpus.tokenizer.vocab_size))
    seq_len = seq_len_of(cfg)
    corpus.train.check_length(seq_len, "training")
    corpus.val.check_length(seq_len, "validation")
    log(describe(cfg))

    torch.manual_seed(cfg.train.seed)
    model = model_factory(cfg.model, rt.device)
    attach_layers(model, cfg.process)  # continuous / flow layers (process/layers.py); none for masked, AR
    n_params = count_parameters(model)
    mask_id = corpus.tokenizer.mask_id
    objective = ModelAndLoss(model, lambda m, x, g: training_loss(m, x, cfg.process, mask_id, g).loss)
    trainer = parallelize(model, objective, cfg.train, info, rt, log)
    optimizer = build_optimizer(model, cfg.optim, fused=rt.device.type == "cuda" and not cfg.train.offload)  # offloaded shards live on the CPU
    ema = WeightEMA(model, cfg.train.ema) if cfg.train.ema > 0 else None
    train_batches = corpus.train.batches(seq_len, cfg.train.seed, rank=info.rank, world=info.world)
    streams = Streams.create(cfg.train.seed, cfg.train.grad_accum, info, rt)
    start = 0
    if resume_from is not None:
        state = read_state(resume_from)
        if state.data_fingerprint != corpus.train.fingerprint():
            raise DataError(f"the training data differs from the data of the run in '{run_dir}'; resume with the same --data")
        load_weights(model, resume_from)
        rng = load_training_extras(resume_from, model, optimizer, ema.shadow if ema else None)
        train_batches.restore(rng["data"])
        streams.restore(rng["noise"], state.step, cfg.train.seed, log)
        start = state.step
        log(f"resuming from {resume_from} at step {start}")
    log(f"model: {n_params:,} parameters; data: {len(corpus.train):,} training tokens, {len(corpus.val):,} "
        f"validation tokens; device {rt.device}; parallel {cfg.train.parallel.value} x {info.world}")

    val_source = corpus.val.batches(seq_len, cfg.train.seed + 2)  # the same batches on every rank
    val_batches = [val_source.next_batch(cfg.train.batch_size) for _ in range(cfg.train.val_batches)]
    metrics = MetricsLog(run_dir, start if resume_from else None, cfg.train.log, cfg.to_dict()) if info.is_main else None
    total = cfg.train.steps
    tokens_per_step = cfg.train.batch_size * cfg.train.grad_accum * seq_len * info.world
    peak = peak_flops(rt.device, cfg.train.peak_tflops)
    step_flops = flops_per_token(n_params, cfg.model.n_layers, cfg.model.d_model, seq_len)
    guard = BadStepGuard(cfg.train.max_bad_steps)
    last_ckpt = resume_from
    loss_value, val_value, grad_norm = float("nan"), None, float("nan")

    def save(step: int, val_loss: float | None) -> Path:
        rng = {"data": train_batches.state(), "noise": streams.states(info, rt.device)}
        extra = {"val_loss": val_loss, "world": info.world, "parallel": cfg.train.parallel.value, "ema": ema is not None}
        state = TrainingState(step=step, data_fingerprint=corpus.train.fingerprint(), extra=extra)
        path = save_checkpoint(run_dir, step, model, optimizer, rng, state, cfg, corpus.tokenizer,
                                       ema=ema.shadow if ema else None, sharded=cfg.train.parallel is ParallelKind.FSDP,
                                       info=info)
        if info.is_main:
            for old in prune_checkpoints(run_dir, cfg.train.keep_last):
                log(f"removed {old.name} (keeping the last {cfg.train.keep_last} and the best by validation loss)")
        return path

    bar = tqdm(total=total, initial=start, disable=not progress, dynamic_ncols=True, desc="train")
    tick, tick_step = time.perf_counter(), start
    trainer.train()
    with StopRequest() as stop:
        for step in range(start + 1, total + 1):
            lr = lr_at(step - 1, total, cfg.optim)
            set_lr(optimizer, lr)
            batches = [train_batches.next_batch(cfg.train.batch_size) for _ in range(cfg.train.grad_accum)]
            loss_value, grad_norm = forward_backward(trainer, model, batches, streams, cfg.optim.grad_clip, info, rt)
            if guard.check(step, loss_value, grad_norm):
                optimizer.step()
                if ema is not None:
                    ema.update()
            else:
                log(f"warning: step {step} skipped: non-finite {'loss' if not math.isfinite(loss_value) else 'gradient'} "
                    f"({guard.in_a_row} in a row, limit {guard.limit})")
                if metrics:
                    metrics.write({"step": step, "skipped": True, "lr": lr})
            optimizer.zero_grad(set_to_none=True)
            bar.update(1)

            do_val = cfg.train.val_every > 0 and (step % cfg.train.val_every == 0 or step == total)
            step_val = None
            if do_val or step % cfg.train.log_every == 0 or step == total:
                now = time.perf_counter()
                tps = tokens_per_step * (step - tick_step) / max(now - tick, 1e-9)
                tick, tick_step = now, step
                record = {"step": step, "loss": round(loss_value, 6), "lr": lr, "grad_norm": round(grad_norm, 6),
                          "tokens_per_s": round(tps, 1)}
                if peak:
                    record["mfu"] = round(tps * step_flops / (peak * info.world), 4)
                record["memory_gib"] = round(peak_memory_gib(rt.device), 3)
                if do_val:
                    if ema is not None:
                        ema.swap()
                    val_value = step_val = validation_loss(trainer, val_batches, cfg.train.seed, info, rt)
                    if ema is not None:
                        ema.swap()
                    record["val_loss"] = round(val_value, 6)
                    tick = time.perf_counter()  # validation time does not count against throughput
                if metrics and guard.in_a_row == 0:
                    metrics.write(record)
                bar.set_postfix(loss=f"{loss_value:.3f}", lr=f"{lr:.2e}", tok_s=f"{tps:,.0f}")
            stopping = any_rank(stop.requested, info, rt.device)
            if (cfg.train.save_every and step % cfg.train.save_every == 0) or step == total or stopping:
                last_ckpt = save(step, step_val)
            if stopping:
                bar.close()
                if metrics:
                    metrics.close()
                log(f"stopped by {stop.name or 'a signal on another rank'} after step {step}; checkpoint {last_ckpt}; "
                    "continue with --resume")
                raise TrainingInterrupted(f"stopped after step {step}")
    bar.close()
    if metrics:
        metrics.close()
    if last_ckpt is None:
        raise ValueError(f"nothing to do: the run in '{run_dir}' already reached step {start} of {total}; raise --steps to continue")
    return TrainResult(
        run_dir=run_dir,
        checkpoint=last_ckpt,
        final_loss=loss_value,
        final_val_loss=val_value,
        parameters=n_params,
        seconds=time.perf_counter() - start_time,
    )
