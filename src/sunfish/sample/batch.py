"""Batches whose rows behave like batches of one: a random stream per row and left padding.

Given one generator per row, a sampler draws row b's noise from generators[b] alone, and only on steps
where row b still has work, so a row's draws do not depend on its neighbours or on the batch size.
Prompts of different lengths are right-aligned (padding on the left): every row's generated region
occupies the same columns, so blocks and steps line up across rows, while `Padding` keeps the padding out
of attention and starts each row's RoPE positions at 0 on its first real token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

import torch

Generators = Union[torch.Generator, Sequence[torch.Generator]]


def row_generators(seeds: Sequence[int], device: torch.device | str) -> list[torch.Generator]:
    """One seeded generator per row."""
    return [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]


def uniform(shape: tuple[int, ...], generator: Generators, *, dtype: torch.dtype = torch.float32,
            rows: torch.Tensor | None = None) -> torch.Tensor:
    """U[0, 1) noise of `shape` (B, ...) on the generator's device.

    One generator: one draw for the whole batch. One generator per row: row b comes from generator[b] and
    is drawn only where rows[b] (B,) is True; skipped rows hold 0.5 and leave their generator untouched.
    """
    if isinstance(generator, torch.Generator):
        return torch.rand(shape, generator=generator, device=generator.device, dtype=dtype)
    if len(generator) != shape[0]:
        raise ValueError(f"{len(generator)} generators for a batch of {shape[0]} rows; pass one generator per row")
    device = generator[0].device
    out = torch.full(shape, 0.5, dtype=dtype, device=device)
    for b, g in enumerate(generator):
        if rows is None or bool(rows[b]):
            out[b] = torch.rand(shape[1:], generator=g, device=device, dtype=dtype)
    return out


@dataclass(frozen=True)
class Padding:
    """Left padding of right-aligned rows: row b's real tokens start at column pad[b]."""

    pad: torch.Tensor  # (B,) long, padding columns before each row's first real token

    @staticmethod
    def of(lengths: Sequence[int], device: torch.device | str = "cpu") -> Padding | None:
        """Padding for rows of these real lengths, or None when they are all equally long."""
        width = max(lengths)
        if all(n == width for n in lengths):
            return None
        return Padding(torch.tensor([width - n for n in lengths], dtype=torch.long, device=device))

    def real(self, width: int) -> torch.Tensor:
        """(B, width) True on real tokens, False on padding."""
        return torch.arange(width, device=self.pad.device)[None, :] >= self.pad[:, None]

    def positions(self, lo: int, hi: int) -> torch.Tensor:
        """RoPE positions (B, hi - lo) of columns [lo, hi): 0 at each row's first real token (padding: 0)."""
        return (torch.arange(lo, hi, device=self.pad.device)[None, :] - self.pad[:, None]).clamp_min(0)

    def attention(self, lo: int, hi: int, keys: int | None = None) -> dict:
        """`Transformer.hidden` keyword arguments for queries at columns [lo, hi) over keys 0..keys - 1
        (default hi): padding keys are hidden from every query."""
        return {"attn_mask": self.real(hi if keys is None else keys)[:, None, None, :], "positions": self.positions(lo, hi)}

    def square(self, allowed: torch.Tensor) -> torch.Tensor:
        """A full pass's mask (B, 1, L, L) from a pattern `allowed` (L, L) or (B, L, L): padding keys removed,
        and each position may always attend to itself, so no query (not even a padding one) sees nothing."""
        L = allowed.shape[-1]
        eye = torch.eye(L, dtype=torch.bool, device=allowed.device)
        return ((allowed & self.real(L)[:, None, :]) | eye)[:, None]


def left_pad(rows: Sequence[Sequence[int]], pad_id: int, device: torch.device | str) -> tuple[torch.Tensor, Padding | None]:
    """Right-align token rows into one (B, W) tensor, padded on the left with pad_id."""
    width = max(len(r) for r in rows)
    x = torch.tensor([[pad_id] * (width - len(r)) + list(r) for r in rows], dtype=torch.long, device=device)
    return x, Padding.of([len(r) for r in rows], device)
