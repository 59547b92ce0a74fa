"""LoRA adapters (Hu et al. 2021, arXiv:2106.09685) for `sunfish adapt` and `sunfish sft`, through peft.

A wrapped linear layer computes W x + (alpha / r) B A x with A (r, in), B (out, r) trained and W frozen; B starts
at zero, so a fresh adapter leaves the model unchanged. Settings come from any config section holding the fields
lora, lora_rank, lora_alpha, lora_targets and qlora (AdaptConfig, SFTConfig); its SECTION names the flags in
messages (--adapt.lora_targets, --sft.lora_targets).

* `apply_lora` wraps the target layers in place and freezes everything else (any torch module: a transformers
  causal LM or a Sunfish `Transformer`);
* `train_rows` lets the embedding and output rows of tokens added to a frozen vocabulary train as a delta (SFT's
  chat tokens, which start at the mean row and would otherwise all stay identical);
* `add_sft_adapters` does both for a Sunfish network as `sunfish sft --lora` trains it; loaders rebuild the same
  wrapping from the saved config to read a checkpoint, then `merge_lora` folds every update into its weight and
  puts the plain layers back (so inference and `sunfish export` see a plain network).
"""

from __future__ import annotations

import importlib.util
from typing import Protocol

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

NF4_BLOCK = 64  # weights per 4-bit block (QLoRA's block size)
SKIP = {"lm_head", "head", "embed", "wte", "wpe"}  # never wrapped by all-linear: embeddings and output heads


class LoraSettings(Protocol):
    SECTION: str
    lora: bool
    lora_rank: int
    lora_alpha: float
    lora_targets: str
    qlora: bool


def _wrappable(module: nn.Module) -> dict[str, nn.Module]:
    """The layers peft can wrap by qualified name: linear (and GPT-2's Conv1D, which stores W transposed) and
    embedding layers."""
    return {name: m for name, m in module.named_modules()
            if isinstance(m, (nn.Linear, nn.Embedding)) or type(m).__name__ == "Conv1D"}


def lora_targets(module: nn.Module, cfg: LoraSettings, frozen: frozenset[str] = frozenset()) -> list[str]:
    """Module names LoRA wraps: the configured list (each a layer's name or its dotted tail), or every linear layer
    except the embeddings and the output head. Layers named in `frozen` are never wrapped."""
    layers = _wrappable(module)
    if cfg.lora_targets == "all-linear":
        return sorted({n.rsplit(".", 1)[-1] for n, m in layers.items() if not isinstance(m, nn.Embedding)} - SKIP)
    offered = {n.rsplit(".", 1)[-1] for n in layers} - frozen
    targets = [t.strip() for t in cfg.lora_targets.split(",") if t.strip()]
    for t in targets:
        if t.rsplit(".", 1)[-1] in frozen or not any(n == t or n.endswith("." + t) for n in layers):
            raise ValueError(f"--{cfg.SECTION}.lora_targets names '{t}', which is not a layer LoRA can wrap in this "
                             f"model; name some of {', '.join(sorted(offered))}, or all-linear")
    return targets


def apply_lora(module: nn.Module, cfg: LoraSettings, frozen: frozenset[str] = frozenset()) -> None:
    """Inject LoRA adapters (peft) in place and freeze everything else (`frozen`: layer names never wrapped)."""
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError:
        raise ValueError(f"--{cfg.SECTION}.lora needs the peft package; install it with pip install 'sunfish[adapt]'") from None
    targets = lora_targets(module, cfg, frozen)
    if not targets:
        raise ValueError(f"no linear layers match --{cfg.SECTION}.lora_targets; name modules of the base model, e.g. q_proj,v_proj")
    fan_in_fan_out = any(type(m).__name__ == "Conv1D" for m in module.modules())  # GPT-2 stores W transposed
    config = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, target_modules=targets, lora_dropout=0.0,
                        fan_in_fan_out=fan_in_fan_out)
    try:
        inject_adapter_in_model(config, module)
    except ValueError as err:
        raise ValueError(f"LoRA cannot wrap {targets} ({str(err).splitlines()[0]}); choose --{cfg.SECTION}.lora_targets") from None
    for name, p in module.named_parameters():
        p.requires_grad = "lora_" in name


def require_qlora(cfg: LoraSettings) -> None:
    """4-bit base weights of a transformers model (`sunfish adapt --adapt.qlora`: QLoRA, Dettmers et al. 2023,
    through bitsandbytes) need CUDA and bitsandbytes: one sentence without them."""
    if not torch.cuda.is_available() or importlib.util.find_spec("bitsandbytes") is None:
        raise ValueError(f"--{cfg.SECTION}.qlora needs a CUDA GPU and the bitsandbytes package; without them use "
                         "--lora (16/32-bit base weights) instead")


def quantize_base(module: nn.Module) -> int:
    """QLoRA on a Sunfish network (`sunfish sft --sft.qlora`): the frozen base weight of every LoRA-wrapped linear
    layer becomes 4-bit NormalFloat (Dettmers et al. 2023) in blocks of 64 with double-quantised scales, through
    torchao's NF4 tensor (CPU and CUDA; the matmul dequantises to the weight's dtype, the adapters stay in full
    precision). Returns the bytes the base weights no longer take. Checkpoints store these weights dequantised, and a
    resumed run rebuilds them from the base (`is_quantized`: load_weights leaves them alone)."""
    to_nf4 = _nf4()
    from peft.tuners.lora import LoraLayer

    saved = 0
    for layer in [m.get_base_layer() for m in module.modules() if isinstance(m, LoraLayer)]:
        scaler_block = nf4_scaler_block(layer)
        if scaler_block is None or is_quantized(layer.weight):
            continue
        weight, blocks = layer.weight, layer.weight.numel() // NF4_BLOCK
        layer.weight = nn.Parameter(to_nf4(weight.detach().contiguous(), NF4_BLOCK, scaler_block), requires_grad=False)
        saved += weight.numel() * weight.element_size() - weight.numel() // 2 - 4 * blocks // scaler_block - blocks
    return saved


def check_qlora(module: nn.Module, cfg: LoraSettings, frozen: frozenset[str] = frozenset()) -> None:
    """Refuse --qlora in one sentence, before any work, where it cannot run or would quantize nothing."""
    _nf4()
    targets = {t.rsplit(".", 1)[-1] for t in lora_targets(module, cfg, frozen)}
    if not any(name.rsplit(".", 1)[-1] in targets and nf4_scaler_block(m) for name, m in module.named_modules()):
        raise ValueError(f"no layer named by --{cfg.SECTION}.lora_targets has a weight whose size is a multiple of "
                         f"{NF4_BLOCK * 8} (4-bit blocks of {NF4_BLOCK}, their scales in blocks of 8 or more), so "
                         f"--{cfg.SECTION}.qlora would quantize nothing; use --lora alone")


def nf4_scaler_block(layer: nn.Module) -> int | None:
    """The scale-block size NF4 uses for this linear layer's weight (256 as in QLoRA, or the largest of 128..8 that
    divides its 64-weight blocks), or None where the weight does not fit 4-bit blocks."""
    if not isinstance(layer, nn.Linear) or layer.weight.numel() % NF4_BLOCK:
        return None
    blocks = layer.weight.numel() // NF4_BLOCK
    return next((s for s in (256, 128, 64, 32, 16, 8) if blocks % s == 0), None)


def _nf4():
    try:
        from torchao.quantization import to_nf4
    except ImportError:
        raise ValueError("--sft.qlora needs the torchao package; install it with pip install 'sunfish[quantize]'") from None
    return to_nf4


def is_quantized(tensor: torch.Tensor) -> bool:
    """A 4-bit base weight of `quantize_base` (a torchao NF4 tensor)."""
    return hasattr(tensor, "get_original_weight")


# ------------------------------------------------------------------------------------- rows of added tokens
class RowDelta(nn.Module):
    """weight (V, D) -> the same with `delta` (V - start, D) added to its rows from `start` on."""

    def __init__(self, start: int, rows: int, width: int, device: torch.device):
        super().__init__()
        self.start = start
        self.delta = nn.Parameter(torch.zeros(rows, width, device=device))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return torch.cat([weight[: self.start], weight[self.start :] + self.delta.to(weight.dtype)])


def train_rows(layers: list[nn.Module], start: int) -> int:
    """Rows `start:` of each layer's weight (an embedding or an output layer, both (V, D)) train as a delta while the
    weight stays frozen; layers sharing one weight (tied embeddings) share one delta. Returns the delta's entries."""
    shared: dict[int, RowDelta] = {}
    for layer in layers:
        weight = layer.weight
        delta = shared.get(id(weight))
        if delta is None:
            delta = shared[id(weight)] = RowDelta(start, weight.shape[0] - start, weight.shape[1], weight.device)
        parametrize.register_parametrization(layer, "weight", delta)
    return sum(d.delta.numel() for d in shared.values())


def _merge_rows(module: nn.Module) -> None:
    """Fold every RowDelta into its weight; a weight shared by layers is updated in place once, so it stays shared."""
    done: set[int] = set()
    for child in list(module.modules()):
        if parametrize.is_parametrized(child, "weight") and isinstance(child.parametrizations.weight[0], RowDelta):
            original = child.parametrizations.weight.original
            parametrize.remove_parametrizations(child, "weight", leave_parametrized=id(original) not in done)
            done.add(id(original))


def merge_lora(module: nn.Module) -> None:
    """Fold every LoRA update (and row delta) into its base weight and put the plain layers back (for inference and
    export); every parameter trains again afterwards, as in a network that never had adapters."""
    from peft.tuners.lora import LoraLayer

    for name, child in list(module.named_modules()):
        if isinstance(child, LoraLayer):
            child.merge()
            parent_name, _, attr = name.rpartition(".")
            setattr(module.get_submodule(parent_name) if parent_name else module, attr, child.get_base_layer())
    _merge_rows(module)
    module.requires_grad_(True)


# -------------------------------------------------------------------------------------------- sunfish sft
SFT_FROZEN = frozenset({"embed", "lm_head"})  # of these only the rows of the added tokens train (`train_rows`)


def add_sft_adapters(model: nn.Module, cfg: LoraSettings, added_tokens: int, quantize: bool = False) -> str:
    """`sunfish sft --lora` on a Sunfish Transformer (or an adapted model, adapt/model.py): LoRA on the target layers, and the embedding and output rows of
    the `added_tokens` tokens SFT appended to the vocabulary train too; with `quantize` (QLoRA, for training only:
    loaders merge into full-precision weights) the wrapped layers' base weights become 4-bit. Returns a line saying
    what trains."""
    total = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    targets = lora_targets(model, cfg, SFT_FROZEN)
    apply_lora(model, cfg, SFT_FROZEN)
    from peft.tuners.lora import LoraLayer  # present: apply_lora refused without peft

    wrapped = sum(isinstance(m, LoraLayer) for m in model.modules())
    rows = 0
    if added_tokens:  # Sunfish's tokenizer grew: a Transformer, or the one inside an adapted Sunfish run
        inner = model.backbone.model if hasattr(model, "backbone") else model
        rows = train_rows([inner.embed, inner.lm_head], inner.embed.weight.shape[0] - added_tokens)
    saved = quantize_base(model) if quantize else 0
    trainable = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values() if p.requires_grad)
    return (f"{'QLoRA (4-bit NF4 base weights, %.1f MB saved)' % (saved / 1e6) if quantize else 'LoRA'} r={cfg.lora_rank} alpha={cfg.lora_alpha:g} on {wrapped} layers ({', '.join(targets)})"
            f"{f' and the rows of {added_tokens} added tokens ({rows:,})' if rows else ''}: {trainable:,} trainable "
            f"of {total:,} parameters ({100 * trainable / total:.2f}%)")
