"""`sunfish draft TARGET --out RUN`: train a small draft model for speculative decoding by distillation.

The draft is a masked diffusion model with TARGET's tokenizer, process settings and context, and a smaller
network (`size`: half or quarter of TARGET's width and depth, or a preset's model section). It trains through
Sunfish's trainer (checkpoints, resume, validation, metrics) with a knowledge-distillation loss (Hinton et al.
2015, arXiv 1503.02531) on TARGET's predictions: each clean training window x0 is noised as TARGET's process
noises it (t ~ U[eps, 1], each token masked with probability 1 - alpha(t), process/masked.py), and at the masked
positions M

    L = 1/|M| sum_{i in M} KL(p_target(. | z_t)_i || p_draft(. | z_t)_i),

which is minimised when the draft's predictions, hence its step laws (sample/step_law.py), equal TARGET's: the
acceptance probability of speculative sampling, sum min(p, q) = 1 - TV(p, q), rises as the KL falls (Pinsker).
Validation (in eval mode) reports the draft's own masked NELBO on held-out text. The finished run is an
ordinary masked run: `sunfish sample TARGET --sampler.speculate draft --sampler.draft RUN`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from sunfish.config import ModelConfig, ProcessConfig, ProcessKind, RunConfig, apply_tree, load_preset
from sunfish.fileio import write_text_atomic
from sunfish.process.masked import LossOutput, corrupt, sample_times
from sunfish.process.schedules import MaskSchedule

SIZES = {"half": 2, "quarter": 4}  # width and depth divided by


def draft_model_config(target: ModelConfig, size: str) -> ModelConfig:
    """The draft's network: TARGET's divided (`half`, `quarter`) or a preset's model section, with TARGET's
    vocabulary, context, time conditioning and layout (what the sampler feeds both the same way)."""
    if size in SIZES:
        d = max(16, target.d_model // SIZES[size] // 16 * 16)
        heads = max(1, min(target.n_heads, d // 16))
        while d % heads:
            heads -= 1
        base = dataclasses.replace(target, d_model=d, n_layers=max(1, target.n_layers // SIZES[size]), n_heads=heads,
                                   n_kv_heads=0, d_ff=0)
    else:
        try:
            base = load_preset(size).model
        except Exception as err:
            raise ValueError(f"--size {size!r} is neither half, quarter nor a preset name ({err})") from None
    return dataclasses.replace(base, vocab_size=target.vocab_size, context=target.context, time_cond=target.time_cond,
                               time_steps=target.time_steps, layout=target.layout, attention=target.attention)


@dataclass
class DraftObjective:
    """The distillation loss; a plain object on the draft (`model.objective`), so the target is never saved."""

    target: torch.nn.Module = field(repr=False)

    def loss(self, model, x0: torch.Tensor, cfg: ProcessConfig, mask_id: int, generator: torch.Generator) -> LossOutput:
        """KL(target || draft) at the masked positions of x0 (B, L) noised by the target's process."""
        if next(self.target.parameters()).device != x0.device:
            self.target.to(x0.device)
        t = sample_times(x0.shape[0], cfg, generator).to(x0.device)  # (B,)
        zt, masked = corrupt(x0, t, MaskSchedule(cfg.mask_schedule, cfg.eps), mask_id, generator)  # (B, L) each
        with torch.no_grad():
            teacher = self.target.head(self.target.hidden(zt, t if self.target.needs_time else None)[masked])
            teacher = teacher.float().log_softmax(-1)  # (N, V)
        student = model.head(model.hidden(zt, t if model.needs_time else None)[masked]).float().log_softmax(-1)
        kl = F.kl_div(student, teacher, log_target=True, reduction="none").sum(-1)  # (N,)
        n = max(int(masked.sum()), 1)
        nll = F.nll_loss(student, x0[masked], reduction="sum").detach()
        return LossOutput(loss=kl.sum() / n, masked_tokens=int(masked.sum()), nll_sum=nll)


def draft_config(loaded, size: str, tree: dict | None) -> RunConfig:
    """The draft run's config: TARGET's process and training settings, the draft's network, `tree` on top."""
    from sunfish.flags import given_keys
    from sunfish.validate import validate

    if loaded.spec.name != "masked" or loaded.cfg.process.kind is not ProcessKind.MASKED:
        raise ValueError(f"draft distillation reads a masked diffusion target's predictions; this is "
                         f"{loaded.spec.a_label} model (train a masked draft on its tokenizer with `sunfish train`)")
    model = draft_model_config(loaded.cfg.model, size)
    process = dataclasses.replace(loaded.cfg.process, prompt_prob=0.0, cond_dropout=0.0, causal_warmup=0.0,
                                  mask_curriculum=0.0)
    cfg = dataclasses.replace(loaded.cfg, model=model, process=process)
    cfg = apply_tree(cfg, {"train": {"ema": 0.0}, **(tree or {})})
    validate(cfg, given_keys(tree or {}))
    return cfg


def train_draft(target: str | Path, out: str | Path, *, size: str = "half", data: list[str] | None = None,
                tree: dict | None = None, resume: bool = False, progress: bool = True,
                log: Callable[[str], None] = print):
    """Distil TARGET (a masked diffusion run) into a small draft model in the run folder `out` (module docstring);
    `tree`: {section: {field: value}} on top (train.steps, optim.lr, ...); `data`: the training text (default:
    the built-in story corpus), tokenized with TARGET's tokenizer. Returns the trainer's TrainResult."""
    from sunfish.loading import load_model
    from sunfish.model.transformer import build_model
    from sunfish.training.corpus import open_corpus
    from sunfish.training.loop import train

    loaded = load_model(target, "cpu")
    cfg = draft_config(loaded, size, tree)
    corpus = open_corpus(cfg, list(data) if data else None, loaded.tokenizer)
    teacher = loaded.model.eval().requires_grad_(False)

    def factory(model_cfg: ModelConfig, device) -> torch.nn.Module:
        model = build_model(model_cfg, device)
        model.objective = DraftObjective(teacher.to(device))
        return model

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "draft_of.json", json.dumps({"target": str(Path(target).resolve()), "size": size}) + "\n")
    return train(cfg, run_dir=out, resume=resume, progress=progress, log=log, corpus=corpus, model_factory=factory)
