"""The Python API: what a user scripts against; `sunfish <verb>` and (later) the server are thin layers over it.

    import sunfish
    model = sunfish.load("runs/micro")                       # a run, checkpoint or exported folder
    out = model.generate("Once upon a time", max_new_tokens=64, temperature=0.8, seed=1)
    print(out.text, out.steps, out.nfe, out.seconds)          # str(out) is the text; out.ids the new tokens
    reply = model.chat("Hi!", on_text=lambda piece: print(piece, end="", flush=True))  # streamed as committed
    filled = model.infill("Once upon a [MASK:4] there was a cat.")
    model.train_commit_rule(length=64)                        # the learned commit rule's filter, then:
    fast = model.generate("Once upon a time", rule="learned")  # (or commit_model="file.safetensors")
    scores = model.score(["The cat sat on the mat."])         # nats per token, perplexity, bits per byte
    result = sunfish.train("nano", out="runs/nano", steps=200)
    fast = sunfish.distill("runs/nano", out="runs/nano-fast", mode="trajectory", round_steps=300)
    sunfish.train_draft("runs/micro", out="runs/micro-draft", steps=300)  # then generate(..., speculate="draft",
    #                                                                       draft="runs/micro-draft", draft_len=4)

Sampler settings are the fields of `SamplerConfig` (steps, rule, temperature, cache, ...), given as keyword
arguments; the checkpoint's own defaults (tune-sampler's choice) apply to the rest. A setting the model's
process does not use is refused in one sentence (sunfish/validate.py), as on the command line.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from sunfish.config import (CommitRule, ConfigError, EvalConfig, RunConfig, SamplerConfig, apply_section, apply_tree,
                            load_preset)
from sunfish.loading import LoadedModel, load_model
from sunfish.sample.learned import FILE_NAME as COMMIT_FILE, load_filter
from sunfish.sample.text import Generation, generate, generate_batch, infill
from sunfish.validate import check_sampler, validate


@dataclass
class Model(LoadedModel):
    """A loaded model with everything that runs on it (see the module docstring)."""

    def sampler(self, **settings: Any) -> SamplerConfig:
        """The checkpoint's sampler defaults with `settings` (SamplerConfig fields; strings are converted),
        refused in one sentence where this model's process or network cannot use them."""
        cfg = apply_section(self.cfg.sampler, "sampler", settings)
        cfg = self._own_commit_model(cfg)
        check_sampler(self.spec, cfg, settings, self.unavailable)
        if cfg.rule is CommitRule.LEARNED and self.spec.supports("rule"):
            load_filter(cfg.commit_model)  # a missing or foreign file is refused before any work
        return cfg

    def _own_commit_model(self, cfg: SamplerConfig) -> SamplerConfig:
        """The learned rule without a commit_model file takes the checkpoint's own commit_rule.safetensors."""
        own = Path(self.path) / COMMIT_FILE
        if cfg.rule is CommitRule.LEARNED and not cfg.commit_model and own.is_file():
            return dataclasses.replace(cfg, commit_model=str(own))
        return cfg

    def generate(self, prompt: str | Sequence[str], max_new_tokens: int | None = None, *, seed: int = 0,
                 batch_size: int = 8, trace: str | Path | None = None, drift: bool = False,
                 on_text: Callable[[str], Any] | None = None, **settings: Any) -> Generation | list[Generation]:
        """Continue `prompt` (a string: one Generation; a list: one per prompt, prompt i seeded with seed + i
        and decoded `batch_size` at a time, each exactly as it would be alone) with `max_new_tokens` tokens
        (default: the checkpoint's sampler length). `trace` writes the denoising as a .gif or .mp4; `drift`
        reports how far an approximate cache's predictions were from exact ones. `on_text(piece)` is called with
        the text after the prompt as it becomes final (committed left to right; under remasking and for
        continuous or flow models, all at the end); the pieces put together are the text after the prompt."""
        if max_new_tokens is not None:
            settings["length"] = max_new_tokens
        cfg = self.sampler(**settings)
        if drift and (cfg.cache.value == "none" or not self.spec.supports("cache")):
            raise ConfigError("drift measures the approximate key/value cache of masked diffusion models; "
                              "sample with --cache prefix or --cache dual")
        if isinstance(prompt, str):
            return generate(self, prompt, cfg, seed=seed, trace=_path(trace), drift=drift, on_text=on_text)
        if trace is not None or drift or on_text is not None:
            raise ConfigError("trace, drift and on_text follow one prompt; generate a single prompt to use them")
        return generate_batch(self, list(prompt), cfg, seed=seed, batch_size=batch_size)

    def chat(self, conversation: str | Sequence[dict], max_new_tokens: int | None = None, *, system: str | None = None,
             seed: int = 0, trace: str | Path | None = None, on_text: Callable[[str], Any] | None = None,
             **settings: Any) -> Generation:
        """The assistant's reply to `conversation` (a user message, or [{"role", "content"}, ...] turns) through
        the tokenizer's chat template; it stops at the template's end-of-turn token and `text` is the reply.
        `on_text(piece)` receives the reply as it becomes final, as for `generate`."""
        from sunfish.sample.chat import as_messages
        from sunfish.sample.text import chat

        if max_new_tokens is not None:
            settings["length"] = max_new_tokens
        return chat(self, as_messages(conversation, system), self.sampler(**settings), seed=seed, trace=_path(trace),
                    on_text=on_text)

    def infill(self, text: str, *, seed: int = 0, trace: str | Path | None = None, **settings: Any) -> Generation:
        """Fill each `[MASK:n]` span (`[MASK]` = one token) of `text`, keeping the text around the spans."""
        for name in ("length", "stop_at_eos"):
            if name in settings:
                raise ConfigError(f"infill fills the spans of the text; sampler.{name} does not apply to it")
        return infill(self, text, self.sampler(**settings), seed=seed, trace=_path(trace))

    def score(self, texts: str | Sequence[str], *, seed: int = 0, rel_se: float = 0.01, min_rounds: int = 4,
              max_rounds: int = 64, batch_size: int = 16):
        """Likelihood of each text under the model: a LikelihoodResult per text (one for a string) with
        nats_per_token, perplexity, bits_per_byte and the Monte Carlo standard error (exact for causal
        models; an upper bound on -log p for the diffusion processes)."""
        from sunfish.eval.likelihood import evaluate_likelihood, held_out

        cfg = EvalConfig(seed=seed, rel_se=rel_se, min_rounds=min_rounds, max_rounds=max_rounds, batch_size=batch_size)
        seq_len = min(self.cfg.train.seq_len or self.cfg.model.context, self.cfg.model.context)
        results = [evaluate_likelihood(self.model, self.cfg.process, self.tokenizer.mask_id,
                                       held_out([t], self.tokenizer, seq_len), cfg)
                   for t in ([texts] if isinstance(texts, str) else texts)]
        return results[0] if isinstance(texts, str) else results


    def train_commit_rule(self, prompts: Sequence[str] | None = None, *, out: str | Path | None = None,
                          precision: float = 0.9, end_precision: float = 0.99, epochs: int = 300, seed: int = 0,
                          reference: SamplerConfig | None = None, log: Callable[[str], Any] = lambda line: None,
                          **settings: Any):
        """Train the learned commit rule's filter (sample/commit_tune.py) on the exact sampler's decoding of
        `prompts` (default: built-in story openings), or `reference`'s, for these sampler `settings` (length,
        block_length, ...), and write it to `out` (default: the checkpoint's own commit_rule.safetensors, which
        `generate(..., rule="learned")` then finds); returns a CommitTuneResult with the figures."""
        from sunfish.sample.commit_tune import train_commit_rule

        return train_commit_rule(self, prompts, self.sampler(**settings), out=out, reference=reference,
                                 precision=precision, end_precision=end_precision, epochs=epochs, seed=seed, log=log)

def _path(value: str | Path | None) -> Path | None:
    return None if value is None else Path(value)


def load(path: str | Path, *, device: str = "auto", dtype: str = "auto", quantize: str = "none",
         ema: bool | None = None, threads: int = 0) -> Model:
    """Open a run folder, a checkpoint, an exported folder, an adapted run or the Hugging Face folder of a public
    diffusion LM (LLaDA, Dream) for inference on `device` (auto: CUDA when available), weights in `dtype` (auto:
    bf16 on CUDA, fp32 on the CPU; fp32, bf16, fp16), optionally quantized (`quantize`: none, int8, int4).
    `ema` None: the averaged weights when the run kept them."""
    from sunfish.runtime import setup_runtime

    rt = setup_runtime(device, threads=threads)
    loaded = load_model(path, rt.device, ema=ema, dtype=dtype)
    if quantize != "none":
        from sunfish.quantize import quantize as quantize_weights

        quantize_weights(loaded.model, quantize, rt.device)
    return Model(**{f.name: getattr(loaded, f.name) for f in dataclasses.fields(loaded) if f.init})


def train(config: RunConfig | str = "nano", *, out: str | Path, data: Sequence[str] | None = None,
          resume: bool = False, progress: bool = True, log: Callable[[str], None] = print,
          overrides: dict[str, dict[str, Any]] | None = None, given: Sequence[str] = (), **train_settings: Any):
    """Train (or, with `resume`, continue) a model into the run folder `out`; returns a TrainResult.

    `config`: a RunConfig or a preset name; `overrides`: {section: {field: value}} applied on top;
    `train_settings`: TrainConfig fields (steps=, batch_size=, seed=, ...). `data`: .txt/.jsonl files or
    folders, a `sunfish data prepare` folder, or the folder or URL of tar shards (`data prepare --format tar`;
    `overrides={"data": {"mix": ...}}` sets their weights) (default: the built-in story corpus). Settings the chosen
    process does not use are refused (sunfish/validate.py): those in `overrides` and `train_settings`, and
    the dotted keys in `given` (what the command line set in `config` already)."""
    from sunfish.flags import given_keys
    from sunfish.training.loop import train as run_training

    cfg = load_preset(config) if isinstance(config, str) else config
    tree = {section: dict(values) for section, values in (overrides or {}).items()}
    if train_settings:
        tree.setdefault("train", {}).update(train_settings)
    cfg = apply_tree(cfg, tree)
    spec = validate(cfg, [*given, *given_keys(tree)])
    if spec.frozen_base:  # a latent model around a frozen LM: its corpus and network come from the base
        from sunfish.adapt.latent import latent_train

        return latent_train(cfg, run_dir=Path(out), data=list(data) if data else None, resume=resume,
                            progress=progress, log=log)
    return run_training(cfg, run_dir=Path(out), data=list(data) if data else None, resume=resume, progress=progress,
                        log=log)


def train_draft(target: str | Path, *, out: str | Path, size: str = "half", data: Sequence[str] | None = None,
                resume: bool = False, progress: bool = True, log: Callable[[str], None] = print,
                overrides: dict[str, dict[str, Any]] | None = None, **train_settings: Any):
    """Distil the masked diffusion run `target` into a small draft model for speculative decoding in the run folder
    `out` (training/draft.py); `size`: half | quarter | a preset name; `train_settings`: TrainConfig fields
    (steps=, batch_size=, ...), `overrides`: {section: {field: value}}. Returns the trainer's TrainResult."""
    from sunfish.training.draft import train_draft as run_draft

    tree = {section: dict(values) for section, values in (overrides or {}).items()}
    if train_settings:
        tree.setdefault("train", {}).update(train_settings)
    return run_draft(target, out, size=size, data=list(data) if data else None, tree=tree, resume=resume,
                     progress=progress, log=log)


def distill(teacher: str | Path, *, out: str | Path, data: Sequence[str] | None = None, resume: bool = False,
            progress: bool = True, log: Callable[[str], None] = print,
            overrides: dict[str, dict[str, Any]] | None = None, **distill_settings: Any):
    """Distil the masked or block run `teacher` into the run folder `out` so it decodes in fewer steps; returns a
    TrainResult. `distill_settings`: DistillConfig fields (mode="sdtt" | "trajectory", rounds=, round_steps=,
    steps_start=, gen_length=, ...); `overrides`: {section: {field: value}} for the train, optim, data and distill
    sections. `data`: training text (default: the built-in stories). Settings that do nothing for the chosen mode or
    teacher are refused in one sentence (distillation/run.py)."""
    from sunfish.distillation.run import distill as run_distill

    tree = {section: dict(values) for section, values in (overrides or {}).items()}
    if distill_settings:
        tree.setdefault("distill", {}).update(distill_settings)
    return run_distill(teacher, out=out, data=list(data) if data else None, tree=tree, resume=resume,
                       progress=progress, log=log)
