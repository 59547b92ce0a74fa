"""The training loop: corpus -> tokenizer -> batches -> the process's loss (registry.py) -> AdamW, with checkpoints.

Everything random flows from `train.seed` through explicit generators (weights, data positions, noise),
so a run resumed from a checkpoint logs exactly what the uninterrupted run would have, and W data-parallel
ranks compute what one process with W times the micro-batches would. Steps with a non-finite loss or
gradient are skipped; SIGTERM/SIGINT (SIGBREAK on Windows) or a RUN_DIR/STOP file write a checkpoint and
stop; a lock keeps a second run out. The run's watch (training/watch.py) adds system figures to the metric
lines, pauses or stops a run whose GPU is too hot, and sends the notifications (--notify) of checkpoints, the
end, a failure or a stop.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from sunfish.config import LogKind, ModelConfig, RunConfig, describe, public_dict
from sunfish.model.transformer import Transformer, build_model, count_parameters
from sunfish.progress import progress as show_progress
from sunfish.process.curriculum import FINAL, Stage, stage_at
from sunfish.registry import attach_layers, spec_of, training_loss
from sunfish.runtime import Runtime, setup_runtime
from sunfish.tokenizer import Tokenizer
from sunfish.checkpoint.files import CheckpointError, list_checkpoints, newest_good_checkpoint
from sunfish.validate import validate
from sunfish.training.observe import MetricsLog, flops_per_token, peak_flops, peak_memory_gib
from sunfish.training.optim import WeightEMA, build_optimizer, lr_at, set_lr
from sunfish.training.plateau import EXIT_GAIN, Probe, measure, probe_of
from sunfish.training.parallel import (
    DistInfo,
    ModelAndLoss,
    all_mean,
    all_sum,
    any_rank,
    barrier,
    close_distributed,
    gradient_sync,
    init_distributed,
    parallelize,
    reshard,
)
from sunfish.training.nodes import agree_config, resume_point
from sunfish.training.robust import BadStepGuard, RunInUseError, RunLock, StopRequest, TrainingAborted
from sunfish.training.monitor import GpuReader
from sunfish.training.watch import RunWatch
from sunfish.training.corpus import Corpus, open_corpus, seq_len_of
from sunfish.training.state import RunState, Streams, Throughput, restore, save


@dataclass
class TrainResult:
    run_dir: Path
    checkpoint: Path
    final_loss: float
    final_val_loss: float | None
    parameters: int
    seconds: float
    plateau_exit: int | None = None  # the step the probe saw the model leave the unigram plateau (training/plateau.py)
    ctx_gain: float | None = None  # the latest ctx_gain (training/plateau.py); None: not measured


class TrainingInterrupted(KeyboardInterrupt):
    """SIGTERM or SIGINT arrived; a checkpoint of the last finished step was written before stopping."""


def fixed_batch_sums(trainer: torch.nn.Module, batches: list[torch.Tensor], seed: int, info: DistInfo, rt: Runtime,
                     figures: Callable[[torch.nn.Module, torch.Tensor, torch.Generator], list[float]]) -> list[float]:
    """Sums over fixed batches of figures(trainer, x, generator) with fixed noise (stream i, seeded seed + (i << 32),
    for batch i), split across ranks, in eval mode without gradients."""
    trainer.eval()
    totals: list[float] | None = None
    rounds = -(-len(batches) // info.world)  # every rank runs the same number of passes (FSDP gathers in each)
    with torch.no_grad():
        for r in range(rounds):
            i = r * info.world + info.rank
            x = batches[min(i, len(batches) - 1)]
            with rt.autocast():
                values = figures(trainer, x.to(rt.device), rt.generator(seed + (i << 32)))
            if totals is None:
                totals = [0.0] * len(values)
            if i < len(batches):
                totals = [t + v for t, v in zip(totals, values)]
    reshard(trainer)
    trainer.train()
    return all_sum(totals, info, rt.device)


def validation_loss(trainer: torch.nn.Module, batches: list[torch.Tensor], seed: int, info: DistInfo, rt: Runtime) -> float:
    """Mean loss of the final objective on fixed batches with fixed noise (stream i for batch i), split across
    ranks, so values are comparable across steps, runs and numbers of ranks."""
    total, count = fixed_batch_sums(trainer, batches, seed + 3, info, rt, lambda tr, x, g: [float(tr(x, g)), 1.0])
    return total / count


def plateau_probe(trainer: torch.nn.Module, measure: Callable, batches: list[torch.Tensor], seed: int, info: DistInfo,
                  rt: Runtime) -> Probe:
    """Per-token loss of the validation batches at a low and a high mask rate (training/plateau.py)."""
    sums = fixed_batch_sums(trainer, batches, seed + 4, info, rt,
                            lambda tr, x, g: tr(x, g, measure=measure).tolist())
    return probe_of(sums)


def forward_backward(
    trainer: torch.nn.Module,
    model: Transformer,
    batches: list[torch.Tensor],
    streams: Streams,
    grad_clip: float,
    info: DistInfo,
    rt: Runtime,
    stage: Stage = FINAL,
) -> tuple[float, float]:
    """Forward and backward over this rank's micro-batches at curriculum stage `stage` (process/curriculum.py);
    returns (mean loss over all ranks, gradient norm).

    The optimiser step is left to the caller, which skips it when either figure is not finite.
    """
    loss_value = 0.0
    for k, x0 in enumerate(batches):
        with gradient_sync(trainer, k == len(batches) - 1):
            with rt.autocast():
                loss = trainer(x0.to(rt.device), streams.gens[k], stage)
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
    objective = ModelAndLoss(model, lambda m, x, g, stage: training_loss(m, x, cfg.process, mask_id, g, stage).loss)
    streams = Streams([noise_gen] * len(batches), list(range(len(batches))), len(batches))
    loss, _ = forward_backward(objective, model, batches, streams, cfg.optim.grad_clip, DistInfo(), rt)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    after_steps(model)
    return loss


def after_steps(model: torch.nn.Module, reduce: Callable[[list[float]], list[float]] | None = None) -> None:
    """Once per optimiser step: the parts that count batches or keep per-step statistics fold this step's in
    (process/ldlm.py, process/time_warp.py); `reduce` sums over the ranks. A loop of one's own calls this too."""
    for part in model.modules():
        if callable(getattr(part, "after_step", None)):
            part.after_step(reduce)


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
    """The rank that writes the run folder takes its lock; every rank fails together when it is held by a live run."""
    lock, error = None, None
    if info.writes_files:
        try:
            lock = RunLock(run_dir).acquire()
            if lock.took_over is not None:
                log(f"note: took over the lock of a run that is no longer alive (pid {lock.took_over})")
        except RunInUseError as err:
            error = err
    if any_rank(error is not None, info, rt.device):
        raise error or RunInUseError(f"the run folder '{run_dir}' is in use by another run")
    return lock


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    """What a `train` call asks for besides the config (see `train`)."""

    run_dir: Path
    data: list[str] | None  # files or a prepared folder; None for the built-in stories
    resume: bool  # continue from the newest good checkpoint in run_dir
    progress: bool  # show progress (rank 0 only)
    log: Callable[[str], None]  # rank 0's log; a no-op on the other ranks
    model_factory: Callable[[ModelConfig, torch.device], Transformer]
    corpus: Corpus | None  # replaces the corpus read from `data`
    watch: RunWatch  # system figures, GPU heat, notifications
    step_hook: Callable[[int], dict] | None = None  # see `train`


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
    gpu_reader: GpuReader | None = None,
    step_hook: Callable[[int], dict] | None = None,
) -> TrainResult:
    """Train (or resume) a model of the configured process and return where its final checkpoint is.

    Under torchrun with --train.parallel=ddp|fsdp every rank calls this; rank 0 logs and holds the lock
    (with --train.node_local=true each node's first rank holds its own folder's lock: training/nodes.py).
    `model_factory(model_cfg, device)` builds the network (default: a freshly initialised Transformer).
    `corpus` replaces the one read from `data` (`sunfish adapt` brings the base model's tokenizer).
    `gpu_reader` replaces the CUDA device's figures for the monitor and max_gpu_temp (training/monitor.py).
    `step_hook(step)` runs before each optimiser step (1-based, also the first one after a resume) and returns
    figures that go into that step's metrics.jsonl record (`sunfish distill`: the round and the step count).
    """
    start_time = time.perf_counter()
    validate(cfg)
    rt = setup_runtime(cfg.train.device, cfg.train.dtype, cfg.train.threads)
    info = init_distributed(cfg.train.parallel, rt.device, cfg.train.node_local)
    cfg = agree_config(cfg, info)  # node-local folders: a node may have resumed a config another lacks
    say = log if info.is_main else (lambda s: None)
    lock = None
    try:
        if info.writes_files:
            run_dir.mkdir(parents=True, exist_ok=True)
        barrier(info)
        lock = _lock(run_dir, info, rt, say)
        watch = RunWatch.open(cfg.train, run_dir, rt.device, info.is_main, say, gpu_reader)
        opts = RunOptions(run_dir=run_dir, data=data, resume=resume, progress=progress and info.is_main, log=say,
                          model_factory=model_factory, corpus=corpus, watch=watch, step_hook=step_hook)
        return watch.run(lambda: _train(cfg, opts, rt, info, start_time))
    finally:
        if lock is not None:
            lock.release()
        close_distributed(info)


def _train(cfg: RunConfig, opts: RunOptions, rt: Runtime, info: DistInfo, start_time: float) -> TrainResult:
    """Set the run up, then step, log and checkpoint until `train.steps` (or a stop request)."""
    state = _setup(cfg, opts, rt, info)
    with StopRequest(opts.run_dir) as stop:
        while state.step < state.cfg.train.steps:
            _step(state)
            val_loss = _log_and_validate(state)
            state.bar.update(1)  # after the figures, so a plain progress line shows this step's
            _checkpoint_or_stop(state, val_loss, stop)
    _close(state)
    if state.last_checkpoint is None:
        raise ValueError(f"nothing to do: the run in '{opts.run_dir}' already reached step {state.start} of "
                         f"{state.cfg.train.steps}; raise --steps to continue")
    return TrainResult(run_dir=opts.run_dir, checkpoint=state.last_checkpoint, final_loss=state.loss,
                       final_val_loss=state.val_loss, parameters=state.parameters,
                       seconds=time.perf_counter() - start_time, plateau_exit=state.plateau.step,
                       ctx_gain=state.probe.gain if state.probe else None)


def _open_data(cfg: RunConfig, opts: RunOptions, resume_from: Path | None) -> tuple[RunConfig, Corpus, int]:
    """The corpus (with the checkpoint's tokenizer on resume), the config with its vocabulary size, and the
    training sequence length, checked against both splits."""
    corpus = opts.corpus
    if corpus is None:
        saved_tokenizer = Tokenizer.load(resume_from / "tokenizer.json") if resume_from else None
        corpus = open_corpus(cfg, opts.data, saved_tokenizer, opts.log)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=corpus.tokenizer.vocab_size))
    seq_len = seq_len_of(cfg)
    corpus.train.check_length(seq_len, "training")
    corpus.val.check_length(seq_len, "validation")
    return cfg, corpus, seq_len


def _setup(cfg: RunConfig, opts: RunOptions, rt: Runtime, info: DistInfo) -> RunState:
    """Everything the run needs, restored from the checkpoint on resume, with the model in training mode."""
    log = opts.log
    resume_from = resume_point(opts.run_dir, opts.resume, info, _resume_point, log)  # agreed by all nodes
    cfg, corpus, seq_len = _open_data(cfg, opts, resume_from)
    log(describe(cfg))
    model, parameters, trainer = _build_model(cfg, corpus.tokenizer.mask_id, opts, rt, info)
    fused = rt.device.type == "cuda" and not cfg.train.offload  # offloaded shards live on the CPU
    optimizer = build_optimizer(model, cfg.optim, fused=fused)
    ema = WeightEMA(model, cfg.train.ema) if cfg.train.ema > 0 else None
    batches = corpus.train.batches(seq_len, cfg.train.seed, rank=info.rank, world=info.world)
    streams = Streams.create(cfg.train.seed, cfg.train.grad_accum, info, rt)
    meter = Throughput(tokens_per_step=cfg.train.batch_size * cfg.train.grad_accum * seq_len * info.world,
                       flops_per_token=flops_per_token(parameters, cfg.model.n_layers, cfg.model.d_model, seq_len)
                       + getattr(model, "frozen_flops_per_token", 0.0),  # a frozen base's forward (process/ldlm.py)
                       peak=peak_flops(rt.device, cfg.train.peak_tflops), world=info.world)
    state = RunState(cfg=cfg, run_dir=opts.run_dir, rt=rt, info=info, log=log, corpus=corpus, seq_len=seq_len,
                     model=model, parameters=parameters, trainer=trainer, optimizer=optimizer, ema=ema,
                     batches=batches, streams=streams, guard=BadStepGuard(cfg.train.max_bad_steps), meter=meter,
                     last_checkpoint=resume_from, watch=opts.watch, step_hook=opts.step_hook)
    if resume_from is not None:
        restore(state, resume_from)
    state.spec = spec_of(cfg.process)
    scores = state.spec.scores
    state.measure = measure(scores, cfg.process, corpus.tokenizer.mask_id) if scores is not None else None
    log(f"model: {parameters:,} parameters; data: {len(corpus.train):,} training tokens, {len(corpus.val):,} "
        f"validation tokens; device {rt.device}; parallel {cfg.train.parallel.value} x {info.world}")
    val_source = corpus.val.batches(seq_len, cfg.train.seed + 2)  # the same batches on every rank
    state.val_batches = [val_source.next_batch(cfg.train.batch_size) for _ in range(cfg.train.val_batches)]
    if info.writes_files:  # TensorBoard / W&B from rank 0 only; node-local folders get metrics.jsonl each
        sink = cfg.train.log if info.is_main else LogKind.JSONL
        state.metrics = MetricsLog(opts.run_dir, state.start if resume_from else None, sink, public_dict(cfg))
    state.bar = show_progress(total=cfg.train.steps, initial=state.start, desc="train", disable=not opts.progress,
                              every=cfg.train.log_every)
    meter.restart(state.start)
    trainer.train()
    return state


def _build_model(cfg: RunConfig, mask_id: int, opts: RunOptions, rt: Runtime,
                 info: DistInfo) -> tuple[Transformer, int, torch.nn.Module]:
    """(model, its parameter count, the trainer: its training objective parallelised for DDP/FSDP)."""
    torch.manual_seed(cfg.train.seed)
    model = opts.model_factory(cfg.model, rt.device)
    attach_layers(model, cfg.process)  # continuous / flow layers (process/layers.py); none for masked, AR
    parameters = count_parameters(model)
    objective = ModelAndLoss(model, lambda m, x, g, stage: training_loss(m, x, cfg.process, mask_id, g, stage).loss)
    return model, parameters, parallelize(model, objective, cfg.train, info, rt, opts.log)


def _step(state: RunState) -> None:
    """One optimiser step over `grad_accum` micro-batches, then the EMA update; a step whose loss or gradient
    norm is not finite is skipped (logged, and marked in metrics.jsonl) and BadStepGuard counts it."""
    cfg, step = state.cfg, state.step + 1
    if state.step_hook is not None:
        state.hook_figures = state.step_hook(step) or {}
    state.lr = lr_at(step - 1, cfg.train.steps, cfg.optim)
    set_lr(state.optimizer, state.lr)
    batches = [state.batches.next_batch(cfg.train.batch_size) for _ in range(cfg.train.grad_accum)]  # A x (B, L)
    state.loss, state.grad_norm = forward_backward(state.trainer, state.model, batches, state.streams,
                                                   cfg.optim.grad_clip, state.info, state.rt,
                                                   stage_at(cfg.process, step - 1, cfg.train.steps, state.spec.process_fields))
    if state.guard.check(step, state.loss, state.grad_norm):
        state.optimizer.step()
        if state.ema is not None:
            state.ema.update()
    else:
        what = "loss" if not math.isfinite(state.loss) else "gradient"
        state.log(f"warning: step {step} skipped: non-finite {what} ({state.guard.in_a_row} in a row, "
                  f"limit {state.guard.limit})")
        if state.metrics:
            state.metrics.write({"step": step, "skipped": True, "lr": state.lr})
    state.optimizer.zero_grad(set_to_none=True)
    after_steps(state.model, _summed(state))  # per-step counts and statistics over all ranks
    state.step = step


def _summed(state: RunState) -> Callable[[list[float]], list[float]]:
    """Sums a list of floats over the ranks (itself in one process)."""
    return lambda values: all_sum(values, state.info, state.rt.device)


def _log_and_validate(state: RunState) -> float | None:
    """Every `log_every` steps, validation step and the last step: throughput, MFU, memory and (when due) the
    validation loss go to metrics.jsonl (not after a skipped step) and the progress figures.
    Returns the validation loss measured at this step, or None."""
    cfg, step, total = state.cfg.train, state.step, state.cfg.train.steps
    validate = cfg.val_every > 0 and (step % cfg.val_every == 0 or step == total)
    logged = validate or step % cfg.log_every == 0 or step == total
    system = state.watch.on_step(step, logged)  # CPU/RAM/GPU figures when due; may pause a hot GPU
    state.meter.pause(state.watch.paused)
    if not logged:
        if system and state.metrics and state.guard.in_a_row == 0:
            state.metrics.write({"step": step, **system})
        return None
    tps = state.meter.measure(step)
    record = {"step": step, "loss": round(state.loss, 6), "lr": state.lr, "grad_norm": round(state.grad_norm, 6),
              "tokens_per_s": round(tps, 1), **state.hook_figures}
    if state.meter.peak:
        record["mfu"] = round(state.meter.mfu(tps), 4)
    record["memory_gib"] = round(peak_memory_gib(state.rt.device), 3)
    record |= system
    take_terms = getattr(state.model, "take_terms", None)  # a loss of several terms logs each (process/ldlm.py)
    if take_terms is not None:
        record |= take_terms(_summed(state))
    val_loss = None
    if validate:
        val_loss = _validate(state)
        record["val_loss"] = round(val_loss, 6)
        record |= _plateau_figures(state)
        state.meter.restart(step)  # validation time does not count against throughput
    if state.metrics and state.guard.in_a_row == 0:
        state.metrics.write(record)
    shown = {"val": f"{state.val_loss:.3f}"} if state.val_loss is not None else {}
    if state.probe is not None:
        shown["ctx_gain"] = f"{state.probe.gain:.3f}"
    state.bar.set_postfix(loss=f"{state.loss:.3f}", lr=f"{state.lr:.2e}", tok_s=f"{tps:,.0f}", **shown)
    return val_loss


def _plateau_figures(state: RunState) -> dict:
    """The probe's figures of this validation pass (none for processes without a mask rate, or for conversation
    batches), and `plateau_exit` at the pass that confirms the exit (training/plateau.py)."""
    if not _probes(state):
        return {}
    figures = state.probe.figures()
    if state.plateau.update(state.step, state.probe):
        figures["plateau_exit"] = state.plateau.step
        state.log(f"step {state.step}: left the unigram plateau at step {state.plateau.step} (ctx_gain "
                  f"{state.probe.gain:.3f}, above {EXIT_GAIN} since then: the per-token loss depends on the mask rate)")
    return figures


def _validate(state: RunState) -> float:
    """Validation loss (see `validation_loss`), with the EMA weights swapped in when the run keeps them."""
    if state.ema is not None:
        state.ema.swap()
    state.val_loss = validation_loss(state.trainer, state.val_batches, state.cfg.train.seed, state.info, state.rt)
    if _probes(state):
        state.probe = plateau_probe(state.trainer, state.measure, state.val_batches, state.cfg.train.seed,
                                    state.info, state.rt)
    if state.ema is not None:
        state.ema.swap()
    return state.val_loss


def _probes(state: RunState) -> bool:
    """Whether validation runs the plateau probe: a process with a mask rate, on plain text (not conversations)."""
    return state.measure is not None and state.val_batches[0].dim() == 2


def _checkpoint_or_stop(state: RunState, val_loss: float | None, stop: StopRequest) -> None:
    """Save every `save_every` steps, at the last step and when any rank was asked to stop (a signal, or a GPU
    that stayed too hot); then, on a stop, close the logs and raise TrainingInterrupted or TrainingAborted."""
    cfg, step = state.cfg.train, state.step
    stopping = any_rank(stop.requested, state.info, state.rt.device)
    hot = any_rank(state.watch.stop_reason is not None, state.info, state.rt.device) if cfg.max_gpu_temp else False
    if (cfg.save_every and step % cfg.save_every == 0) or step == cfg.steps or stopping or hot:
        state.last_checkpoint = save(state, val_loss)
        state.watch.on_checkpoint(step, state.last_checkpoint, state.loss, step == cfg.steps or stopping or hot)
    if hot and not stopping:
        _close(state)
        why = state.watch.stop_reason or "a GPU of another rank stayed above --train.max_gpu_temp"
        raise TrainingAborted(f"training stopped after step {step}: {why}; checkpoint {state.last_checkpoint}; let the "
                              "machine cool, then --resume")
    if stopping:
        _close(state)
        state.log(f"stopped by {stop.name or 'a signal on another rank'} after step {step}; checkpoint "
                  f"{state.last_checkpoint}; continue with --resume")
        raise TrainingInterrupted(f"stopped after step {step}")


def _close(state: RunState) -> None:
    """Close the progress display and the metrics log (and its TensorBoard / W&B sink)."""
    state.bar.close()
    if state.metrics:
        state.metrics.close()
