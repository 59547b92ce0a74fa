"""Sampling a latent diffusion LM (LDLM, arXiv 2605.07933): DDIM (or DDPM) over the K latents, then decoding.

The K latents start as N(0, I) and run the reverse process of `sample.continuous.ddim_sample` with the
DiT's clean-latent estimate; the text is the decoder's argmax (through the frozen LM's head) of the last
estimate. With a prompt (a model trained with `process.prompt_prob` > 0) the DiT attends to the frozen LM's
states of the prompt at every step, and the prompt's positions are kept as written. A callback (the trace
writer, streaming) sees the decoding of every step's clean-latent estimate.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from sunfish.config import ProcessConfig, SamplerConfig, Solver
from sunfish.process.continuous import GaussianSchedule
from sunfish.process.ldlm import LatentLM, x0_of
from sunfish.sample.continuous import ddim_sample, time_grid
from sunfish.sample.unmask import SampleResult, StepInfo


def _prompt(model: LatentLM, canvas: torch.Tensor, fill_start: int, process: ProcessConfig):
    """(prompt states (B, P, D_base), lengths (B,)) for the DiT, or (None, None) without a prompt."""
    if fill_start <= 1:  # nothing but BOS: an unconditional sample
        return None, None
    if process.prompt_prob == 0:
        raise ValueError("this LDLM model was trained without prompts (process.prompt_prob = 0), so it cannot "
                         "continue one; sample it without --prompt or train with --process.prompt_prob > 0")
    prompt = model.states(canvas[:, :fill_start]).float()
    return prompt, torch.full((canvas.shape[0],), fill_start, device=canvas.device)


@torch.no_grad()
def ldlm_generate(model: LatentLM, canvas: torch.Tensor, fill_start: int, mask_id: int, cfg: SamplerConfig,
                  process: ProcessConfig, *, generator, suppress: Sequence[int] = (),
                  callback: Callable[[StepInfo], None] | None = None) -> SampleResult:
    """Fill canvas (B, L) from column `fill_start` on: latents from noise, decoded to L tokens."""
    if cfg.solver not in (Solver.AUTO, Solver.DDIM, Solver.DDPM):
        raise ValueError(f"--solver {cfg.solver.value} is for flow models; an LDLM model takes ddim or ddpm")
    B, L = canvas.shape
    if L > model.cfg.context:
        raise ValueError(f"an LDLM model decodes texts of at most {model.cfg.context} tokens (its context); "
                         f"this canvas has {L}: lower --length")
    if not bool((canvas[:, fill_start:] == mask_id).all()):
        raise ValueError("an LDLM model generates a whole text after a prompt; it cannot fill masks inside a text")
    schedule = GaussianSchedule(process.noise_schedule)
    prompt, prompt_len = _prompt(model, canvas, fill_start, process)
    known = canvas != mask_id
    shape = (B, process.latents, process.latent_dim)
    dtype = next(model.parameters()).dtype
    eta = 1.0 if cfg.solver is Solver.DDPM else cfg.eta
    state = {"tokens": canvas}

    def to_tokens(z0: torch.Tensor) -> torch.Tensor:
        logits = model.logits(z0, L).float()  # (B, L, V)
        if suppress:
            logits[..., list(suppress)] = float("-inf")
        return torch.where(known, canvas, logits.argmax(-1))

    def on_step(k: int, z0: torch.Tensor) -> None:
        tokens = to_tokens(z0)
        callback(StepInfo(step=k, tokens=tokens, masked=torch.zeros_like(known), revealed=tokens != state["tokens"]))
        state["tokens"] = tokens

    _, z0 = ddim_sample(lambda z, t, _: x0_of(model, z, t, process, schedule, prompt, prompt_len),
                        torch.zeros(shape, device=canvas.device, dtype=dtype),
                        torch.zeros(shape[:2], dtype=torch.bool, device=canvas.device), time_grid(cfg.steps),
                        schedule, eta, generator, on_step=on_step if callback is not None else None)
    return SampleResult(tokens=state["tokens"] if callback is not None else to_tokens(z0), steps=cfg.steps, nfe=cfg.steps)
