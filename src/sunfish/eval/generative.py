"""Generation quality: generative perplexity under a reference causal LM, beside diversity and repetition.

Generative perplexity alone rewards dull, repetitive text (a sampler stuck on "the the the" scores well),
so it is always reported with
- distinct-n: unique word n-grams / all word n-grams, pooled over the samples (n = 1, 2, 3);
- unigram entropy: entropy (bits) of the pooled word distribution;
- repetition: the mean, over samples, of the fraction of word 4-grams already seen earlier in the sample.
The reference is a Sunfish causal checkpoint (`sunfish train --objective ar`) or any local Hugging Face
causal LM folder (loaded with transformers' AutoModelForCausalLM and AutoTokenizer).
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from typing import TYPE_CHECKING

from sunfish.config import EvalConfig
from sunfish.eval.fidelity import ngrams

if TYPE_CHECKING:
    from sunfish.loading import LoadedModel


class ReferenceError(ValueError):
    """The reference model cannot be used; the message is one sentence."""


# ---- diversity -----------------------------------------------------------------------------------------

def diversity(texts: list[str]) -> dict[str, float]:
    """distinct-1/2/3 and unigram entropy (bits) pooled over `texts`, and the mean within-sample repetition."""
    split = [t.split() for t in texts]
    out: dict[str, float] = {}
    for n in (1, 2, 3):
        grams = [g for words in split for g in ngrams(words, n)]
        out[f"distinct_{n}"] = len(set(grams)) / len(grams) if grams else 0.0
    counts = Counter(w for words in split for w in words)
    total = sum(counts.values())
    out["unigram_entropy"] = -sum(c / total * math.log2(c / total) for c in counts.values()) if total else 0.0
    reps = []
    for words in split:
        grams = ngrams(words, 4)
        if grams:
            reps.append(1.0 - len(set(grams)) / len(grams))
    out["repetition_4"] = sum(reps) / len(reps) if reps else 0.0
    return out


# ---- reference models ----------------------------------------------------------------------------------

class SunfishReference:
    """A Sunfish causal checkpoint: exact NLL of [BOS] text, text truncated to the context."""

    def __init__(self, loaded: LoadedModel):
        if not loaded.spec.causal:
            raise ReferenceError(f"the reference '{loaded.path}' is {loaded.spec.a_label} model; it must be "
                                 "causal: train one with `sunfish train --objective ar` or pass a Hugging Face causal LM folder")
        self.loaded = loaded
        self.name = f"sunfish:{loaded.path}"

        self.dropped_chars = 0  # characters of scored text the reference's character vocabulary lacks

    def _encode(self, text: str) -> list[int]:
        """Token ids of text; characters a character-level reference cannot encode are dropped and counted."""
        tok = self.loaded.tokenizer
        try:
            return tok.encode(text)
        except ValueError:
            known = "".join(c for c in text if tok.backend.token_to_id(c) is not None)
            self.dropped_chars += len(text) - len(known)
            return tok.encode(known)

    @torch.no_grad()
    def nats(self, text: str) -> tuple[float, int]:
        tok, model = self.loaded.tokenizer, self.loaded.model
        ids = [tok.bos_id, *self._encode(text)][: model.cfg.context]
        if len(ids) < 2:
            return 0.0, 0
        x = torch.tensor([ids], device=next(model.parameters()).device)
        logits = model(x[:, :-1]).float()  # (1, n - 1, V)
        return float(F.cross_entropy(logits[0], x[0, 1:], reduction="sum")), len(ids) - 1


class HuggingFaceReference:
    """A local transformers causal LM folder; text is prefixed with the tokenizer's BOS when it has one."""

    def __init__(self, folder: Path, device: torch.device):
        try:
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError:
            raise ReferenceError("a Hugging Face reference model needs transformers; pip install 'sunfish[eval]'") from None
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
            self.model = AutoModelForCausalLM.from_pretrained(str(folder)).to(device).eval()
        except (OSError, ValueError, KeyError) as err:
            raise ReferenceError(f"cannot load '{folder}' as a Hugging Face causal LM ({str(err).splitlines()[0]}); "
                                 "pass a folder with config.json, weights and a tokenizer") from None
        config = self.model.config
        self.max_len = int(getattr(config, "max_position_embeddings", 0) or getattr(config, "n_positions", 0) or 1024)
        self.device = device
        self.name = f"hf:{folder}"

    @torch.no_grad()
    def nats(self, text: str) -> tuple[float, int]:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        bos = self.tokenizer.bos_token_id
        ids = ([bos] if bos is not None else []) + list(ids)
        ids = ids[: self.max_len]
        if len(ids) < 2:
            return 0.0, 0
        x = torch.tensor([ids], device=self.device)
        logits = self.model(input_ids=x).logits[0, :-1].float()  # (n - 1, V)
        return float(F.cross_entropy(logits, x[0, 1:], reduction="sum")), len(ids) - 1


def load_reference(path: str | Path, device: torch.device) -> SunfishReference | HuggingFaceReference:
    """A Sunfish AR run/checkpoint folder, or a Hugging Face causal LM folder."""
    from sunfish.checkpoint.files import CheckpointError, SourceKind, source_kind
    from sunfish.loading import load_model

    path = Path(path)
    if not path.exists():
        raise ReferenceError(f"the reference model '{path}' does not exist; pass a Sunfish AR run folder or a Hugging Face model folder")
    try:
        if source_kind(path) is SourceKind.HF:
            return HuggingFaceReference(path, device)
        return SunfishReference(load_model(path, device))
    except CheckpointError:
        raise ReferenceError(f"'{path}' is neither a Sunfish run/checkpoint nor a Hugging Face model folder (no config.json); "
                             "pass one of those as --ref-model") from None


def generative_perplexity(ref, texts: list[str]) -> tuple[float, int]:
    """exp(total nats / total reference tokens) of `texts` under `ref`, and the token count."""
    nats, tokens = 0.0, 0
    for text in texts:
        n, k = ref.nats(text)
        nats, tokens = nats + n, tokens + k
    return (math.exp(nats / tokens) if tokens else float("nan")), tokens


# ---- the suite -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GenerationQuality:
    steps: int  # denoising steps (AR: one per token)
    samples: int
    length: int  # tokens per sample (before cutting at EOS)
    gen_perplexity: float | None  # None without a reference model
    reference: str | None
    distinct_1: float
    distinct_2: float
    distinct_3: float
    unigram_entropy: float  # bits
    repetition_4: float
    seconds_per_sample: float
    tokens_per_s: float
    nfe: float  # mean network evaluations per sample
    examples: list[str]  # the first few samples

    def as_json(self) -> dict:
        return dataclasses.asdict(self)


def step_counts(spec: str, length: int, is_ar: bool) -> list[int]:
    """Step counts from '16,64,256', capped at the sample length; an AR model takes one step per token."""
    if is_ar:
        return [length]
    try:
        asked = [int(s) for s in spec.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"eval.sample_steps = '{spec}' is not a comma-separated list of integers, e.g. 16,64,256") from None
    if not asked or min(asked) < 1:
        raise ValueError(f"eval.sample_steps = '{spec}' needs positive step counts, e.g. 16,64,256")
    return sorted({min(s, length) for s in asked})


def sample_texts(loaded: LoadedModel, n: int, length: int, steps: int, temperature: float, seed: int, batch_size: int = 8,
                 whole: bool = False):
    """n unprompted samples (sample i uses seed + i, whatever the batch size); returns (texts, seconds, nfe)
    with seconds summed over the batches and nfe summed over samples. `whole`: every sample fills its
    `length` tokens (no cut at EOS; generate_batch)."""
    from sunfish.sample.text import generate_batch

    cfg = dataclasses.replace(loaded.cfg.sampler, length=length, steps=steps, temperature=temperature)
    gens = generate_batch(loaded, [""] * n, cfg, seed=seed, batch_size=batch_size, whole=whole)
    seconds = sum(gens[i].seconds for i in range(0, n, batch_size))
    return [g.text for g in gens], seconds, sum(g.nfe for g in gens)


def generation_suite(loaded: LoadedModel, ref, cfg: EvalConfig, log=print) -> list[GenerationQuality]:
    """Sample at each step count and score the samples; `ref` None reports diversity only."""
    length = cfg.sample_length or loaded.cfg.sampler.length
    length = min(length, loaded.cfg.model.context - 1)
    results = []
    for steps in step_counts(cfg.sample_steps, length, loaded.spec.causal):
        try:
            texts, seconds, nfe = sample_texts(loaded, cfg.samples, length, steps, cfg.temperature, cfg.seed, cfg.batch_size)
        except ValueError as err:  # e.g. fewer steps than a block-diffusion model has blocks
            log(f"  {steps} steps: skipped ({err})")
            continue
        ppl = generative_perplexity(ref, texts)[0] if ref is not None else None
        div = diversity(texts)
        results.append(GenerationQuality(
            steps=steps, samples=len(texts), length=length, gen_perplexity=ppl, reference=ref.name if ref else None,
            seconds_per_sample=seconds / len(texts), tokens_per_s=length * len(texts) / max(seconds, 1e-9),
            nfe=nfe / len(texts), examples=texts[:3], **div))
        shown = f"gen. perplexity {ppl:.2f}, " if ppl is not None else ""
        log(f"  {steps} steps: {shown}distinct-1/2/3 {div['distinct_1']:.3f}/{div['distinct_2']:.3f}/{div['distinct_3']:.3f}")
    return results
