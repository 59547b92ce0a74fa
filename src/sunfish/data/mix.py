"""Mixing weights: how often the sampler draws from each stream (one source's documents in one language).

`--mix ru=60 en=40` gives weights by language, `--mix wiki=30 books=30 web=40` by source name; a group's
weight is shared among its streams in proportion to their sizes. Without `--mix`, every stream is drawn
in proportion to its size (one pass sees each sequence about once).

The sampler applies the weights in blocks of `BLOCK` samples: each block holds exactly
round(w_s * BLOCK) samples of stream s (largest-remainder rounding), in a seeded random order. So the
realised proportions match the weights to 1/BLOCK in every block, a sample's stream is computable from
its index alone (random access, O(1) state for resuming), and streams never drift.

Streamed tar shards (`sunfish.data.stream_batches`) take weights that change during a run: `--data.mix`
is either one set of weights, `wiki=3,books=1` (from the first step), or a schedule of stages,
`0:wiki=1,books=1;5000:wiki=3,books=1` (each from its step on), parsed by `parse_schedule`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sunfish.data.sources import DataError

BLOCK = 4096  # samples per mixing block


@dataclass(frozen=True)
class StreamSize:
    name: str  # "<source>.<lang>"
    source: str
    lang: str
    sequences: int  # packed training sequences


def parse_mix(args: list[str] | None) -> dict[str, float] | None:
    """['ru=60', 'en=40'] -> {'ru': 60.0, 'en': 40.0}; None when no --mix was given."""
    if not args:
        return None
    weights: dict[str, float] = {}
    for arg in args:
        key, eq, value = arg.partition("=")
        try:
            weight = float(value)
        except ValueError:
            weight = -1.0
        if not eq or not key or weight < 0 or weight != weight:
            raise DataError(f"cannot read the mix '{arg}'; write it as SOURCE=WEIGHT or LANG=WEIGHT with a weight >= 0")
        if key in weights:
            raise DataError(f"the mix names '{key}' twice; give each source or language one weight")
        weights[key] = weight
    if sum(weights.values()) <= 0:
        raise DataError("the mix weights sum to zero; give at least one source or language a positive weight")
    return weights


@dataclass(frozen=True)
class MixStage:
    step: int  # first optimiser step (0-based) these weights apply to
    weights: dict[str, float]  # source or language -> weight >= 0


def parse_schedule(text: str) -> list[MixStage]:
    """'wiki=3,books=1' -> one stage from step 0; '0:a=1,b=1;500:a=3,b=1' -> stages in step order; '' -> []."""
    stages: list[MixStage] = []
    for part in (p.strip() for p in text.split(";") if p.strip()):
        step_text, colon, weights = part.rpartition(":") if ":" in part.split("=")[0] else ("0", ":", part)
        try:
            step = int(step_text)
        except ValueError:
            step = -1
        if step < 0:
            raise DataError(f"cannot read the mix stage '{part}'; write STEP:SOURCE=WEIGHT,SOURCE=WEIGHT with a step >= 0")
        if stages and step <= stages[-1].step:
            raise DataError(f"the mix stages must start at increasing steps; {step} follows {stages[-1].step}")
        parsed = parse_mix([w.strip() for w in weights.split(",") if w.strip()])
        if parsed is None:
            raise DataError(f"the mix stage '{part}' gives no weights; write STEP:SOURCE=WEIGHT,SOURCE=WEIGHT")
        stages.append(MixStage(step, parsed))
    return stages


def check_keys(mix: dict[str, float] | None, sources: list[str], langs: tuple[str, ...]) -> None:
    """Fail before any work when the mix names something unknown or leaves a source or language out."""
    if mix is None:
        return
    if set(mix) <= set(sources):
        missing = [s for s in sources if s not in mix]
    elif set(mix) <= set(langs):
        missing = [l for l in langs if l not in mix]
    else:
        unknown = sorted(set(mix) - set(sources) - set(langs))
        raise DataError(
            f"the mix names {', '.join(unknown) or 'languages and sources together'}; name only languages "
            f"({', '.join(langs)}) or only sources ({', '.join(sources)})"
        )
    if missing:
        raise DataError(f"the mix gives no weight to {', '.join(missing)}; add {missing[0]}=WEIGHT (0 leaves it out)")


def _group_of(streams: list[StreamSize], mix: dict[str, float]) -> tuple[str, dict[str, str]]:
    """Whether the mix keys are languages or sources, and each stream's key."""
    langs = {s.lang for s in streams}
    sources = {s.source for s in streams}
    if set(mix) <= langs and not set(mix) <= sources:
        return "language", {s.name: s.lang for s in streams}
    if set(mix) <= sources:
        return "source", {s.name: s.source for s in streams}
    unknown = sorted(set(mix) - langs - sources)
    raise DataError(
        f"the mix names {', '.join(unknown) or 'languages and sources together'}; name only languages "
        f"({', '.join(sorted(langs))}) or only sources ({', '.join(sorted(sources))})"
    )


def stream_weights(streams: list[StreamSize], mix: dict[str, float] | None) -> tuple[str, dict[str, float]]:
    """(how the mix groups streams, normalised weight per stream name); weights sum to 1."""
    if not streams or sum(s.sequences for s in streams) == 0:
        raise DataError("no stream has a full training sequence; add text or lower --seq-len")
    if mix is None:
        total = sum(s.sequences for s in streams)
        return "size", {s.name: s.sequences / total for s in streams}
    by, key_of = _group_of(streams, mix)
    missing = sorted({key_of[s.name] for s in streams} - set(mix))
    if missing:
        raise DataError(f"the mix gives no weight to {', '.join(missing)}; add {missing[0]}=WEIGHT (0 leaves it out)")
    weights: dict[str, float] = {}
    for key, weight in mix.items():
        members = [s for s in streams if key_of[s.name] == key]
        size = sum(s.sequences for s in members)
        if weight > 0 and size == 0:
            raise DataError(f"'{key}' has mix weight {weight:g} but no full training sequence; add text or drop it from --mix")
        for s in members:
            weights[s.name] = weight * s.sequences / size if size else 0.0
    total = sum(weights.values())
    return by, {name: w / total for name, w in weights.items()}


def block_counts(weights: np.ndarray, block: int = BLOCK) -> np.ndarray:
    """(S,) int64 samples per stream in one block: largest-remainder rounding of weights * block."""
    exact = weights / weights.sum() * block  # (S,)
    counts = np.floor(exact).astype(np.int64)
    short = block - int(counts.sum())
    order = np.argsort(-(exact - counts), kind="stable")  # biggest remainders first, ties by stream order
    counts[order[:short]] += 1
    return counts


def block_assignment(counts: np.ndarray, seed: int, block_index: int) -> np.ndarray:
    """(BLOCK,) stream index of every sample in one block, in a seeded random order."""
    streams = np.repeat(np.arange(len(counts)), counts)
    rng = np.random.default_rng([seed, 0x6D6978, block_index])  # 0x6D6978 = "mix": keeps this stream of numbers apart
    return rng.permutation(streams)


def realised(counts: np.ndarray, sequences: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(share of drawn samples, epochs of each stream per pass of sum(sequences) samples)."""
    share = counts / counts.sum()
    total = sequences.sum()
    epochs = np.divide(share * total, sequences, out=np.zeros(len(share)), where=sequences > 0)
    return share, epochs
