"""`sunfish serve`: an OpenAI-compatible HTTP API, streamed denoising and a web page over the Python API
(app.py), with continuous batching through the ordinary samplers (engine.py, merge.py). See docs/serving.md.

    import sunfish.serve
    sunfish.serve.run("runs/nano", port=8000)                      # blocks until SIGTERM / Ctrl+C
    app = sunfish.serve.build_app(sunfish.load("runs/nano"))       # the ASGI app, to mount elsewhere
"""

from __future__ import annotations

import dataclasses
import socket
import sys
import threading
from pathlib import Path
from typing import Any, Callable


def build_app(model, serve=None):
    """The FastAPI application for a loaded model (see app.build_app)."""
    from sunfish.serve.app import build_app as build

    return build(model, serve)


def run(model: Any, *, device: str = "auto", dtype: str = "auto", quantize: str = "none",
        sampler: dict | None = None, ready: Callable[[str], None] | None = None, **serve_fields: Any) -> int:
    """Serve `model` (a path `sunfish.load` opens, or a loaded Model) until SIGTERM or Ctrl+C; returns 0 after a
    graceful drain. `serve_fields`: ServeConfig fields (host, port, api_key, max_batch, ...); `sampler`: the
    server's sampler defaults over the checkpoint's (SamplerConfig fields); `ready(url)` is called once listening."""
    from sunfish.config import ServeConfig, apply_section

    serve = apply_section(ServeConfig(), "serve", serve_fields)
    if isinstance(model, (str, Path)):
        import sunfish

        model = sunfish.load(model, device=device, dtype=dtype, quantize=quantize)
    if sampler:
        model.cfg = dataclasses.replace(model.cfg, sampler=model.sampler(**sampler))
    from sunfish.serve.app import build_app as build, setup_logging

    setup_logging()
    app = build(model, serve)
    sock = _listen(serve.host, serve.port)
    host, port = sock.getsockname()[:2]
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    server = _server(app, app.state.service)
    print(f"sunfish: serving {app.state.service.name} ({model.spec.label}) at {url}/v1, web page at {url}/ "
          f"(max batch {serve.max_batch}{', API key required' if serve.api_key else ''})", flush=True)
    if ready is not None:
        ready(url)
    server.run(sockets=[sock])
    return 0


def _listen(host: str, port: int) -> socket.socket:
    """A bound TCP socket (port 0: a free one), or one sentence on why not."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    if sys.platform != "win32":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)  # connections wait in the backlog until the server takes them
    except OSError as err:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port} ({err.strerror}); pick another --port or --host") from None
    return sock


def _server(app, service):
    """A uvicorn server whose first SIGTERM/SIGINT drains the service (running requests finish within the grace
    period, new ones get 503) before it exits; a second one exits at once."""
    import uvicorn

    class Server(uvicorn.Server):
        draining = False

        def handle_exit(self, sig, frame):
            if self.draining:
                self.force_exit = True
                return
            self.draining = True
            threading.Thread(target=self._drain, name="sunfish-drain", daemon=True).start()

        def _drain(self):
            cancelled = service.drain()
            print(f"sunfish: stopped ({cancelled} unfinished requests answered 503)", file=sys.stderr, flush=True)
            self.should_exit = True

    return Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                                 timeout_graceful_shutdown=5))
