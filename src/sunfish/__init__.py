"""Sunfish: diffusion language models end to end (train, sample, evaluate).

    import sunfish
    model = sunfish.load("runs/micro")
    print(model.generate("Once upon a time", max_new_tokens=64).text)

The names below are imported on first use, so `import sunfish` (and `sunfish --help`) stays fast.
"""

from __future__ import annotations

__all__ = ["load", "train", "distill", "train_draft", "doctor", "Model", "Generation", "RunConfig", "SamplerConfig",
           "load_preset"]

_WHERE = {"load": "sunfish.api", "train": "sunfish.api", "distill": "sunfish.api", "train_draft": "sunfish.api",
          "doctor": "sunfish.diagnose", "Model": "sunfish.api", "Generation": "sunfish.sample.text",
          "RunConfig": "sunfish.config", "SamplerConfig": "sunfish.config", "load_preset": "sunfish.config"}


def __getattr__(name: str):
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'sunfish' has no attribute '{name}'")
