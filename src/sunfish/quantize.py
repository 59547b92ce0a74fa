"""Weight-only quantization for inference (torchao), and the bytes a model's weights really take.

    loaded = load_model(path, device, dtype="bf16")
    report = quantize(loaded.model, "int8")        # in place; report.layers, report.bytes_before, bytes_after
    weight_bytes(loaded.model)                     # int8 data + scales counted, not the float view torch shows

Kinds (`Quantization`): `none`; `int8`, symmetric int8 weights with one fp32 scale per output row (CPU and
CUDA; torchao 0.18 also keeps an all-zero int8 zero point per row, so a layer takes 1/4 + 5/(4 K) of its fp32
bytes); `int4`, asymmetric 4-bit weights in groups of up to 128 input columns, run by PyTorch's bf16
tinygemm kernel (CUDA with compute capability >= 8.0 only; torchao's tile-packed format pads each layer's
input width to a multiple of 1,024, so narrow layers take *more* bytes in int4 than in bf16). Activations
stay in the model's dtype: torchao computes W x as (q x) * s, so fp32, bf16 and fp16 models all work.

Speed: weight-only int8 converts the int8 weight to the activation dtype at every matmul (torchao's eager
path), so it saves memory, not time, unless a fused kernel does the matmul. Measured on a 2-core Xeon with
AMX (benchmarks/quantization.py): 0.85-0.88x of fp32's decoding speed; int8 over bf16 1.79x of fp32 at width
512 (bf16's AMX matmul, 2.35x alone) and 0.88x at width 128; torch.compile did not help int8 there.

What is quantized: every nn.Linear inside the transformer blocks (attention qkv and out, MLP up and down,
adaLN projections): nearly all of a model's weights and matmul time. Left in the model's dtype:
- the embedding: a lookup, and torchao's Int8Tensor looks up by dequantizing the whole table at every
  call (a transient full-precision copy: no time or peak memory saved); the continuous and flow processes
  also read `embed.weight` directly;
- the LM head (unless `head=True`): its output is the logits themselves, where its rounding is not averaged
  by later layers. Measured (128 x 4 character model): the head doubles the one-pass KL to fp32 (5.3e-6 to
  1.2e-5 nats) and greedy agreement falls from 0.971 to 0.795, for 0.03 MB (1% of the weights). With a
  large vocabulary the head is a larger share (LLaDA: 6%), hence the switch. A head tied to the embedding
  is never quantized (it would become a second, int8 copy of the table);
- the time embedding and a process's own layers (continuous diffusion's projections): small.

Models: Sunfish's `Transformer` (runs, checkpoints, LLaDA/Dream folders) and adapted runs (`DiffusionLM`
over a Sunfish backbone, or over a transformers causal LM whose decoder keeps its blocks in `.layers`,
as Llama, Qwen and Mistral do). Anything else is refused in one sentence.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

from sunfish.model.transformer import Transformer

INSTALL = "pip install 'sunfish[quantize]'"  # the extra that brings torchao
INT4_GROUPS = (128, 64, 32)  # int4 group sizes (input columns per scale) tried, largest first
INT4_MIN_CAPABILITY = 8  # tinygemm's int4 kernel needs tensor cores of compute capability >= 8.0 (A100 on)


class Quantization(str, enum.Enum):
    """How the block weights are stored for inference."""

    NONE = "none"  # the loaded dtype (fp32, bf16 or fp16)
    INT8 = "int8"  # weight-only int8, one scale per output row (CPU and CUDA)
    INT4 = "int4"  # weight-only int4, one scale and zero point per group of input columns (CUDA only)


class QuantizeError(ValueError):
    """A quantization that cannot be done here; the message is one sentence that says what to do."""


@dataclass(frozen=True)
class QuantizeReport:
    """What `quantize` changed."""

    kind: Quantization
    layers: list[str] = field(default_factory=list)  # qualified names of the quantized nn.Linear modules
    bytes_before: int = 0  # weight bytes of those layers before (weights and biases)
    bytes_after: int = 0  # ... and after, by their real storage (weight_bytes)
    group_size: int = 0  # int4: input columns per scale (0 for int8 and none)


def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes `t` really occupies: a tensor subclass (torchao's Int8Tensor, Int4TilePackedTo4dTensor, ...)
    counts the inner tensors it is made of (its int8/packed data, scales, zero points), not its float view."""
    if is_traceable_wrapper_subclass(t):
        names, _ = t.__tensor_flatten__()
        return sum(tensor_bytes(getattr(t, name)) for name in names)
    return t.numel() * t.element_size()


def weight_bytes(module: nn.Module) -> int:
    """Bytes of `module`'s parameters (a tied weight counts once), quantized ones by their real storage.
    Buffers (RoPE tables) are not weights and are not counted."""
    return sum(tensor_bytes(p) for p in module.parameters())


def _kind(kind: Quantization | str) -> Quantization:
    try:
        return Quantization(kind)
    except ValueError:
        choices = ", ".join(k.value for k in Quantization)
        raise QuantizeError(f"unknown quantization '{kind}'; use one of {choices}") from None


@contextlib.contextmanager
def _quiet(*names: str):
    """Raise the level of loggers `names` to ERROR for the block: torchao's import warns about CUDA
    extensions it cannot load on a CPU build of torch, which are not used here."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _torchao():
    """The torchao.quantization module, or one sentence saying how to install it."""
    try:
        with _quiet("torchao", "torch.utils._pytree"):
            import torchao.quantization as quantization
    except ImportError:
        raise QuantizeError(f"weight-only quantization needs the torchao package; install it with {INSTALL}") from None
    return quantization


def _parts(model: nn.Module) -> tuple[nn.Module, nn.Module | None, nn.Module | None]:
    """(the module holding the transformer blocks, the LM head, the input embedding) of a supported model."""
    if isinstance(model, Transformer):
        return model.blocks, model.lm_head, model.embed
    backbone = getattr(model, "backbone", None)  # an adapted run's DiffusionLM (adapt/model.py)
    if isinstance(getattr(backbone, "model", None), Transformer):
        return _parts(backbone.model)
    hf = getattr(backbone, "hf", None)
    decoder = hf.get_decoder() if hf is not None and hasattr(hf, "get_decoder") else None
    if isinstance(getattr(decoder, "layers", None), nn.ModuleList):
        return decoder.layers, hf.get_output_embeddings(), hf.get_input_embeddings()
    found = f"an adapted {type(hf).__name__}" if hf is not None else type(model).__name__
    raise QuantizeError(f"quantization supports Sunfish transformers and adapted causal LMs whose decoder keeps "
                        f"its blocks in .layers (Llama, Qwen, Mistral), not {found}; use --quantize none")


def _targets(model: nn.Module, head: bool) -> dict[str, nn.Linear]:
    """Qualified name -> nn.Linear to quantize: those inside the blocks, plus the LM head when `head`."""
    blocks, lm_head, embed = _parts(model)
    chosen = {id(m) for m in blocks.modules() if isinstance(m, nn.Linear)}
    if head:
        if lm_head is None or not isinstance(lm_head, nn.Linear):
            raise QuantizeError("this model has no nn.Linear LM head to quantize; quantize without head=True")
        if embed is not None and lm_head.weight is getattr(embed, "weight", None):
            raise QuantizeError("the LM head shares its weights with the embedding (tied), so quantizing it would "
                                "add an int8 copy of the table; quantize without head=True")
        chosen.add(id(lm_head))
    targets = {name: m for name, m in model.named_modules() if id(m) in chosen}
    if any(is_traceable_wrapper_subclass(m.weight) for m in targets.values()):
        raise QuantizeError("this model is already quantized; load it again to quantize it another way")
    if not targets:
        raise QuantizeError(f"{type(model).__name__} has no nn.Linear layers in its blocks to quantize; use --quantize none")
    return targets


def _int4_group(targets: dict[str, nn.Linear]) -> int:
    """The largest group size of INT4_GROUPS that divides every layer's input width."""
    width = math.gcd(*(m.in_features for m in targets.values()))
    for group in INT4_GROUPS:
        if width % group == 0:
            return group
    raise QuantizeError(f"int4 quantization needs input widths divisible by {INT4_GROUPS[-1]}, and these layers "
                        f"share a width of {width}; use --quantize int8")


def _check_int4_device(device: torch.device) -> None:
    if device.type != "cuda":
        raise QuantizeError(f"int4 weight-only quantization runs on CUDA only (PyTorch's tinygemm kernel), not on "
                            f"{device.type}; use --quantize int8 on the CPU")
    major, minor = torch.cuda.get_device_capability(device)
    if major < INT4_MIN_CAPABILITY:
        raise QuantizeError(f"int4 quantization needs a GPU of compute capability >= {INT4_MIN_CAPABILITY}.0 and this "
                            f"one has {major}.{minor}; use --quantize int8")


def _config(ao, kind: Quantization, group: int):
    """torchao's config for `kind` (torchao 0.18); inductor settings are left alone (no global state)."""
    if kind is Quantization.INT8:
        return ao.Int8WeightOnlyConfig(set_inductor_config=False)
    from torchao.quantization.quantize_.workflows import Int4PackingFormat  # the default (PLAIN) needs mslk kernels

    return ao.Int4WeightOnlyConfig(group_size=group, int4_packing_format=Int4PackingFormat.TILE_PACKED_TO_4D,
                                   set_inductor_config=False)


def quantize(model: nn.Module, kind: Quantization | str, device: torch.device | str | None = None, *,
             head: bool = False) -> QuantizeReport:
    """Quantize `model`'s block weights in place to `kind` (none, int8, int4; see the module docstring) for
    inference on `device` (None: where the weights are; another device moves the model there first).
    `head` also quantizes an untied LM head. Refused in one sentence (QuantizeError): an unknown kind, int4
    off CUDA, a missing torchao, a model type it does not know. Call it after `load_model`."""
    kind = _kind(kind)
    if kind is Quantization.NONE:
        return QuantizeReport(kind=kind)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    if kind is Quantization.INT4:
        _check_int4_device(device)
    ao = _torchao()
    targets = _targets(model, head)
    group = _int4_group(targets) if kind is Quantization.INT4 else 0
    model.to(device)
    before = sum(weight_bytes(m) for m in targets.values())
    if kind is Quantization.INT4:  # the tinygemm kernel takes bf16 weights (activations are cast around it)
        for layer in targets.values():
            layer.to(torch.bfloat16)
    with torch.no_grad(), _quiet("torch.utils._pytree"):
        ao.quantize_(model, _config(ao, kind, group), filter_fn=lambda module, name: name in targets)
    return QuantizeReport(kind=kind, layers=list(targets), bytes_before=before,
                          bytes_after=sum(weight_bytes(m) for m in targets.values()), group_size=group)
