"""From an OpenAI request to decoded rows and back: limits, canvases, seeds, final text, events.

A request becomes one `Row` per (prompt, choice); choice k (counted over all prompts) is decoded with seed
S + k, exactly as `sunfish.load(PATH).generate(prompt, seed=S + k)` decodes it alone. Each row's per-step
callback advances its `FinalText` (sample/stream.py) and, for a stream, sends text chunks and canvas events;
decoding ends early once the text has reached a stop token or stop string.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass, field

from sunfish.config import ConfigError, RemaskKind, SamplerConfig, ServeConfig
from sunfish.sample.prompt import PromptError, ids_canvas
from sunfish.sample.stream import Final, FinalText
from sunfish.serve.engine import Row, RowResult
from sunfish.serve.protocol import ApiError, ChatRequest, CompletionRequest


@dataclass
class Job:
    """One request's rows and what its answer needs."""

    chat: bool
    rows: list[Row]
    finals: list[FinalText]
    prompts: list[str]  # per row: the prompt text (for echo)
    prompt_tokens: int  # counted once per prompt
    seed: int
    echo: bool
    canvas: bool  # stream canvas events
    stream: bool
    usage_chunk: bool
    loop: asyncio.AbstractEventLoop | None = None
    events: asyncio.Queue | None = None
    results: list[Final | None] = field(default_factory=list)

    def send(self, event) -> None:
        """From a decoding thread: queue an event for the stream."""
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)


def sampler_settings(request, serve: ServeConfig, default_length: int) -> tuple[dict, bool]:
    """The request's sampler settings (checked against the server's limits) and whether to stream the canvas."""
    settings = dict(request.sunfish or {})
    canvas = settings.pop("stream_canvas", False)
    if not isinstance(canvas, bool):
        raise ApiError(400, "sunfish.stream_canvas must be true or false", param="sunfish.stream_canvas")
    if "length" in settings:
        raise ApiError(400, "give the length as max_tokens, not sunfish.length", param="sunfish.length")
    if "commit_model" in settings:  # a path on the server: chosen by whoever starts it, not by a client
        raise ApiError(400, "sunfish.commit_model names a file on the server; start the server with "
                       "--sampler.commit_model FILE (or keep commit_rule.safetensors in the checkpoint)",
                       param="sunfish.commit_model")
    limit = serve.max_tokens
    asked = getattr(request, "max_completion_tokens", None) or request.max_tokens
    if asked is not None and asked > limit:
        raise ApiError(400, f"max_tokens = {asked} is beyond this server's limit of {limit}; ask for fewer",
                       param="max_tokens")
    settings["length"] = asked or min(default_length, limit)
    for name in ("temperature", "top_p"):
        if getattr(request, name) is not None:
            settings[name] = getattr(request, name)
    return settings, canvas


def check_prompt(ids: list[int], length: int, context: int, serve: ServeConfig) -> int:
    """Tokens of the prompt; 413 over --max-prompt-tokens, 400 when prompt and reply exceed the context."""
    n = len(ids)
    bound = serve.max_prompt_tokens or context
    if n > bound:
        raise ApiError(413, f"the prompt has {n} tokens, more than this server's limit of {bound}; shorten it",
                       param="prompt", code="prompt_too_long")
    if n + length > context:
        raise ApiError(400, f"the prompt ({n} token{'' if n == 1 else 's'}) plus max_tokens {length} exceed the model's context of {context}; "
                       "shorten the prompt or lower max_tokens", param="max_tokens", code="context_length_exceeded")
    return n


def build_job(model, request: CompletionRequest | ChatRequest, serve: ServeConfig) -> Job:
    """Rows for every (prompt, choice) of the request, or an ApiError."""
    from sunfish.sample.chat import chat_format

    chat = isinstance(request, ChatRequest)
    settings, canvas = sampler_settings(request, serve, model.cfg.sampler.length)
    try:
        cfg = model.sampler(**settings)
    except (ConfigError, ValueError) as err:
        raise ApiError(400, str(err), param="sunfish") from None
    if request.n > serve.max_n:
        raise ApiError(400, f"n = {request.n} is beyond this server's limit of {serve.max_n}", param="n")
    tok, stops = model.tokenizer, request.stops()
    try:
        forms = [chat_format(tok, request.conversation())] if chat else None
    except ValueError as err:  # a PromptError, or a character the tokenizer does not have
        raise ApiError(400, str(err), param="messages") from None
    texts = [forms[0].prompt] if chat else request.prompts()
    rows_total = len(texts) * request.n
    if rows_total > serve.max_batch + serve.max_queue:
        raise ApiError(400, f"{rows_total} choices in one request are more than this server can hold "
                       f"({serve.max_batch + serve.max_queue}); ask for fewer")
    seed = request.seed if request.seed is not None else secrets.randbelow(2**31)
    job = Job(chat=chat, rows=[], finals=[], prompts=[], prompt_tokens=0, seed=seed, echo=getattr(request, "echo", False),
              canvas=canvas, stream=request.stream,
              usage_chunk=bool(request.stream_options and request.stream_options.include_usage))
    for text in texts:
        _add_rows(job, model, cfg, text, forms[0] if chat else None, stops, request.n, serve)
    return job


def _add_rows(job: Job, model, cfg: SamplerConfig, text: str, form, stops: list[str], n: int, serve: ServeConfig) -> None:
    tok, context = model.tokenizer, model.cfg.model.context
    try:
        ids = form.ids if form is not None else [tok.bos_id, *tok.encode(text)]
    except ValueError as err:  # a character the tokenizer does not have
        raise ApiError(400, str(err), param="prompt") from None
    job.prompt_tokens += check_prompt(ids, cfg.length, context, serve)
    try:
        canvas = ids_canvas(tok, ids, cfg.length, context)
    except PromptError as err:
        raise ApiError(400, str(err), param="prompt") from None
    stop_id = tok.eos_id if form is None or form.end_id is None else form.end_id
    live = model.spec.final_commits and cfg.remask is RemaskKind.NONE
    for _ in range(n):
        index = len(job.rows)
        final = FinalText(tok.decode, tok.mask_id, {tok.eos_id, stop_id}, [*stops, *(form.stops if form else ())], live)
        row = Row(ids=canvas.ids, fill_start=canvas.fill_start, cfg=cfg, seed=job.seed + index, stop_id=stop_id)
        row.on_step = _on_step(job, index, final, row, tok)
        job.rows.append(row)
        job.finals.append(final)
        job.prompts.append(text)


def _on_step(job: Job, index: int, final: FinalText, row: Row, tok):
    """The row's callback: advance its final text, send what a stream shows, say whether decoding can end."""

    def step(info) -> bool:
        region = info.tokens[0, row.fill_start:].tolist()
        delta = final.update(region)
        if job.stream and job.canvas:
            job.send(("canvas", canvas_event(index, info, row.fill_start, tok)))
        if job.stream and delta:
            job.send(("text", index, delta))
        return final.stopped

    return step


def canvas_event(index: int, info, fill_start: int, tok) -> dict:
    """What changed in the generated region at this step (docs/serving.md, "Streaming")."""
    revealed = info.revealed[0, fill_start:].nonzero().flatten().tolist()
    tokens = info.tokens[0, fill_start:]
    remasked = [] if info.remasked is None else info.remasked[0, fill_start:].nonzero().flatten().tolist()
    return {"event": "step", "index": index, "step": info.step,
            "committed": [[p, tok.token_text(int(tokens[p]))] for p in revealed],
            "remasked": remasked, "masked": int(info.masked[0, fill_start:].sum())}


def row_stats(index: int, result: RowResult, final: Final) -> dict:
    return {"index": index, "steps": result.steps, "nfe": result.nfe, "seconds": round(result.seconds, 4),
            "tokens_per_s": round(final.tokens / max(result.seconds, 1e-9), 1)}
