"""`sunfish serve PATH`: the HTTP API and web page (docs/serving.md).

`register(verbs)` adds the verb; `dispatch(args)` runs it and returns its exit code, or None for a verb
that is not ours."""

from __future__ import annotations

import argparse

from sunfish.config import SamplerConfig, ServeConfig
from sunfish.flags import add_runtime, add_section, given

SHORT = ("host", "port", "api_key", "name", "max_batch", "max_queue", "max_tokens", "max_prompt_tokens", "max_n",
         "max_body", "grace")


def register(verbs: argparse._SubParsersAction) -> None:
    s = verbs.add_parser("serve", help="serve a model: OpenAI-compatible HTTP API, streamed denoising, web page",
                         description="Opens the model once and serves it until SIGTERM or Ctrl+C (docs/serving.md). "
                                     "Needs the serve extra: pip install -e .[serve]")
    s.add_argument("path", help="run folder, checkpoint, exported folder, adapted run, or a LLaDA/Dream folder")
    add_runtime(s)
    s.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0 = torch's default)")
    add_section(s, ServeConfig, short=SHORT)
    add_section(s, SamplerConfig, note="the server's defaults, over the checkpoint's; every request may override them",
                defaults=False)
    s.set_defaults(config_sections={"serve": None, "sampler": None})


def dispatch(args: argparse.Namespace) -> int | None:
    if args.verb != "serve":
        return None
    try:
        import fastapi  # noqa: F401
        import prometheus_client  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as err:
        raise OSError(f"sunfish serve needs {err.name}; install the serve extra: pip install -e .[serve]") from None
    import sunfish
    from sunfish.serve import run

    settings = given(args, ("serve", "sampler"))
    model = sunfish.load(args.path, device=args.device, dtype=args.dtype, quantize=args.quantize, threads=args.threads)
    return run(model, sampler=settings.get("sampler"), **settings.get("serve", {}))
