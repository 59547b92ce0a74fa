"""The HTTP layer: OpenAI-compatible routes, the web page, health and metrics, over one loaded model.

`build_app(model, serve)` returns the FastAPI application; `Service` holds the engine and answers requests.
The routes parse, call the engine and format; they keep no sampling logic (engine.py, merge.py run the
ordinary samplers). Errors are answered in OpenAI's shape with their status (docs/serving.md).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import json
import logging
import sys
import time
import typing
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from sunfish.config import SamplerConfig, ServeConfig, choices, field_help
from sunfish.serve.engine import Cancelled, Engine, QueueFull, ShuttingDown
from sunfish.serve.jobs import Job, build_job, row_stats
from sunfish.serve.metrics import Metrics
from sunfish.serve.protocol import ApiError, ChatRequest, CompletionRequest, envelope, new_id, parse, sse

STATIC = Path(__file__).parent / "static"
OPEN_PATHS = ("/health", "/", "/favicon.ico")  # never need the key (the page's files under /static/ neither)
log = logging.getLogger("sunfish.serve")


class Service:
    """One model behind the API."""

    def __init__(self, model, serve: ServeConfig):
        self.model, self.serve = model, serve
        self.name = serve.name or _folder_name(Path(str(model.path)))
        self.metrics = Metrics()
        self.engine = Engine(model, serve.max_batch, serve.max_queue, on_round=self.metrics.round)
        self.metrics.watch(self.engine)
        self.closing = False

    def drain(self) -> int:
        """Refuse new work (503), let running requests finish within the grace period, cancel the rest."""
        self.closing = True
        return self.engine.drain(self.serve.grace)

    def check_model(self, name: str | None) -> None:
        if name is not None and name != self.name:
            raise ApiError(404, f"the model '{name}' does not exist here; this server serves '{self.name}'",
                           param="model", code="model_not_found")

    def submit(self, job: Job) -> list[concurrent.futures.Future]:
        try:
            return self.engine.submit(job.rows)
        except QueueFull as err:
            raise ApiError(429, f"the server is busy: {err}", code="queue_full",
                           headers={"Retry-After": str(self.serve.retry_after)}) from None
        except ShuttingDown:
            raise ApiError(503, "the server is shutting down; retry on another instance", code="shutting_down") from None

    async def answer(self, request: CompletionRequest | ChatRequest) -> Response:
        self.check_model(request.model)
        job = build_job(self.model, request, self.serve)
        if job.stream:
            job.loop, job.events = asyncio.get_running_loop(), asyncio.Queue()
        futures = self.submit(job)
        if not job.stream:
            return JSONResponse(await self._collect(job, futures))
        return StreamingResponse(self._stream(job, futures), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def _collect(self, job: Job, futures) -> dict:
        results = await asyncio.gather(*(asyncio.wrap_future(f) for f in futures), return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                raise _row_error(r)
        rid = new_id("chatcmpl" if job.chat else "cmpl")
        choices_, stats, completion = [], [], 0
        for index, (result, final) in enumerate(zip(results, job.finals)):
            _, end = final.finish(result.region)
            completion += end.tokens
            text = (job.prompts[index] if job.echo else "") + end.text
            body = {"message": {"role": "assistant", "content": text}} if job.chat else {"text": text, "logprobs": None}
            choices_.append({"index": index, **body, "finish_reason": end.finish_reason})
            stats.append(row_stats(index, result, end))
        self.metrics.generated(completion)
        return envelope("chat.completion" if job.chat else "text_completion", rid, self.name, choices_,
                        usage=_usage(job.prompt_tokens, completion), sunfish={"seed": job.seed, "choices": stats})

    async def _stream(self, job: Job, futures):
        rid, kind = new_id("chatcmpl" if job.chat else "cmpl"), "chat.completion.chunk" if job.chat else "text_completion"

        def chunk(index: int, text: str | None, finish: str | None, role: bool = False) -> bytes:
            if job.chat:
                delta = {"role": "assistant", "content": ""} if role else ({"content": text} if text else {})
                body = {"index": index, "delta": delta, "finish_reason": finish, "logprobs": None}
            else:
                body = {"index": index, "text": text or "", "finish_reason": finish, "logprobs": None}
            return sse(envelope(kind, rid, self.name, [body]))

        def extension(event: dict) -> bytes:
            return sse(envelope(kind, rid, self.name, [], sunfish=event))

        for index, future in enumerate(futures):
            future.add_done_callback(lambda f, i=index: job.send(("done", i, f)))
        completion, remaining = 0, len(futures)
        try:
            for index, row in enumerate(job.rows):
                if job.chat:
                    yield chunk(index, None, None, role=True)
                elif job.echo:
                    yield chunk(index, job.prompts[index], None)
                if job.canvas:
                    yield extension({"event": "start", "index": index, "length": len(row.ids) - row.fill_start,
                                     "prompt_tokens": row.fill_start, "seed": row.seed})
            while remaining:
                event = await job.events.get()
                if event[0] == "text":
                    yield chunk(event[1], event[2], None)
                elif event[0] == "canvas":
                    yield extension(event[1])
                else:
                    remaining -= 1
                    index, future = event[1], event[2]
                    if future.exception() is not None:
                        yield sse(_row_error(future.exception()).body())
                        continue
                    result = future.result()
                    delta, end = job.finals[index].finish(result.region)
                    completion += end.tokens
                    yield chunk(index, delta, end.finish_reason)
                    if job.canvas:
                        yield extension({"event": "done", "finish_reason": end.finish_reason, **row_stats(index, result, end)})
            self.metrics.generated(completion)
            if job.usage_chunk:
                yield sse(envelope(kind, rid, self.name, [], usage=_usage(job.prompt_tokens, completion)))
            yield sse("[DONE]")
        finally:  # finished, or the client went away: nothing more to decode
            for row in job.rows:
                row.cancelled.set()

    def info(self) -> dict:
        """What the web page builds its controls from."""
        hints = typing.get_type_hints(SamplerConfig)
        fields = {}
        for f in dataclasses.fields(SamplerConfig):
            if f.name in ("length", "commit_model") or not self.model.spec.supports(f.name):  # a file: the server's
                continue
            options = list(self.model.spec.choices.get(f.name, choices(hints[f.name]) or ())) or None
            kind = "choice" if options else {int: "int", float: "float", bool: "bool"}.get(hints[f.name], "str")
            bounds = {k: f.metadata[k2] for k, k2 in (("min", "lo"), ("max", "hi")) if f.metadata.get(k2) is not None}
            fields[f.name] = {"type": kind, "help": field_help(SamplerConfig, f.name), **bounds,
                              **({"choices": options} if options else {})}
        defaults = json.loads(json.dumps(dataclasses.asdict(self.model.cfg.sampler), default=lambda e: e.value))
        context = self.model.cfg.model.context
        block = self.model.cfg.process.block_size if self.model.spec.fixed_blocks else 0
        return {"model": self.name, "process": self.model.spec.label, "chat": True, "block_size": block,
                "sampler": {k: v for k, v in defaults.items() if k in fields or k == "length"}, "fields": fields,
                "limits": {"max_tokens": min(self.serve.max_tokens, context), "context": context,
                           "max_prompt_tokens": self.serve.max_prompt_tokens or context, "max_n": self.serve.max_n},
                "auth": bool(self.serve.api_key)}


def _folder_name(path: Path) -> str:
    """A run's name for its checkpoints (runs/nano/checkpoints/step-000200 -> nano), else the folder's name."""
    return path.parent.parent.name if path.parent.name == "checkpoints" else path.name


def _usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _row_error(err: BaseException) -> ApiError:
    if isinstance(err, Cancelled):
        return ApiError(503, "the server stopped before this request finished; retry", code="shutting_down")
    if isinstance(err, ValueError):
        return ApiError(400, str(err))
    log.exception("decoding failed", exc_info=err)
    return ApiError(500, f"decoding failed: {type(err).__name__}: {err}")


def _error_response(err: ApiError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


def build_app(model, serve: ServeConfig | None = None) -> FastAPI:
    """The ASGI application serving `model` (a `sunfish.load` Model) under the limits of `serve`."""
    service = Service(model, serve or ServeConfig())
    app = FastAPI(title="Sunfish", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service
    _add_guard(app, service)
    _add_errors(app)

    @app.get("/health")
    async def health():
        if service.closing:
            return JSONResponse({"status": "shutting down"}, status_code=503)
        return {"status": "ok", "model": service.name, "decoding": service.engine.decoding,
                "waiting": service.engine.waiting}

    @app.get("/metrics")
    async def metrics():
        return Response(service.metrics.text(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [_model_card(service)]}

    @app.get("/v1/models/{name:path}")
    async def model_card(name: str):
        service.check_model(name)
        return _model_card(service)

    @app.get("/v1/sunfish")
    async def info():
        return service.info()

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await service.answer(parse(CompletionRequest, await _body(request, service.serve.max_body)))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await service.answer(parse(ChatRequest, await _body(request, service.serve.max_body)))

    @app.get("/")
    async def page():
        if not (STATIC / "index.html").exists():
            raise ApiError(404, "this installation has no web page files (sunfish/serve/static)")
        return FileResponse(STATIC / "index.html")

    if STATIC.is_dir():
        from fastapi.staticfiles import StaticFiles

        app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def _model_card(service: Service) -> dict:
    return {"id": service.name, "object": "model", "created": int(time.time()), "owned_by": "sunfish",
            "process": service.model.spec.label, "context": service.model.cfg.model.context}


async def _body(request: Request, limit: int) -> bytes:
    """The request body, 413 beyond `limit` bytes (read in chunks, so a chunked upload cannot grow past it)."""
    body = bytearray()
    async for piece in request.stream():
        body += piece
        if len(body) > limit:
            raise ApiError(413, f"the request body is over this server's limit of {limit} bytes", code="body_too_large")
    return bytes(body)


def _add_guard(app: FastAPI, service: Service) -> None:
    """Shutdown, the API key and the declared body size are checked before any route; every request is logged
    (one JSON line) and counted."""

    @app.middleware("http")
    async def guard(request: Request, call_next):
        began = time.perf_counter()
        path = request.url.path
        try:
            _admit(request, service)
            response = await call_next(request)
        except ApiError as err:
            response = _error_response(err)
        route = path if path.startswith("/v1/") or path in OPEN_PATHS or path == "/metrics" else "other"

        def done() -> None:
            seconds = time.perf_counter() - began
            service.metrics.answered(route, response.status_code, seconds)
            access(request, response.status_code, seconds)

        if response.headers.get("content-type", "").startswith("text/event-stream"):
            response.body_iterator = _then(response.body_iterator, done)  # a stream is done after its last event
        else:
            done()
        return response


async def _then(events, done):
    try:
        async for event in events:
            yield event
    finally:
        done()


def _admit(request: Request, service: Service) -> None:
    path = request.url.path
    if service.closing and path != "/health":
        raise ApiError(503, "the server is shutting down; retry on another instance", code="shutting_down")
    key = service.serve.api_key
    if key and path not in OPEN_PATHS and not path.startswith("/static/"):
        import hmac

        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {key}".encode()):
            raise ApiError(401, "a missing or wrong API key; send 'Authorization: Bearer KEY'", code="invalid_api_key")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > service.serve.max_body:
        raise ApiError(413, f"the request body is over this server's limit of {service.serve.max_body} bytes",
                       code="body_too_large")


def access(request: Request, status: int, seconds: float) -> None:
    """One structured access-log line per request."""
    client = request.client.host if request.client else None
    log.info(json.dumps({"ts": round(time.time(), 3), "client": client, "method": request.method,
                         "path": request.url.path, "status": status, "ms": round(seconds * 1000, 1)}))


def _add_errors(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, err: ApiError):
        return _error_response(err)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException):
        message = "no such path; see docs/serving.md for the endpoints" if err.status_code == 404 else str(err.detail)
        return _error_response(ApiError(err.status_code, message))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, err: Exception):
        log.exception("request failed", exc_info=err)
        return _error_response(ApiError(500, f"the server failed on this request: {type(err).__name__}: {err}"))


def setup_logging() -> None:
    """Access lines and errors to stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
