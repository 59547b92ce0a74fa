"""Trajectory-guided masking (d3LLM): train on the masks a decoder would actually see.

`commit_order` decodes each training sequence once with an entropy-ordered rule: at every step the model
scores all masked positions and the `per_step` positions of lowest predictive entropy are committed (to
their true tokens, so the trajectory follows the training answer). The rank at which each position was
committed is recorded (0 = first; -1 = a context position never masked). At training time
`latest_committed` masks, for a drawn ratio r, the round(r * n) positions committed last, which is
exactly the partially decoded state the sampler passes through.

Trajectories are stored in one safetensors file: `ids` (N, L) int64 and `order` (N, L) int32; a training
row finds its trajectory by the hash of its ids.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from sunfish.adapt.align import sequence_key


@torch.no_grad()
def commit_order(model, x0: torch.Tensor, mask_id: int, per_step: int = 1, context: int = 1) -> torch.Tensor:
    """Commit ranks (B, L) from entropy-ordered decoding of x0 (B, L); the first `context` tokens stay visible."""
    B, L = x0.shape
    x = x0.clone()
    x[:, context:] = mask_id
    order = torch.full((B, L), -1, dtype=torch.long, device=x0.device)
    rows = torch.arange(B, device=x0.device)[:, None]
    rank = 0
    while rank < L - context:
        logits = model(x).float()  # (B, L, V)
        logits[..., mask_id] = float("-inf")
        logp = logits.log_softmax(-1)
        entropy = -(logp.exp() * logp).nan_to_num().sum(-1)  # (B, L)
        entropy = entropy.masked_fill(x != mask_id, float("inf"))
        k = min(per_step, L - context - rank)
        pick = entropy.topk(k, dim=-1, largest=False).indices  # (B, k), lowest entropy first
        order[rows, pick] = rank + torch.arange(k, device=x0.device)[None, :]
        x[rows, pick] = x0[rows, pick]
        rank += k
    return order


def latest_committed(order: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    """(B, L) bool: for each row, the round(ratio * n) positions with the highest commit rank, where n is
    the row's count of decoded (rank >= 0) positions. order (B, L), ratio (B,) in [0, 1]."""
    n = (order >= 0).sum(-1)  # (B,)
    count = torch.round(ratio.to(torch.float64) * n).long()  # (B,)
    return (order >= 0) & (order >= (n - count)[:, None])


def save_trajectories(path: str | Path, ids: torch.Tensor, order: torch.Tensor) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({"ids": ids.to(torch.int64).contiguous(), "order": order.to(torch.int32).contiguous()}, str(tmp))
    os.replace(tmp, path)


class TrajectoryStore:
    """Commit orders of training sequences, looked up by the hash of their token ids."""

    def __init__(self, path: str | Path):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"there is no trajectory file at '{path}'; write one with `sunfish adapt trajectories`")
        try:
            body = load_file(str(path))
            ids, order = body["ids"], body["order"]
        except Exception:  # safetensors raises several types for damaged files
            raise ValueError(f"'{path}' is not a trajectory file from `sunfish adapt trajectories`") from None
        self.order = {sequence_key(r): o.long() for r, o in zip(ids, order)}
        self.seq_len = int(ids.shape[1])

    def __len__(self) -> int:
        return len(self.order)

    def lookup(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Orders (B, L) (-1 rows where unknown) and a found flag (B,) for token rows (B, L)."""
        B, L = rows.shape
        order = torch.full((B, L), -1, dtype=torch.long)
        found = torch.zeros(B, dtype=torch.bool)
        if L != self.seq_len:
            return order, found
        for b, row in enumerate(rows):
            o = self.order.get(sequence_key(row))
            if o is not None:
                order[b], found[b] = o, True
        return order.to(rows.device), found.to(rows.device)
