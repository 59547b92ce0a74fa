"""Text in, text out: prompted generation and infilling on a loaded checkpoint, with optional trace."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sunfish.config import ProcessKind, SamplerConfig
from sunfish.process.schedules import Schedule
from sunfish.sample.prompt import Canvas, cut_at_eos, infill_canvas, prompt_canvas, to_batch
from sunfish.sample.ar import ar_generate
from sunfish.sample.block import block_generate
from sunfish.sample.unmask import unmask
from sunfish.train.checkpoint import LoadedModel


@dataclass(frozen=True)
class Generation:
    text: str  # generated text (prompted) or the completed text (infill)
    fills: list[str]  # infill only: the text of each filled span
    steps: int
    nfe: int
    seconds: float
    tokens_per_s: float  # generated tokens per second of sampling
    trace: str | None  # path of the written trace, if any
    drift: list = field(default_factory=list)  # per cached step (sample.unmask.Drift), when asked for

    def as_json(self) -> dict:
        body = {"text": self.text, "steps": self.steps, "nfe": self.nfe,
                "seconds": round(self.seconds, 4), "tokens_per_s": round(self.tokens_per_s, 1)}
        if self.drift:
            body["drift"] = [dataclasses.asdict(d) for d in self.drift]
        return body


def _run(loaded: LoadedModel, canvas: Canvas, cfg: SamplerConfig, seed: int, trace: Path | None,
         eos: bool = False, drift: bool = False):
    device = next(loaded.model.parameters()).device
    x = to_batch(canvas, 1, device)
    tok = loaded.tokenizer
    generator = torch.Generator(device=device).manual_seed(seed)
    recorder = None
    if trace is not None:
        from sunfish.sample.trace import TraceRecorder

        recorder = TraceRecorder(tok.token_text, start=1)  # everything after BOS; the prompt shows muted
        recorder.start(x, x == tok.mask_id)
    schedule = Schedule(loaded.cfg.process.schedule, loaded.cfg.process.eps)
    began = time.perf_counter()
    eos_id = tok.eos_id if eos else None
    block = loaded.cfg.process.block_size
    if loaded.cfg.process.kind is ProcessKind.AR:
        result = ar_generate(loaded.model, x[:, : canvas.fill_start], x.shape[1] - canvas.fill_start, cfg,
                             generator=generator, mask_id=tok.mask_id, callback=recorder, eos_id=eos_id)
    elif block > 0 and canvas.fill_start > 0 and (x[:, canvas.fill_start :] == tok.mask_id).all():
        # a block-diffusion model continues its prompt block by block with an exact cache
        result = block_generate(loaded.model, x[:, : canvas.fill_start], x.shape[1] - canvas.fill_start, tok.mask_id,
                                block, cfg, generator=generator, schedule=schedule, callback=recorder, eos_id=eos_id)
    else:
        result = unmask(loaded.model, x, tok.mask_id, cfg, generator=generator, schedule=schedule, callback=recorder,
                        eos_id=eos_id, track_drift=drift)
    seconds = time.perf_counter() - began
    written = None
    if recorder is not None:
        from sunfish.sample.trace import write_trace

        title = f"{cfg.schedule.value} / {cfg.policy.value}, {result.steps} steps, T={cfg.temperature:g}"
        written = str(write_trace(recorder.frames, trace, title=title))
    return result, seconds, written


def generate(loaded: LoadedModel, prompt: str, cfg: SamplerConfig, seed: int = 0, trace: Path | None = None,
             drift: bool = False) -> Generation:
    """Continue `prompt` with `cfg.length` tokens; the text is cut at the first EOS."""
    tok = loaded.tokenizer
    canvas = prompt_canvas(tok, prompt, cfg.length, loaded.cfg.model.context)
    result, seconds, written = _run(loaded, canvas, cfg, seed, trace, eos=True, drift=drift)
    ids = cut_at_eos(result.tokens[0, canvas.fill_start :].tolist(), tok.eos_id)
    return Generation(text=prompt + tok.decode(ids), fills=[], steps=result.steps, nfe=result.nfe,
                      seconds=seconds, tokens_per_s=cfg.length / max(seconds, 1e-9), trace=written, drift=result.drift)


def infill(loaded: LoadedModel, text: str, cfg: SamplerConfig, seed: int = 0, trace: Path | None = None) -> Generation:
    """Fill each `[MASK:n]` span of `text`; the known text around the spans is kept."""
    tok = loaded.tokenizer
    if loaded.cfg.process.kind is ProcessKind.AR:
        raise ValueError("this is an autoregressive model; infilling needs a masked diffusion model")
    if loaded.cfg.process.block_size > 0:
        raise ValueError("this is a block-diffusion model, which generates left to right; infilling needs a masked "
                         "diffusion model (trained with --process.block_size=0)")
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
                      seconds=seconds, tokens_per_s=len(holes) / max(seconds, 1e-9), trace=written)
