"""Model size and memory for presets, computed on the meta device (no weights are allocated)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from sunfish.config import TokenizerChoice, load_preset, preset_names
from sunfish.model.transformer import build_model, count_parameters

CHAR_VOCAB = 66  # symbols in a typical English character vocabulary (micro-dllm's), for char presets
ADAMW_BYTES_PER_PARAM = 16  # fp32 weights 4 + gradients 4 + AdamW moments 8


@dataclass(frozen=True)
class PresetSize:
    name: str
    layers: int
    width: int
    heads: int
    context: int
    vocab: int
    vocab_note: str  # "char" or "bpe"
    parameters: int

    @property
    def train_state_gib(self) -> float:
        """Weights, gradients and AdamW state in fp32, without activations."""
        return self.parameters * ADAMW_BYTES_PER_PARAM / 2**30


def preset_size(name: str) -> PresetSize:
    cfg = load_preset(name)
    m = cfg.model
    vocab = m.vocab_size or (CHAR_VOCAB if cfg.data.tokenizer is TokenizerChoice.CHAR else cfg.data.bpe_vocab)
    model = build_model(dataclasses.replace(m, vocab_size=vocab), "meta")
    return PresetSize(name, m.n_layers, m.d_model, m.n_heads, m.context, vocab, cfg.data.tokenizer.value, count_parameters(model))


def _human(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def presets_table() -> str:
    rows = [("name", "layers", "width", "heads", "context", "vocab", "parameters", "", "train state (fp32+AdamW)")]
    for name in preset_names():
        s = preset_size(name)
        rows.append((s.name, str(s.layers), str(s.width), str(s.heads), str(s.context), f"{s.vocab:,} {s.vocab_note}",
                     f"{s.parameters:,}", _human(s.parameters), f"{s.train_state_gib:.2f} GiB"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)
