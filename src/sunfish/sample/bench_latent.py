"""The rows `sunfish bench sample --latent PATH` adds for models around a frozen LM: latent diffusion (LDLM, Cola)
at a few denoising step counts, and the VFM noise adapter's single pass.

A latent model writes a text of at most its context (`train.seq_len`) tokens, BOS and prompt included, so its
rows run only at the lengths that fit after the longest prompt (the others are left out with a note). It cannot
batch prompts of different lengths, so `bench.decode` runs each prompt length as its own batch. These rows have
no one-token-per-step output of their own to agree with: quality is the scorer's generative perplexity, and the
few-step target (TPF against the own one-token-per-step row) does not apply to them (bench_targets.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from sunfish.config import SamplerConfig
from sunfish.sample.bench_types import BenchError, Method

if TYPE_CHECKING:
    from sunfish.loading import LoadedModel

LATENT_ROLE = "latent"  # role names of latent models in run_bench's `models`: latent, latent2, ...
DEFAULT_LATENT_STEPS = (16, 64)  # denoising steps of the LDLM / Cola rows unless --latent-steps says otherwise


def latent_role(index: int) -> str:
    return LATENT_ROLE if index == 0 else f"{LATENT_ROLE}{index + 1}"


def is_latent_role(role: str) -> bool:
    return role.startswith(LATENT_ROLE)


def latent_methods(models: dict[str, LoadedModel], steps: Sequence[int]) -> list[Method]:
    """A row per denoising step count for each latent diffusion model, one row for a one-pass model (VFM)."""
    rows = []
    for role, loaded in models.items():
        if not is_latent_role(role):
            continue
        label = f"{loaded.spec.label} ({run_name(loaded.path)})"
        if loaded.spec.supports("steps"):
            rows += [Method(f"{label}, {s} denoising steps", role, SamplerConfig(steps=s), None, own_steps=True)
                     for s in steps]
        else:
            rows.append(Method(f"{label}, one pass", role, SamplerConfig(steps=1), None, own_steps=True))
    return rows


def run_name(path: Path) -> str:
    """The run folder's name of a checkpoint path (RUN/checkpoints/step-N -> RUN), else the path's own name."""
    path = Path(path)
    return path.parent.parent.name if path.parent.name == "checkpoints" else path.name


def latent_prompt_ids(loaded: LoadedModel, prompts: list[str]) -> list[list[int]]:
    """[BOS] + tokens of each prompt, whatever the model's context (`room` says what is left)."""
    return [[loaded.tokenizer.bos_id] + loaded.tokenizer.encode(p) for p in prompts]


def room(loaded: LoadedModel, rows: list[list[int]]) -> int:
    """Tokens a model can generate after the longest of the prompts `rows` ([BOS] + ids)."""
    return loaded.cfg.model.context - max(len(r) for r in rows)


def check_latent(loaded: LoadedModel, main: LoadedModel) -> None:
    """Refuse, in one sentence, a --latent model the benchmark cannot run beside `main`."""
    if not loaded.spec.frozen_base:
        raise BenchError(f"--latent '{loaded.path}' is {loaded.spec.a_label} model, not a latent one; pass a run of "
                         "--process ldlm, cola or vfm")
    if loaded.tokenizer.sha256() != main.tokenizer.sha256():
        raise BenchError(f"--latent '{loaded.path}' uses another tokenizer than '{main.path}'; train both on the "
                         "same tokenizer (the latent model's frozen base's)")
    if loaded.spec.supports("steps") and loaded.cfg.process.prompt_prob == 0:
        raise BenchError(f"--latent '{loaded.path}' was trained without prompts (process.prompt_prob = 0), so it cannot "
                         "continue the benchmark's prompts; train it with --process.prompt_prob > 0")


def latent_notes(models: dict[str, LoadedModel], prompts: list[str], lengths: list[int]) -> list[str]:
    """A note for each latent model and length its texts cannot hold after the longest prompt."""
    notes = []
    for role, loaded in models.items():
        if is_latent_role(role):
            left = room(loaded, latent_prompt_ids(loaded, prompts))
            held = f"its texts hold {left} tokens after the longest prompt" if left > 0 else \
                f"the longest prompt alone exceeds its texts of {loaded.cfg.model.context} tokens"
            notes += [f"the rows of '{loaded.path}' are left out at length {n}: {held}" for n in lengths if n > left]
    return notes
