"""Wrappers applied to a built model from outside (the model code knows nothing of them)."""

from __future__ import annotations

import shutil
from typing import Callable

from sunfish.model.transformer import Transformer


def apply_compile(model: Transformer, log: Callable[[str], None] = print) -> bool:
    """torch.compile each block in place: static (B, L, D) shapes, fused elementwise work.

    The loss's masked output head has a data-dependent shape and stays eager. On CPU, Inductor needs a
    C++ compiler; without one the model stays uncompiled (with a note) rather than failing mid-run.
    """
    device = next(model.parameters()).device
    if device.type == "cpu" and not (shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")):
        log("note: torch.compile needs a C++ compiler on CPU and none was found; training uncompiled "
            "(install g++ or pass --train.compile=false to silence this)")
        return False
    for block in model.blocks:
        block.compile()
    return True
