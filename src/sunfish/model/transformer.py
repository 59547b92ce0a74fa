"""Bidirectional (or causal) transformer for diffusion language models.

Pre-norm blocks with RMSNorm, rotary position embeddings (RoPE, Su et al. 2021), multi-head attention
through `F.scaled_dot_product_attention`, SwiGLU or squared-ReLU MLPs, no biases. Time conditioning is
optional (see `conditioning.py`). The model knows nothing about parallelism or the diffusion process:
it maps tokens (and optionally t) to hidden states and logits.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from sunfish.config import AttentionKind, Layout, MLPKind, ModelConfig, TimeCond
from sunfish.model.conditioning import AdaLNModulation, TimeEmbedding, modulate
from sunfish.model.kv_cache import KVCache


def ff_width(cfg: ModelConfig) -> int:
    """MLP hidden width: explicit, else 4 d (relu2) or LLaMA's 8/3 d rounded up to a multiple of 64."""
    if cfg.d_ff:
        return cfg.d_ff
    if cfg.mlp is MLPKind.RELU2:
        return 4 * cfg.d_model
    return 64 * ((8 * cfg.d_model // 3 + 63) // 64)


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * g, with the gain g optional (micro-dllm uses none); eps None is
    float32's machine epsilon (F.rms_norm's default)."""

    def __init__(self, dim: int, weight: bool, eps: float | None = None):
        super().__init__()
        self.dim, self.eps = dim, eps
        self.weight = nn.Parameter(torch.ones(dim)) if weight else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (self.dim,), self.weight, self.eps)


def kv_heads(cfg: ModelConfig) -> int:
    """Key/value heads: n_kv_heads, or n_heads (multi-head attention) when it is 0."""
    return cfg.n_kv_heads or cfg.n_heads


def rope_tables(length: int, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables (length, head_dim / 2) for rotary embeddings (RoFormer, Su et al. 2021)."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(length, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (i, i + d/2) of x (B, H, L, d) by position-dependent angles (L, d/2)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat([x1 * cos + x2 * sin, x2 * cos - x1 * sin], dim=-1)


class Attention(nn.Module):
    """Multi-head or grouped-query attention (n_kv_heads < n_heads key/value heads, each shared by
    n_heads / n_kv_heads query heads) with RoPE; `qkv` holds the query, key and value rows in that order."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv = cfg.n_heads, kv_heads(cfg)
        self.head_dim = cfg.d_model // cfg.n_heads
        self.causal = cfg.attention is AttentionKind.CAUSAL
        self.qk_norm = cfg.qk_norm
        self.split = (cfg.d_model, self.n_kv * self.head_dim, self.n_kv * self.head_dim)
        self.qkv = nn.Linear(cfg.d_model, sum(self.split), bias=cfg.qkv_bias)
        self.out = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: tuple[KVCache, int] | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, L, D); mask (L, L_keys) bool, True = may attend (overrides the causal flag)."""
        B, L, D = x.shape
        q, k, v = self.qkv(x).split(self.split, dim=-1)
        q = q.view(B, L, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, L, d)
        k = k.view(B, L, self.n_kv, self.head_dim).transpose(1, 2)  # (B, H_kv, L, d)
        v = v.view(B, L, self.n_kv, self.head_dim).transpose(1, 2)  # (B, H_kv, L, d)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if self.qk_norm:
            q, k = F.rms_norm(q, (self.head_dim,)), F.rms_norm(k, (self.head_dim,))
        if cache is not None:
            kv, layer = cache
            k, v = kv.attend_inputs(layer, k, v)  # (B, H_kv, L_all, d)
        causal = self.causal and mask is None
        if causal and k.shape[2] != L:  # cached decoding: query i sits at key position (L_keys - L) + i
            mask = torch.ones(L, k.shape[2], dtype=torch.bool, device=x.device).tril(k.shape[2] - L)
            causal = False
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                           enable_gqa=self.n_kv != self.n_heads)  # (B, H, L, d)
        return self.out(y.transpose(1, 2).reshape(B, L, D))


class MLP(nn.Module):
    """SwiGLU: W2 (silu(W1 x) * W3 x); squared ReLU: W2 relu(W1 x)^2. W1 and W3 share one matmul."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.kind = cfg.mlp
        hidden = ff_width(cfg)
        gates = 2 if self.kind is MLPKind.SWIGLU else 1
        self.up = nn.Linear(cfg.d_model, gates * hidden, bias=False)
        self.down = nn.Linear(hidden, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind is MLPKind.SWIGLU:
            gate, value = self.up(x).chunk(2, dim=-1)
            return self.down(F.silu(gate) * value)
        return self.down(F.relu(self.up(x)).square())


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        adaln = cfg.time_cond is TimeCond.ADALN
        eps = cfg.norm_eps or None
        self.norm1 = RMSNorm(cfg.d_model, cfg.norm_weights and not adaln, eps)
        self.attn = Attention(cfg)
        self.norm2 = RMSNorm(cfg.d_model, cfg.norm_weights and not adaln, eps)
        self.mlp = MLP(cfg)
        self.adaln = AdaLNModulation(cfg.d_model) if adaln else None

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, c: torch.Tensor | None,
                cache: tuple[KVCache, int] | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.adaln is None:
            x = x + self.attn(self.norm1(x), cos, sin, cache, mask)
            return x + self.mlp(self.norm2(x))
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaln(c)  # each (B, 1, D)
        x = x + gate1 * self.attn(modulate(self.norm1(x), shift1, scale1), cos, sin, cache, mask)
        return x + gate2 * self.mlp(modulate(self.norm2(x), shift2, scale2))


class Transformer(nn.Module):
    """tokens (B, L) [+ t (B,)] -> logits (B, L, V). `hidden` and `head` split the two halves so a loss
    can project only the positions it scores."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.vocab_size <= 0:
            raise ValueError("model.vocab_size must be positive; set it from the tokenizer before building the model")
        if cfg.d_model % cfg.n_heads or (cfg.d_model // cfg.n_heads) % 2:
            raise ValueError(f"model.d_model ({cfg.d_model}) must split into {cfg.n_heads} heads of even width")
        if cfg.n_heads % kv_heads(cfg):
            raise ValueError(f"model.n_kv_heads ({cfg.n_kv_heads}) must divide model.n_heads ({cfg.n_heads})")
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.time = TimeEmbedding(cfg) if cfg.time_cond is not TimeCond.NONE else None
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        adaln = cfg.time_cond is TimeCond.ADALN
        self.final_norm = RMSNorm(cfg.d_model, cfg.norm_weights and not adaln, cfg.norm_eps or None)
        self.final_adaln = AdaLNModulation(cfg.d_model, chunks=2) if adaln else None
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        cos, sin = rope_tables(cfg.context, cfg.d_model // cfg.n_heads, cfg.rope_base)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    @property
    def needs_time(self) -> bool:
        return self.time is not None

    @property
    def shift(self) -> int:
        """1 when the output at i - 1 predicts token i (shifted layout), else 0. `hidden` returns states already
        moved; a caller computing a span [lo, hi) must start it at lo - shift to predict position lo."""
        return 1 if self.cfg.layout is Layout.SHIFTED else 0

    def reset_parameters(self) -> None:
        """Normal(0, init_std) for matrices and embeddings; adaLN projections start at zero."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=self.cfg.init_std)
        for module in self.modules():
            if isinstance(module, AdaLNModulation):
                module.reset_parameters()

    def hidden(
        self,
        tokens: torch.Tensor | None,
        t: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
        *,
        attn_mask: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Final normalised hidden states (B, L, D).

        With an empty `kv_cache` the pass records keys and values; with a filled cache whose `span` is
        set, `tokens` (B, hi - lo) are the canvas positions [lo, hi) and attend over the cached rest.
        `attn_mask` (L, L_keys) bool replaces the attention pattern (True = may attend; (B, 1, L, L_keys) per row);
        `positions` (L,) or (B, L) gives each token's RoPE position (default: offset + 0..L-1), e.g. for block
        diffusion's two copies or left-padded rows. `embeds` (B, L, D) replaces the token lookup (pass
        tokens=None): continuous inputs such as noised embeddings or points on the simplex. With the shifted
        layout the states are moved one position right (see `shift`).
        """
        if (tokens is None) == (embeds is None):
            raise ValueError("pass exactly one of tokens (B, L) and embeds (B, L, D) to the model")
        B, L = tokens.shape if embeds is None else embeds.shape[:2]
        offset = kv_cache.span[0] if kv_cache is not None and kv_cache.span is not None else 0
        if positions is None:
            positions = torch.arange(offset, offset + L, device=self.rope_cos.device)
        if int(positions.max()) >= self.cfg.context:
            raise ValueError(f"sequence of {int(positions.max()) + 1} tokens is longer than the model's context of {self.cfg.context}")
        x = self.embed(tokens) if embeds is None else embeds  # (B, L, D)
        c = None
        if self.time is not None:
            if t is None:
                raise ValueError("this model is time-conditioned: pass t, the diffusion time of each sequence")
            c = self.time(t).to(x.dtype)  # (B, D)
            if self.final_adaln is None:
                x = x + c[:, None, :]
        if self.cfg.embed_norm:
            x = F.rms_norm(x, (x.shape[-1],))
        cos, sin = self.rope_cos[positions], self.rope_sin[positions]  # (L, d / 2)
        if positions.dim() == 2:  # per-row positions (B, L), e.g. left-padded batches
            cos, sin = cos[:, None], sin[:, None]  # (B, 1, L, d / 2)
        for layer, block in enumerate(self.blocks):
            x = block(x, cos, sin, c, None if kv_cache is None else (kv_cache, layer), attn_mask)
        x = self.final_norm(x)
        if self.final_adaln is not None:
            shift, scale = self.final_adaln(c)
            x = modulate(x, shift, scale)
        if self.shift:  # the state at i - 1 predicts token i; the first position of the window predicts itself
            x = torch.cat([x[:, :1], x[:, :-1]], dim=1)
        return x

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """Logits (..., V) from hidden states (..., D)."""
        return self.lm_head(h)

    def forward(self, tokens: torch.Tensor | None, t: torch.Tensor | None = None, kv_cache: KVCache | None = None,
                **attention) -> torch.Tensor:
        """Logits (B, L, V); `attention` takes hidden's attn_mask, positions and embeds."""
        return self.head(self.hidden(tokens, t, kv_cache, **attention))


def count_parameters(model: nn.Module) -> int:
    """Distinct parameters (a tied embedding counts once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def build_model(cfg: ModelConfig, device: torch.device | str = "cpu") -> Transformer:
    """Instantiate on `device`; pass "meta" to size a model without allocating its weights. (A process that
    adds layers of its own gets them from `sunfish.registry.build_network`.)"""
    with torch.device(device):
        return Transformer(cfg)
