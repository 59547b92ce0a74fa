"""Continuous batching without a sampler of its own: the network's forward passes of concurrent decodes merged.

Every request row decodes in its own thread through the ordinary sampler (sunfish.registry.decode), with the
network replaced by a `MergedForward`. A thread that calls `hidden(...)` waits; once every decoding thread is
waiting (or has finished), their calls run as batched passes and each thread gets its own rows back. So a
row that arrives while others decode joins them at their next step, a finished row leaves, and each row's
sampler sees exactly the hidden states it would see alone: nothing of the sampling loop is copied here.

Calls merge when their passes are the same computation on other rows:
* full passes over token canvases (no cache, or a fresh cache being filled) with the model's own attention
  pattern and positions: canvases of different lengths are padded on the right, padding keys hidden from every
  query (a causal model already hides them); positions stay 0..L-1, so real positions see what they saw alone;
* any other calls (cached span passes, explicit masks or positions, continuous inputs) when their shapes,
  spans and cache lengths agree: stacked along the batch.
The rest run one after another in the same round. A fresh cache filled by a merged pass gets its own rows'
keys and values (cut to its length); a span pass that commits (block diffusion) gets its rows back likewise.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

import torch

from sunfish.model.kv_cache import KVCache


@dataclass(eq=False)
class _Call:
    tokens: torch.Tensor | None  # (b, L)
    t: torch.Tensor | None  # (b,)
    cache: KVCache | None
    kw: dict  # attn_mask, positions, embeds
    done: threading.Event = field(default_factory=threading.Event)
    out: torch.Tensor | None = None
    error: BaseException | None = None

    @property
    def rows(self) -> int:
        return (self.tokens if self.tokens is not None else self.kw["embeds"]).shape[0]

    @property
    def fresh(self) -> bool:
        """A full pass: no cache, or an empty cache it fills."""
        return self.cache is None or (self.cache.span is None and not self.cache.filled)

    def paddable(self) -> bool:
        return self.fresh and self.tokens is not None and not self.kw

    def key(self) -> tuple:
        """Calls with equal keys stack along the batch as they are."""
        c = self.cache
        cache = None if c is None else (c.span, c.commit, c.filled and tuple(c.keys[0].shape[1:]))
        kw = tuple(sorted((k, tuple(v.shape[1:]) if _per_row(k, v) else tuple(v.shape)) for k, v in self.kw.items()))
        body = self.tokens if self.tokens is not None else self.kw["embeds"]
        return (tuple(body.shape[1:]), self.t is None, cache, kw, self.tokens is None)


class MergedForward:
    """Stands in for the network in the samplers of concurrent decoding threads (see the module docstring).
    Attributes other than `hidden` and `forward` are the network's own."""

    def __init__(self, model: torch.nn.Module, on_round: Callable[[int, float], None] | None = None):
        self.model = model
        self.on_round = on_round  # (rows, seconds) after each merged round, for metrics
        self._lock = threading.Lock()
        self._members = 0
        self._waiting: list[_Call] = []
        self._local = threading.local()  # per member thread: its pass count

    def __getattr__(self, name: str):
        return getattr(self.__dict__["model"], name)

    def __call__(self, tokens, t=None, kv_cache=None, **kw) -> torch.Tensor:
        return self.model.head(self.hidden(tokens, t, kv_cache, **kw))

    forward = __call__

    @contextmanager
    def member(self):
        """The calling thread decodes through this object until the block ends."""
        with self._lock:
            self._members += 1
        self._local.passes = 0
        try:
            yield self
        finally:
            with self._lock:
                self._members -= 1
                batch = self._take_if_ready()
            if batch:
                self._run(batch)

    def passes(self) -> int:
        """Network passes the calling member thread has made since it joined."""
        return getattr(self._local, "passes", 0)

    def hidden(self, tokens, t=None, kv_cache=None, **kw) -> torch.Tensor:
        self._local.passes = self.passes() + 1
        call = _Call(tokens, t, kv_cache, {k: v for k, v in kw.items() if v is not None})
        with self._lock:
            self._waiting.append(call)
            batch = self._take_if_ready()
        if batch:
            self._run(batch)
        call.done.wait()
        if call.error is not None:
            raise call.error
        return call.out

    def _take_if_ready(self) -> list[_Call]:
        """Under the lock: the waiting calls, once every member is waiting."""
        if self._waiting and len(self._waiting) >= self._members:
            batch, self._waiting = self._waiting, []
            return batch
        return []

    def _run(self, calls: list[_Call]) -> None:
        began = time.perf_counter()
        try:
            with torch.inference_mode():
                for group in _groups(calls):
                    _run_group(self.model, group)
        except BaseException as err:  # every waiting thread hears of it
            for call in calls:
                if not call.done.is_set():
                    call.error = err
        finally:
            for call in calls:
                call.done.set()
        if self.on_round is not None:
            self.on_round(sum(c.rows for c in calls), time.perf_counter() - began)


def _groups(calls: list[_Call]) -> list[list[_Call]]:
    """Padded full passes together; the others by key."""
    padded = [c for c in calls if c.paddable()]
    groups: dict[tuple, list[_Call]] = {}
    for c in calls:
        if not c.paddable():
            groups.setdefault(c.key(), []).append(c)
    return ([padded] if padded else []) + list(groups.values())


def _run_group(model, group: list[_Call]) -> None:
    if len(group) == 1:
        c = group[0]
        c.out = model.hidden(c.tokens, c.t, c.cache, **c.kw)
    elif group[0].paddable():
        _run_padded(model, group)
    else:
        _run_stacked(model, group)


def _cat(values: list[torch.Tensor | None]) -> torch.Tensor | None:
    return None if values[0] is None else torch.cat(values)


def _run_padded(model, group: list[_Call]) -> None:
    """Full passes over canvases of different lengths, padded on the right to the longest."""
    lengths = [c.tokens.shape[1] for c in group]
    width = max(lengths)
    device = group[0].tokens.device
    tokens = torch.cat([torch.nn.functional.pad(c.tokens, (0, width - n)) for c, n in zip(group, lengths)])
    real = torch.cat([(torch.arange(width, device=device) < n).expand(c.rows, width) for c, n in zip(group, lengths)])
    kw = {}
    if any(n != width for n in lengths):
        pattern = torch.ones(width, width, dtype=torch.bool, device=device)
        if _causal(model):
            pattern = pattern.tril()
        eye = torch.eye(width, dtype=torch.bool, device=device)
        kw["attn_mask"] = ((pattern[None] & real[:, None, :]) | eye)[:, None]  # (B, 1, W, W)
    fill = any(c.cache is not None for c in group)
    cache = KVCache() if fill else None
    h = model.hidden(tokens, _cat([c.t for c in group]), cache, **kw)  # (B, W, D)
    _hand_back(group, h, cache, lengths)


def _run_stacked(model, group: list[_Call]) -> None:
    """Calls of one key: the same computation on more rows (a shared mask or position tensor must be equal in
    all of them, else they run one by one)."""
    first = group[0]
    shared = [n for n, v in first.kw.items() if not _per_row(n, v)]
    if any(not torch.equal(c.kw[n], first.kw[n]) for c in group[1:] for n in shared):
        for c in group:
            _run_group(model, [c])
        return
    cache = None
    if first.cache is not None:
        cache = KVCache(span=first.cache.span, commit=first.cache.commit)
        if first.cache.filled:
            cache.keys = [torch.cat(k) for k in zip(*(c.cache.keys for c in group))]
            cache.values = [torch.cat(v) for v in zip(*(c.cache.values for c in group))]
    kw = {n: torch.cat([c.kw[n] for c in group]) if _per_row(n, v) else v for n, v in first.kw.items()}
    tokens = None if first.tokens is None else torch.cat([c.tokens for c in group])
    h = model.hidden(tokens, _cat([c.t for c in group]), cache, **kw)
    _hand_back(group, h, cache, None)


def _per_row(name: str, value: torch.Tensor) -> bool:
    """Does this keyword tensor have a batch dimension? (embeds (B, L, D), masks (B, 1, L, K), positions (B, L))"""
    return name == "embeds" or value.dim() >= 3 or (name == "positions" and value.dim() == 2)


def _hand_back(group: list[_Call], h: torch.Tensor, cache: KVCache | None, lengths: list[int] | None) -> None:
    """Each call's rows of the hidden states (and of the cache it filled or committed to)."""
    row = 0
    for i, c in enumerate(group):
        rows = slice(row, row + c.rows)
        n = h.shape[1] if lengths is None else lengths[i]
        c.out = h[rows, :n]
        if c.cache is not None and cache is not None and (c.fresh or c.cache.commit):
            keys = n if lengths is not None else cache.keys[0].shape[2]
            c.cache.keys = [k[rows, :, :keys] for k in cache.keys]
            c.cache.values = [v[rows, :, :keys] for v in cache.values]
        row += c.rows


def _causal(model) -> bool:
    """Does the network attend causally when given no mask?"""
    from sunfish.config import AttentionKind

    return getattr(getattr(model, "cfg", None), "attention", None) is AttentionKind.CAUSAL
