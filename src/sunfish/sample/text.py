"""Text in, text out: prompted generation (one prompt or a batch) and infilling on a loaded checkpoint.

`generate` and `chat` take `on_text`, a function called with each piece of text as soon as it is final (the
committed left-to-right prefix, sample/stream.py); the pieces put together are the returned text (after the
prompt, for `generate`)."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import torch

from sunfish.config import RemaskKind, SamplerConfig
from sunfish.registry import SPECS, DecodeJob, decode
from sunfish.sample.draft_model import open_draft
from sunfish.sample.batch import Generators, Padding, left_pad, row_generators
from sunfish.sample.prompt import Canvas, PromptError, cut_at_eos, ids_canvas, infill_canvas, prompt_canvas, to_batch
from sunfish.sample.stream import FinalText

if TYPE_CHECKING:
    from sunfish.loading import LoadedModel


@dataclass(frozen=True)
class Generation:
    """What a generation or an infill produced; str() of it is the text."""

    text: str  # generated text (prompted) or the completed text (infill)
    fills: list[str]  # infill only: the text of each filled span
    steps: int
    nfe: int
    seconds: float
    tokens_per_s: float  # generated tokens per second of sampling
    trace: str | None  # path of the written trace, if any
    drift: list = field(default_factory=list)  # per cached step (sample.unmask.Drift), when asked for
    ids: list[int] = field(default_factory=list)  # generated token ids (prompted: after the prompt, cut at EOS;
    #                                               infill: the ids written into the spans)
    refreshes: list[int] = field(default_factory=list)  # full passes of the approximate cache per block (none without)
    speculation: dict = field(default_factory=dict)  # speculative decoding: draft_nfe, accepted, proposed, canvases

    def __str__(self) -> str:
        return self.text

    def as_json(self) -> dict:
        body = {"text": self.text, "steps": self.steps, "nfe": self.nfe,
                "seconds": round(self.seconds, 4), "tokens_per_s": round(self.tokens_per_s, 1)}
        if self.refreshes:
            body["refreshes"] = self.refreshes
        if self.speculation:
            body |= self.speculation
        if self.drift:
            body["drift"] = [dataclasses.asdict(d) for d in self.drift]
        return body


class TextStream:
    """A sampler callback that passes the final text of one canvas's generated region to `on_text` as it grows:
    after every step when committed tokens never change (`live`), else all of it at the end (`finish`)."""

    def __init__(self, loaded: LoadedModel, cfg: SamplerConfig, fill_start: int, stop_ids: Sequence[int],
                 stops: Sequence[str], on_text: Callable[[str], object]):
        tok = loaded.tokenizer
        live = loaded.spec.final_commits and cfg.remask is RemaskKind.NONE
        self.final = FinalText(tok.decode, tok.mask_id, stop_ids, stops, live)
        self.fill_start, self.on_text = fill_start, on_text

    def __call__(self, info) -> None:
        delta = self.final.update(info.tokens[0, self.fill_start :].tolist())
        if delta:
            self.on_text(delta)

    def finish(self, text: str) -> None:
        """Send the rest of `text`, the generation's final text, which begins with all sent so far (unless the
        tokenizer's decoding rewrote text already sent, as a clean-up of spaces before punctuation can; then the
        pieces stay short of it)."""
        sent = self.final.sent
        if len(text) > len(sent) and text.startswith(sent):
            self.on_text(text[len(sent) :])


def _stream(loaded: LoadedModel, cfg: SamplerConfig, fill_start: int, stop_ids: Sequence[int], stops: Sequence[str],
            on_text: Callable[[str], object] | None) -> TextStream | None:
    return None if on_text is None else TextStream(loaded, cfg, fill_start, stop_ids, stops, on_text)


def _each(*callbacks):
    """One sampler callback that calls each of `callbacks` that is not None (None when none is)."""
    given = [c for c in callbacks if c is not None]
    if len(given) < 2:
        return given[0] if given else None

    def each(info) -> None:
        for c in given:
            c(info)

    return each


def _run(loaded: LoadedModel, canvas: Canvas, cfg: SamplerConfig, seed: int, trace: Path | None,
         stop: int | None = None, drift: bool = False, on_step: TextStream | None = None):
    """Decode one canvas; `stop`: the token id that ends generation (EOS, or a chat template's end of turn);
    `on_step`: a callback after each step (besides the trace's)."""
    device = next(loaded.model.parameters()).device
    x = to_batch(canvas, 1, device)
    tok = loaded.tokenizer
    generator = torch.Generator(device=device).manual_seed(seed)
    recorder = None
    if trace is not None:
        from sunfish.sample.trace import TraceRecorder

        recorder = TraceRecorder(tok.token_text, start=1)  # everything after BOS; the prompt shows muted
        recorder.start(x, x == tok.mask_id)
    began = time.perf_counter()
    result = decode_canvas(loaded, x, canvas.fill_start, cfg, generator, recorder=_each(recorder, on_step), eos_id=stop,
                           drift=drift)
    seconds = time.perf_counter() - began
    written = None
    if recorder is not None:
        from sunfish.sample.trace import write_trace

        title = f"{cfg.rule.value} / {cfg.policy.value}, {result.steps} steps, T={cfg.temperature:g}"
        written = str(write_trace(recorder.frames, trace, title=title))
    return result, seconds, written


def never_sampled(tok) -> tuple[int, ...]:
    """Special tokens that are never text a sampler should write: PAD, BOS, UNK (EOS stays: it ends text)."""
    ids = {tok.pad_id, tok.bos_id, getattr(tok, "unk_id", None)}
    return tuple(sorted(i for i in ids if i is not None and i != tok.eos_id))


def decode_canvas(loaded: LoadedModel, x: torch.Tensor, fill_start: int, cfg: SamplerConfig, generator: Generators, *,
            padding: Padding | None = None, recorder=None, eos_id: int | None = None, drift: bool = False):
    """Run the checkpoint's sampler (the registry's, for its process) on canvas x (B, L) whose columns from
    `fill_start` on may change."""
    job = DecodeJob(mask_id=loaded.tokenizer.mask_id, process=loaded.cfg.process, generator=generator,
                    padding=padding, callback=recorder, eos_id=eos_id, suppress=never_sampled(loaded.tokenizer),
                    drift=drift, draft=open_draft(loaded, cfg))
    return decode(loaded.model, x, fill_start, cfg, job, mixed_batches=loaded.mixed_batches)


def generate(loaded: LoadedModel, prompt: str, cfg: SamplerConfig, seed: int = 0, trace: Path | None = None,
             drift: bool = False, on_text: Callable[[str], object] | None = None) -> Generation:
    """Continue `prompt` with `cfg.length` tokens; the text is cut at the first EOS. `on_text` receives the text
    after the prompt as it becomes final (see the module docstring)."""
    tok = loaded.tokenizer
    canvas = prompt_canvas(tok, prompt, cfg.length, loaded.cfg.model.context)
    stream = _stream(loaded, cfg, canvas.fill_start, (tok.eos_id,), (), on_text)
    result, seconds, written = _run(loaded, canvas, cfg, seed, trace, stop=tok.eos_id, drift=drift, on_step=stream)
    ids = cut_at_eos(result.tokens[0, canvas.fill_start :].tolist(), tok.eos_id)
    text = tok.decode(ids)
    if stream is not None:
        stream.finish(text)
    return Generation(text=prompt + text, fills=[], steps=result.steps, nfe=result.nfe,
                      seconds=seconds, tokens_per_s=cfg.length / max(seconds, 1e-9), trace=written, drift=result.drift,
                      ids=ids, refreshes=result.refreshes, speculation=speculation_of(result))


def chat(loaded: LoadedModel, messages: list[dict], cfg: SamplerConfig, seed: int = 0,
         trace: Path | None = None, on_text: Callable[[str], object] | None = None) -> Generation:
    """The assistant's reply to `messages` (the tokenizer's chat template, or the plain-text default: see
    sample/chat.py), `cfg.length` tokens at most; generation stops at the template's end-of-turn token (or EOS)
    and the text is the reply alone, cut at the default template's next turn. `on_text` receives the reply as
    it becomes final (see the module docstring)."""
    from sunfish.sample.chat import chat_format

    tok = loaded.tokenizer
    form = chat_format(tok, messages)
    canvas = ids_canvas(tok, form.ids, cfg.length, loaded.cfg.model.context)
    stop = tok.eos_id if form.end_id is None else form.end_id
    stream = _stream(loaded, cfg, canvas.fill_start, (tok.eos_id, stop), form.stops, on_text)
    result, seconds, written = _run(loaded, canvas, cfg, seed, trace, stop=stop, on_step=stream)
    ids = cut_at_eos(result.tokens[0, canvas.fill_start :].tolist(), tok.eos_id, stop)
    text = cut_at_stops(tok.decode(ids), form.stops)
    if stream is not None:
        stream.finish(text)
    return Generation(text=text, fills=[], steps=result.steps, nfe=result.nfe, seconds=seconds,
                      tokens_per_s=cfg.length / max(seconds, 1e-9), trace=written, ids=ids,
                      refreshes=result.refreshes, speculation=speculation_of(result))


def speculation_of(result) -> dict:
    """A speculative decode's counts (empty for the plain samplers)."""
    if not (result.proposed or result.draft_nfe or result.canvases):
        return {}
    return {"draft_nfe": result.draft_nfe, "accepted": result.accepted, "proposed": result.proposed,
            "canvases": result.canvases}


def cut_at_stops(text: str, stops: Sequence[str]) -> str:
    """`text` before the first occurrence of any of `stops`."""
    return text[: min((text.index(s) for s in stops if s in text), default=len(text))]


def generate_batch(loaded: LoadedModel, prompts: Sequence[str], cfg: SamplerConfig, seed: int = 0,
                   batch_size: int = 8, whole: bool = False) -> list[Generation]:
    """Continue each prompt, `batch_size` at a time; prompt i uses seed + i, so its text is the one
    `generate(loaded, prompts[i], cfg, seed + i)` gives, whatever the batch size or the other prompts.
    `whole`: fill the whole canvas and keep it (no stop at EOS, no cut after it; the text drops special tokens),
    so every sample has the same number of generated tokens (what fixed-length generative perplexity scores).

    Prompts of different lengths share a batch right-aligned, with the padding hidden from attention and
    RoPE positions starting at each row's first token (batch.py). `seconds` and `tokens_per_s` are the batch's.
    """
    if batch_size < 1:
        raise ValueError("--batch-size must be at least 1")
    if not prompts:
        raise ValueError("no prompts to continue; give at least one prompt")
    tok = loaded.tokenizer
    device = next(loaded.model.parameters()).device
    cfg = dataclasses.replace(cfg, stop_at_eos=False) if whole else cfg
    canvases = [prompt_canvas(tok, p, cfg.length, loaded.cfg.model.context) for p in prompts]
    out: list[Generation] = []
    for first in range(0, len(prompts), batch_size):
        chunk = canvases[first : first + batch_size]
        x, padding = left_pad([c.ids for c in chunk], tok.pad_id, device)
        fill_start = x.shape[1] - cfg.length
        generators = row_generators([seed + first + j for j in range(len(chunk))], device)
        began = time.perf_counter()
        result = decode_canvas(loaded, x, fill_start, cfg, generators, padding=padding, eos_id=tok.eos_id)
        seconds = time.perf_counter() - began
        for j, prompt in enumerate(prompts[first : first + batch_size]):
            ids = result.tokens[j, fill_start:].tolist()
            ids = ids if whole else cut_at_eos(ids, tok.eos_id)
            out.append(Generation(text=prompt + tok.decode(ids), fills=[], steps=result.steps, nfe=result.nfe,
                                  seconds=seconds, tokens_per_s=len(chunk) * cfg.length / max(seconds, 1e-9),
                                  trace=None, ids=ids, refreshes=result.refreshes,
                                  speculation=speculation_of(result)))
    return out


def infill(loaded: LoadedModel, text: str, cfg: SamplerConfig, seed: int = 0, trace: Path | None = None) -> Generation:
    """Fill each `[MASK:n]` span of `text`; the known text around the spans is kept."""
    tok = loaded.tokenizer
    if not loaded.spec.infill:
        able = ", ".join(s.label for s in SPECS.values() if s.infill)
        raise PromptError(f"this is {loaded.spec.a_label} model, which generates only after a prompt; infilling "
                          f"needs a model that fills masks anywhere ({able})")
    canvas = infill_canvas(tok, text, loaded.cfg.model.context)
    result, seconds, written = _run(loaded, canvas, cfg, seed, trace)
    out = result.tokens[0].tolist()
    holes = [i for i, t in enumerate(canvas.ids) if t == tok.mask_id]
    spans: list[list[int]] = []
    for i in holes:
        if spans and spans[-1][-1] == i - 1:
            spans[-1].append(i)
        else:
            spans.append([i])
    fills = [tok.decode([out[i] for i in span]) for span in spans]
    return Generation(text=tok.decode(out[1:]), fills=fills, steps=result.steps, nfe=result.nfe,
                      seconds=seconds, tokens_per_s=len(holes) / max(seconds, 1e-9), trace=written,
                      ids=[out[i] for i in holes], refreshes=result.refreshes, speculation=speculation_of(result))
