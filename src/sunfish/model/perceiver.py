"""The trainable parts of a latent diffusion LM (LDLM, Meshchaninov et al. 2026, arXiv 2605.07933): a Perceiver
encoder, a Perceiver decoder and a DiT denoiser over the latents.

* `PerceiverEncoder`: K learned queries cross-attend (Perceiver, Jaegle et al. 2021) to a text's states
  (B, L, D_base) from a frozen LM, plus a learned position per token; self-attention blocks over the K
  queries follow; a projection gives K latents of width d_latent, RMS-normalised per latent so that the
  diffusion sees data of unit scale (and the encoder cannot shrink the latents to make denoising trivial).
* `PerceiverDecoder`: L learned position queries cross-attend to the K latents; self-attention blocks over
  the L positions follow; a projection maps each position to the frozen LM's hidden width D_base (a readout,
  process/ldlm.py, turns it into token logits).
* `LatentDiT`: a bidirectional transformer over the K noisy latents with adaLN-Zero time conditioning (DiT,
  Peebles & Xie 2023), optionally followed in its sequence by the (projected) frozen-LM states of a prompt,
  which the latents attend to (the prompt's rows beyond each prompt's length are masked out).

All blocks are Sunfish's own (`model.transformer.Block`: RoPE attention, SwiGLU / squared-ReLU MLP); only the
cross-attention is new here. Widths come from the `model` section (d_model, n_heads, n_layers for the DiT);
`process.perceiver_layers` sets the self-attention depth of encoder and decoder.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn
import torch.nn.functional as F

from sunfish.config import AttentionKind, ModelConfig, TimeCond
from sunfish.model.conditioning import AdaLNModulation, TimeEmbedding, modulate
from sunfish.model.transformer import MLP, Block, RMSNorm, rope_tables


def banded(heads: int, queries: int, keys: int) -> torch.Tensor:
    """(heads, queries, keys) additive bias: 0 where query q and key j cover the same share of the text (q / queries
    and j / keys in the same 1 / min(queries, keys) slice), BAND_BIAS elsewhere. Within a share of several keys,
    head h keeps the keys at offsets h, h + H, ... so that a latent reading several tokens starts with them apart
    (one per head) rather than averaged, which would lose their order."""
    n = min(queries, keys)
    qa = torch.arange(queries) * n // queries  # (Q,) share of each query
    ka = torch.arange(keys) * n // keys  # (N,) share of each key
    first = torch.searchsorted(ka, ka)  # (N,) the first key of each key's share
    size = torch.bincount(ka, minlength=n)[ka]  # (N,) keys in that share
    offset = torch.arange(keys) - first  # (N,)
    head = torch.arange(heads)[:, None]  # (H, 1)
    own = (offset[None, :] - head) % torch.minimum(size, torch.tensor(heads))[None, :] == 0  # (H, N)
    allowed = (qa[:, None] == ka[None, :])[None] & own[:, None, :]  # (H, Q, N)
    return torch.where(allowed, 0.0, BAND_BIAS)


BAND_BIAS = -6.0  # starting attention bias between a latent and the tokens outside its share of the text


class CrossAttention(nn.Module):
    """Multi-head attention of queries (B, Q, D) over a context (B, N, D), plus a learned (H, Q_max, N_max) bias,
    initialised banded (each latent first reads its own share of the text; without it a fresh Perceiver
    attends uniformly, its latents see only a bag of states and reconstruction learns very slowly)."""

    def __init__(self, d_model: int, n_heads: int, queries: int, keys: int):
        super().__init__()
        self.n_heads, self.head_dim = n_heads, d_model // n_heads
        self.q = nn.Linear(d_model, d_model, bias=False)
        self.kv = nn.Linear(d_model, 2 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)
        self.bias = nn.Parameter(banded(n_heads, queries, keys))

    def forward(self, x: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        B, Q, D = x.shape
        q = self.q(x).view(B, Q, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, Q, d)
        k, v = (z.view(B, ctx.shape[1], self.n_heads, self.head_dim).transpose(1, 2) for z in self.kv(ctx).chunk(2, -1))
        bias = self.bias[:, :Q, : ctx.shape[1]].to(q.dtype)  # (H, Q, N), broadcast over the batch
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # (B, H, Q, d)
        return self.out(y.transpose(1, 2).reshape(B, Q, D))


class CrossBlock(nn.Module):
    """Pre-norm cross-attention then MLP, both residual."""

    def __init__(self, cfg: ModelConfig, queries: int, keys: int):
        super().__init__()
        self.norm_q, self.norm_ctx, self.norm2 = (RMSNorm(cfg.d_model, True) for _ in range(3))
        self.attn = CrossAttention(cfg.d_model, cfg.n_heads, queries, keys)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm_q(x), self.norm_ctx(ctx))
        return x + self.mlp(self.norm2(x))


class Stack(nn.Module):
    """Self-attention blocks with RoPE over a sequence of at most `length` rows, then a final norm."""

    def __init__(self, cfg: ModelConfig, depth: int, length: int):
        super().__init__()
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(depth))
        self.norm = RMSNorm(cfg.d_model, cfg.time_cond is not TimeCond.ADALN)
        cos, sin = rope_tables(length, cfg.d_model // cfg.n_heads, cfg.rope_base)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
        cos, sin = self.rope_cos[: x.shape[1]], self.rope_sin[: x.shape[1]]
        for block in self.blocks:
            x = block(x, cos, sin, c, None, mask)
        return self.norm(x)


def _plain(cfg: ModelConfig) -> ModelConfig:
    """The encoder's and decoder's blocks: bidirectional, no time conditioning."""
    return dataclasses.replace(cfg, attention=AttentionKind.BIDIRECTIONAL, time_cond=TimeCond.NONE)


class PerceiverEncoder(nn.Module):
    """Frozen-LM states (B, L, D_base) -> K latents (B, K, d_latent), each of unit RMS."""

    def __init__(self, cfg: ModelConfig, base_dim: int, latents: int, latent_dim: int, depth: int):
        super().__init__()
        cfg = _plain(cfg)
        self.queries = nn.Parameter(torch.zeros(latents, cfg.d_model))
        self.positions = nn.Embedding(cfg.context, cfg.d_model)
        self.inp = nn.Linear(base_dim, cfg.d_model, bias=False)
        self.cross = CrossBlock(cfg, latents, cfg.context)
        self.stack = Stack(cfg, depth, latents)
        self.out = nn.Linear(cfg.d_model, latent_dim, bias=False)

    def features(self, states: torch.Tensor) -> torch.Tensor:
        """The K queries (B, K, D) after reading the states and attending to each other."""
        L = states.shape[1]
        ctx = self.inp(states.to(self.inp.weight.dtype)) + self.positions.weight[:L]  # (B, L, D)
        x = self.queries.expand(states.shape[0], -1, -1).to(ctx.dtype)  # (B, K, D)
        return self.stack(self.cross(x, ctx))

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        z = self.out(self.features(states))  # (B, K, d_latent)
        return F.rms_norm(z.float(), (z.shape[-1],)).to(z.dtype)


class PerceiverDecoder(nn.Module):
    """Latents (B, K, d_latent) -> states (B, L, D_base)."""

    def __init__(self, cfg: ModelConfig, base_dim: int, latents: int, latent_dim: int, depth: int):
        super().__init__()
        cfg = _plain(cfg)
        self.positions = nn.Embedding(cfg.context, cfg.d_model)
        self.inp = nn.Linear(latent_dim, cfg.d_model, bias=False)
        self.cross = CrossBlock(cfg, cfg.context, latents)
        self.stack = Stack(cfg, depth, cfg.context)
        self.out = nn.Linear(cfg.d_model, base_dim, bias=False)

    def forward(self, z: torch.Tensor, length: int) -> torch.Tensor:
        ctx = self.inp(z.to(self.inp.weight.dtype))  # (B, K, D)
        x = self.positions.weight[:length].expand(z.shape[0], -1, -1).to(ctx.dtype)  # (B, L, D)
        return self.out(self.stack(self.cross(x, ctx)))  # (B, L, D_base)


class LatentDiT(nn.Module):
    """The denoiser: raw prediction (x0, eps or v) (B, K, d_latent) of noisy latents z_t at times t (B,), given
    optional prompt states (B, P, D_base) of which the first `prompt_len` (B,) rows are real."""

    def __init__(self, cfg: ModelConfig, base_dim: int, latents: int, latent_dim: int, prompts: bool):
        super().__init__()
        cfg = dataclasses.replace(cfg, attention=AttentionKind.BIDIRECTIONAL, time_cond=TimeCond.ADALN)
        self.latents = latents
        self.time = TimeEmbedding(cfg)
        self.inp = nn.Linear(latent_dim, cfg.d_model, bias=False)
        self.prompt = nn.Linear(base_dim, cfg.d_model, bias=False) if prompts else None  # only when trained with prompts
        self.stack = Stack(cfg, cfg.n_layers, latents + cfg.context)
        self.final_adaln = AdaLNModulation(cfg.d_model, chunks=2)
        self.out = nn.Linear(cfg.d_model, latent_dim, bias=False)

    def forward(self, z_t: torch.Tensor, t: torch.Tensor, prompt: torch.Tensor | None = None,
                prompt_len: torch.Tensor | None = None) -> torch.Tensor:
        K = z_t.shape[1]
        x = self.inp(z_t)  # (B, K, D)
        c = self.time(t).to(x.dtype)  # (B, D)
        mask = None
        if prompt is not None:
            x = torch.cat([x, self.prompt(prompt.to(self.prompt.weight.dtype)).to(x.dtype)], dim=1)  # (B, K + P, D)
            keys = torch.arange(x.shape[1], device=x.device)
            real = (keys[None, :] < K) | (keys[None, :] - K < prompt_len[:, None])  # (B, K + P)
            mask = real[:, None, None, :]  # (B, 1, 1, K + P): every query sees the latents and the real prompt
        h = self.stack(x, c, mask)[:, :K]
        shift, scale = self.final_adaln(c)
        return self.out(modulate(h, shift, scale))


def init_weights(module: nn.Module, std: float) -> None:
    """Normal(0, std) for matrices, embeddings and queries; adaLN projections start at zero (adaLN-Zero)."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=std)
        elif isinstance(m, PerceiverEncoder):
            nn.init.normal_(m.queries, mean=0.0, std=std)
    for m in module.modules():
        if isinstance(m, AdaLNModulation):
            m.reset_parameters()
