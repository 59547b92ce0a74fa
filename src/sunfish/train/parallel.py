"""Wrappers applied to a built model from outside (the model code knows nothing of them)."""

from __future__ import annotations

from sunfish.model.transformer import Transformer


def apply_compile(model: Transformer) -> None:
    """torch.compile each block in place: static (B, L, D) shapes, fused elementwise work.

    The loss's masked output head has a data-dependent shape and stays eager.
    """
    for block in model.blocks:
        block.compile()
