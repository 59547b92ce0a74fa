"""A reference training step in the style of micro-dllm's `train.py`, for side-by-side throughput.

Written for this benchmark from the published description of that loop (same architecture as the `micro`
preset): separate q/k/v projections, RoPE then RMS-normalised q/k, squared-ReLU MLP, weightless RMSNorm,
learned timestep embedding of T + 1 entries, untied head evaluated on every position, masking drawn
with a Python loop over the batch, plain masked cross-entropy, AdamW. It is the baseline the `micro`
preset is measured against, not part of Sunfish.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def _norm(x: torch.Tensor) -> torch.Tensor:
    return F.rms_norm(x, (x.size(-1),))


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[3] // 2
    a, b = x[..., :half], x[..., half:]
    return torch.cat([a * cos + b * sin, b * cos - a * sin], 3)


class RefAttention(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads, self.hd = heads, d // heads
        self.q, self.k, self.v, self.o = (nn.Linear(d, d, bias=False) for _ in range(4))

    def forward(self, x, cos, sin):
        B, L, D = x.shape
        q = self.q(x).view(B, L, self.heads, self.hd)
        k = self.k(x).view(B, L, self.heads, self.hd)
        v = self.v(x).view(B, L, self.heads, self.hd)
        q, k = _norm(_rotate(q, cos, sin)), _norm(_rotate(k, cos, sin))
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.o(y.transpose(1, 2).contiguous().view(B, L, D))


class RefBlock(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.attn = RefAttention(d, heads)
        self.fc = nn.Linear(d, 4 * d, bias=False)
        self.proj = nn.Linear(4 * d, d, bias=False)

    def forward(self, x, cos, sin):
        x = x + self.attn(_norm(x), cos, sin)
        return x + self.proj(F.relu(self.fc(_norm(x))).square())


class RefModel(nn.Module):
    def __init__(self, vocab: int, d: int = 384, layers: int = 6, heads: int = 6, context: int = 256, T: int = 100):
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.time = nn.Embedding(T + 1, d)
        self.blocks = nn.ModuleList(RefBlock(d, heads) for _ in range(layers))
        self.head = nn.Linear(d, vocab, bias=False)
        hd = d // heads
        inv = 1.0 / (10000 ** (torch.arange(0, hd, 2).float() / hd))
        ang = torch.outer(torch.arange(2 * context).float(), inv)
        self.register_buffer("cos", ang.cos()[None, :, None, :], persistent=False)
        self.register_buffer("sin", ang.sin()[None, :, None, :], persistent=False)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)

    def forward(self, idx, t, targets, mask):
        L = idx.shape[1]
        x = _norm(self.tok(idx) + self.time(t)[:, None, :])
        for block in self.blocks:
            x = block(x, self.cos[:, :L], self.sin[:, :L])
        logits = self.head(_norm(x))  # every position, as in the reference
        return F.cross_entropy(logits[mask], targets[mask])


def reference_batch(data: torch.Tensor, batch: int, length: int, mask_id: int, T: int = 100):
    """Windows of `data`, t on {1..T}, cosine-squared survival, masks drawn row by row."""
    idx = torch.randint(len(data) - length, (batch,))
    x0 = torch.stack([data[i : i + length] for i in idx])
    t = torch.randint(1, T + 1, (batch,))
    xt, mask = x0.clone(), torch.zeros_like(x0, dtype=torch.bool)
    for i in range(batch):
        keep = math.cos(t[i].item() / T * math.pi / 2) ** 2
        row = torch.rand(length) > keep
        if not row.any():
            row[torch.randint(length, (1,)).item()] = True
        xt[i][row] = mask_id
        mask[i] = row
    return xt, x0, mask, t


def reference_step(model: RefModel, opt: torch.optim.Optimizer, data: torch.Tensor, batch: int, length: int, mask_id: int) -> float:
    xt, x0, mask, t = reference_batch(data, batch, length, mask_id)
    loss = model(xt, t, x0, mask)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss)
