"""Representation alignment against the frozen causal model, and the cache of its hidden states.

Loss (Open-dLLM; ../shared/ALGORITHMS.md section 6), for the student's layer outputs s_k on the masked
input and the teacher's t_k on the clean input:

    L_align = (|K| / |S|) * sum over k in S of mean over positions p in P of (1 - cos(s_k[p], stopgrad(t_k[p])))

S is a uniform draw of `align_layer_sample` layers from the chosen set K (the factor |K| / |S| keeps the
sum unbiased) and P a uniform draw of positions (each kept with probability `align_token_fraction`; the
mean over a uniform subset is unbiased for the mean over all).

`TeacherCache` keeps teacher states on disk: one safetensors file per written chunk, each tensor named by
the SHA-256 of a sequence's token ids and holding (K, L, D) states in bfloat16, with `index.json` (key ->
file) and `meta.json` (teacher, layers, width). Files are written under a temporary name and renamed.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

STORE_DTYPE = torch.bfloat16


def parse_layers(spec: str, n_layers: int) -> list[int]:
    """'' -> all layers 1..n; '2,4' -> [2, 4] (1-based block outputs)."""
    if not spec.strip():
        return list(range(1, n_layers + 1))
    try:
        layers = sorted({int(x) for x in spec.split(",") if x.strip()})
    except ValueError:
        raise ValueError(f"--adapt.align_layers '{spec}' is not a comma-separated list of layer numbers") from None
    if not layers or layers[0] < 1 or layers[-1] > n_layers:
        raise ValueError(f"--adapt.align_layers '{spec}' must name layers between 1 and {n_layers}")
    return layers


def choose_layers(layers: Sequence[int], k: int, generator: torch.Generator) -> tuple[list[int], float]:
    """`k` layers drawn without replacement (all when k is 0 or too large) and the unbiasing factor |K| / k."""
    if k <= 0 or k >= len(layers):
        return list(layers), 1.0
    pick = torch.randperm(len(layers), generator=generator, device=generator.device)[:k].tolist()
    return sorted(layers[i] for i in pick), len(layers) / k


def token_subset(shape: tuple[int, int], fraction: float, generator: torch.Generator) -> torch.Tensor | None:
    """(B, L) bool of positions scored, or None for all of them."""
    if fraction >= 1.0:
        return None
    keep = torch.rand(shape, generator=generator, device=generator.device) < fraction
    if not keep.any():
        keep.view(-1)[0] = True
    return keep


def alignment_loss(student: dict[int, torch.Tensor], teacher: dict[int, torch.Tensor],
                   positions: torch.Tensor | None = None, scale: float = 1.0) -> torch.Tensor:
    """scale * sum over layers of the mean over positions of 1 - cos(student, stopgrad(teacher)); states (B, L, D)."""
    total = None
    for k, s in student.items():
        t = teacher[k].detach().to(s.device)
        if positions is not None:
            s, t = s[positions.to(s.device)], t[positions.to(s.device)]  # (N, D)
        term = (1.0 - F.cosine_similarity(s.float(), t.float(), dim=-1)).mean()
        total = term if total is None else total + term
    if total is None:
        raise ValueError("the alignment loss needs at least one layer")
    return scale * total


def sequence_key(row: torch.Tensor) -> str:
    """Hex SHA-256 of a sequence's token ids (as int64), the cache key."""
    return hashlib.sha256(row.detach().to("cpu", torch.int64).contiguous().numpy().tobytes()).hexdigest()


def _write_json(path: Path, body: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(body) + "\n", encoding="utf-8")
    os.replace(tmp, path)


class TeacherCache:
    """Teacher hidden states on disk, looked up by sequence; counts hits and misses."""

    def __init__(self, folder: str | Path, teacher: str, layers: Sequence[int], width: int):
        self.folder = Path(folder)
        self.meta = {"teacher": teacher, "layers": list(layers), "width": int(width)}
        self.folder.mkdir(parents=True, exist_ok=True)
        meta_file = self.folder / "meta.json"
        if meta_file.is_file():
            found = json.loads(meta_file.read_text(encoding="utf-8"))
            if found != self.meta:
                raise ValueError(f"the teacher cache in '{self.folder}' was made for {found['teacher']} (layers "
                                 f"{found['layers']}), not this run's teacher and layers; use another --adapt.teacher_cache folder")
        else:
            _write_json(meta_file, self.meta)
        index_file = self.folder / "index.json"
        self.index: dict[str, str] = json.loads(index_file.read_text(encoding="utf-8")) if index_file.is_file() else {}
        self.hits = 0
        self.misses = 0

    @property
    def layers(self) -> list[int]:
        return self.meta["layers"]

    def __len__(self) -> int:
        return len(self.index)

    def size_bytes(self) -> int:
        return sum((self.folder / f).stat().st_size for f in set(self.index.values()))

    @staticmethod
    def entry_bytes(n_layers: int, seq_len: int, width: int) -> int:
        return n_layers * seq_len * width * torch.finfo(STORE_DTYPE).bits // 8

    def get(self, rows: torch.Tensor) -> list[torch.Tensor | None]:
        """Per row of `rows` (B, L): its cached states (K, L, D) in the store dtype, or None."""
        out: list[torch.Tensor | None] = []
        for row in rows:
            key = sequence_key(row)
            file = self.index.get(key)
            if file is None:
                self.misses += 1
                out.append(None)
                continue
            with safe_open(str(self.folder / file), framework="pt") as f:
                out.append(f.get_tensor(key))
            self.hits += 1
        return out

    def put(self, rows: torch.Tensor, states: torch.Tensor) -> None:
        """Store states (B, K, L, D) of `rows` (B, L) as one new chunk file, then update the index."""
        tensors = {sequence_key(r): s.detach().to("cpu", STORE_DTYPE).contiguous() for r, s in zip(rows, states)}
        tensors = {k: v for k, v in tensors.items() if k not in self.index}
        if not tensors:
            return
        name = f"chunk-{len(set(self.index.values())):06d}-{next(iter(tensors))[:8]}.safetensors"
        tmp = self.folder / f".{name}.tmp"
        save_file(tensors, str(tmp))
        os.replace(tmp, self.folder / name)
        self.index.update({k: name for k in tensors})
        _write_json(self.folder / "index.json", self.index)
