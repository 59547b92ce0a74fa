"""The training loop: corpus -> tokenizer -> batches -> masked-diffusion loss -> AdamW, with checkpoints.

Everything random flows from `train.seed` through explicit generators (weights, data positions, noise),
so a run resumed from a checkpoint logs exactly what the uninterrupted run would have.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from sunfish.config import RunConfig, describe
from sunfish.data.loader import TokenStream, data_parallel_rank, split_documents
from sunfish.data.shards import PreparedData, PreparedSplit, is_prepared
from sunfish.data.sources import DataError, read_documents
from sunfish.model.transformer import Transformer, build_model, count_parameters
from sunfish.process import training_loss
from sunfish.runtime import Runtime, setup_runtime
from sunfish.tokenizer import Tokenizer, train_tokenizer
from sunfish.train import checkpoint as ckpt_io
from sunfish.train.optim import build_optimizer, lr_at, set_lr
from sunfish.train.parallel import apply_compile


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


class MetricsLog:
    """RUN_DIR/metrics.jsonl: one JSON object per logged step."""

    def __init__(self, path: Path, resume_step: int | None):
        self.path = path
        if resume_step is None:
            path.write_text("", encoding="utf-8")
        elif path.exists():  # drop lines a killed run logged after its last checkpoint
            keep = [l for l in path.read_text(encoding="utf-8").splitlines() if l and json.loads(l)["step"] <= resume_step]
            path.write_text("".join(l + "\n" for l in keep), encoding="utf-8")

    def write(self, record: dict) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


@torch.no_grad()
def validation_loss(model: Transformer, batches: list[torch.Tensor], cfg: RunConfig, mask_id: int, rt: Runtime) -> float:
    """Mean loss on fixed batches with fixed noise, so values are comparable across steps and runs."""
    model.eval()
    gen = rt.generator(cfg.train.seed + 3)
    total = 0.0
    for x in batches:
        with rt.autocast():
            total += float(training_loss(model, x.to(rt.device), cfg.process, mask_id, gen).loss)
    model.train()
    return total / len(batches)


def train_step(
    model: Transformer,
    optimizer: torch.optim.Optimizer,
    batches: list[torch.Tensor],
    cfg: RunConfig,
    mask_id: int,
    noise_gen: torch.Generator,
    rt: Runtime,
) -> float:
    """One optimiser step over `batches` (gradient accumulation); returns the mean loss."""
    loss_value = 0.0
    for x0 in batches:
        with rt.autocast():
            out = training_loss(model, x0.to(rt.device), cfg.process, mask_id, noise_gen)
        (out.loss / len(batches)).backward()
        loss_value += float(out.loss.detach()) / len(batches)
    if cfg.optim.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_value


def _resume_point(run_dir: Path, resume: bool, log: Callable[[str], None]) -> Path | None:
    """The checkpoint to continue from; a fresh run never writes over a folder that holds checkpoints."""
    found = ckpt_io.list_checkpoints(run_dir)
    if not resume:
        if found:
            raise ValueError(
                f"'{run_dir}' already holds checkpoints ({found[-1].name}); pass --resume to continue that run "
                "or choose another --out"
            )
        return None
    if not found:
        log(f"no checkpoint in '{run_dir}' yet: starting a new run there")
    return found[-1] if found else None


def train(
    cfg: RunConfig,
    *,
    run_dir: Path,
    data: list[str] | None = None,
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Train (or resume) a masked diffusion LM and return where its final checkpoint is."""
    start_time = time.perf_counter()
    rt = setup_runtime(cfg.train.device, cfg.train.dtype, cfg.train.threads)
    run_dir.mkdir(parents=True, exist_ok=True)
    resume_from = _resume_point(run_dir, resume, log)
    saved_tokenizer = Tokenizer.load(resume_from / "tokenizer.json") if resume_from else None
    corpus = open_corpus(cfg, data, saved_tokenizer)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=corpus.tokenizer.vocab_size))
    seq_len = seq_len_of(cfg)
    corpus.train.check_length(seq_len, "training")
    corpus.val.check_length(seq_len, "validation")
    log(describe(cfg))

    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, rt.device)
    optimizer = build_optimizer(model, cfg.optim, fused=rt.device.type == "cuda")
    rank, world = data_parallel_rank()
    train_batches = corpus.train.batches(seq_len, cfg.train.seed, rank=rank, world=world)
    noise_gen = rt.generator(cfg.train.seed + 1)
    start = 0
    if resume_from is not None:
        state = ckpt_io.read_state(resume_from)
        if state.data_fingerprint != corpus.train.fingerprint():
            raise DataError(f"the training data differs from the data of the run in '{run_dir}'; resume with the same --data")
        ckpt_io.load_weights(model, resume_from)
        rng = ckpt_io.load_training_extras(resume_from, optimizer)
        train_batches.restore(rng["data"])
        noise_gen.set_state(rng["noise"].to(noise_gen.get_state().device))
        start = state.step
        log(f"resuming from {resume_from} at step {start}")
    if cfg.train.compile:
        apply_compile(model, log)
    n_params = count_parameters(model)
    log(f"model: {n_params:,} parameters; data: {len(corpus.train):,} training tokens, {len(corpus.val):,} validation tokens; device {rt.device}")

    val_source = corpus.val.batches(seq_len, cfg.train.seed + 2, rank=rank, world=world)
    val_batches = [val_source.next_batch(cfg.train.batch_size) for _ in range(cfg.train.val_batches)]
    metrics = MetricsLog(run_dir / "metrics.jsonl", start if resume_from else None)
    mask_id = corpus.tokenizer.mask_id
    total = cfg.train.steps
    tokens_per_step = cfg.train.batch_size * cfg.train.grad_accum * seq_len
    last_ckpt = resume_from
    loss_value, val_value = float("nan"), None
    bar = tqdm(total=total, initial=start, disable=not progress, dynamic_ncols=True, desc="train")
    tick, tick_step = time.perf_counter(), start
    model.train()
    for step in range(start + 1, total + 1):
        lr = lr_at(step - 1, total, cfg.optim)
        set_lr(optimizer, lr)
        batches = [train_batches.next_batch(cfg.train.batch_size) for _ in range(cfg.train.grad_accum)]
        loss_value = train_step(model, optimizer, batches, cfg, mask_id, noise_gen, rt)
        bar.update(1)

        do_val = cfg.train.val_every > 0 and (step % cfg.train.val_every == 0 or step == total)
        if do_val or step % cfg.train.log_every == 0 or step == total:
            now = time.perf_counter()
            tps = tokens_per_step * (step - tick_step) / max(now - tick, 1e-9)
            tick, tick_step = now, step
            record = {"step": step, "loss": round(loss_value, 6), "lr": lr, "tokens_per_s": round(tps, 1)}
            if do_val:
                val_value = validation_loss(model, val_batches, cfg, mask_id, rt)
                record["val_loss"] = round(val_value, 6)
                tick = time.perf_counter()  # validation time does not count against throughput
            metrics.write(record)
            bar.set_postfix(loss=f"{loss_value:.3f}", lr=f"{lr:.2e}", tok_s=f"{tps:,.0f}")
        if (cfg.train.save_every and step % cfg.train.save_every == 0) or step == total:
            rng = {"data": train_batches.state(), "noise": noise_gen.get_state().cpu()}
            state = ckpt_io.TrainingState(step=step, data_fingerprint=corpus.train.fingerprint(), extra={})
            last_ckpt = ckpt_io.save_checkpoint(run_dir, step, model, optimizer, rng, state, cfg, corpus.tokenizer)
    bar.close()
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
