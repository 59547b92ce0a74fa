"""Run configuration: one frozen dataclass per concern, TOML presets, strict overrides.

Precedence (../shared/STYLE.md): dataclass defaults, then a preset file from `sunfish/presets/`, then
`--section.field=value` flags. Unknown sections or keys and values of the wrong type are errors
(`ConfigError`, one sentence). Each component receives only its own slice of a `RunConfig`.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import sys
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on Python 3.10
    import tomli as tomllib


INF = float("inf")
SECTION_NAMES = {"ModelConfig": "model", "ProcessConfig": "process", "OptimConfig": "optim", "TrainConfig": "train",
                 "DataConfig": "data", "SamplerConfig": "sampler", "EvalConfig": "eval",
                 "AdaptConfig": "adapt"}


class ConfigError(ValueError):
    """A configuration problem a person can fix; the message is one sentence."""


class MLPKind(str, enum.Enum):
    SWIGLU = "swiglu"  # gated SiLU (LLaMA / LLaDA)
    RELU2 = "relu2"  # squared ReLU (micro-dllm, modded-nanoGPT)


class TimeCond(str, enum.Enum):
    NONE = "none"  # LLaDA: the mask ratio is visible in the input
    LEARNED = "learned"  # embedding table of time_steps + 1 entries added to the input (micro-dllm)
    SINUSOIDAL = "sinusoidal"  # sinusoidal features -> 2-layer MLP added to the input
    ADALN = "adaln"  # DiT / MDLM: per-block shift, scale and gate from the time embedding


class AttentionKind(str, enum.Enum):
    BIDIRECTIONAL = "bidirectional"  # diffusion LM
    CAUSAL = "causal"  # the same backbone as an autoregressive baseline


class ScheduleKind(str, enum.Enum):
    LINEAR = "linear"  # alpha = 1 - t
    LOGLINEAR = "loglinear"  # alpha = 1 - (1 - eps) t (MDLM)
    COSINE = "cosine"  # alpha = cos(pi t / 2)
    COSINE_SQ = "cosine_sq"  # alpha = cos^2(pi t / 2) (micro-dllm)


class ProcessKind(str, enum.Enum):
    MASKED = "masked"  # absorbing-state diffusion (MDLM / LLaDA; BD3-LM with block_size > 0)
    AR = "ar"  # autoregressive baseline: next-token prediction, causal attention
    CONTINUOUS = "continuous"  # Gaussian diffusion over token embeddings (Diffusion-LM), rounding to tokens
    FLOW = "flow"  # flow matching on the probability simplex (noise -> one-hot), argmax at the end


class NoiseSchedule(str, enum.Enum):
    LINEAR = "linear"  # VP linear beta from 0.1 to 20 (DDPM's 1e-4..0.02 over 1000 steps)
    COSINE = "cosine"  # alpha_bar = cos^2((t + s) / (1 + s) pi / 2) / cos^2(s / (1 + s) pi / 2), s = 0.008
    SQRT = "sqrt"  # alpha_bar = 1 - sqrt(t + 1e-4) (Diffusion-LM)


class Parameterisation(str, enum.Enum):
    X0 = "x0"  # the network predicts the clean embedding (Diffusion-LM's choice)
    EPS = "eps"  # the network predicts the added noise
    V = "v"  # the network predicts v = sqrt(abar) eps - sqrt(1 - abar) x0
    SOFTMAX = "softmax"  # the LM head's p(w | x_t) gives x0 = sum_w p(w) Emb(w), trained by CE (CDCD, Dieleman et al. 2022)


class EmbedMode(str, enum.Enum):
    NORMALIZED = "normalized"  # learned jointly, each row RMS-normalised to 1 when used as x0
    LEARNED = "learned"  # learned jointly, unconstrained (initialised N(0, 1))
    FROZEN = "frozen"  # fixed random N(0, 1) rows, RMS-normalised


class FlowNoise(str, enum.Enum):
    DIRICHLET = "dirichlet"  # uniform on the simplex, Dirichlet(1, ..., 1)
    SOFTMAX_GAUSSIAN = "softmax_gaussian"  # softmax of a standard Gaussian vector


class FlowLoss(str, enum.Enum):
    CE = "ce"  # predict p(x1) with cross-entropy; velocity = (p - x_t) / (1 - t)
    VELOCITY = "velocity"  # regress the velocity x1 - x0 with squared error (the seed's objective)


class Solver(str, enum.Enum):
    AUTO = "auto"  # ddim for continuous models, euler for flow models
    DDIM = "ddim"  # continuous: DDIM with `eta` (0 = deterministic)
    DDPM = "ddpm"  # continuous: ancestral sampling (DDIM with eta = 1)
    EULER = "euler"  # flow: Euler steps from noise to data
    HEUN = "heun"  # flow: Heun's second-order steps (2 evaluations per step, Euler on the last)


class Rounding(str, enum.Enum):
    HEAD = "head"  # argmax of the output head applied to the x0 estimate
    COSINE = "cosine"  # the embedding with the highest cosine similarity
    EUCLIDEAN = "euclidean"  # the nearest embedding in Euclidean distance


class LossKind(str, enum.Enum):
    NELBO = "nelbo"  # continuous-time NELBO, weight -alpha'/(1 - alpha), normalised per token
    MASKED_CE = "masked_ce"  # plain mean cross-entropy over masked tokens (micro-dllm)


class Policy(str, enum.Enum):
    CONFIDENCE = "confidence"  # probability of the drawn token
    MARGIN = "margin"  # top-1 minus top-2 probability
    ENTROPY = "entropy"  # negative entropy of the predictive distribution
    RANDOM = "random"  # uniform random order


class StepSchedule(str, enum.Enum):
    FIXED = "fixed"  # LLaDA: about n / N tokens per step, chosen by the policy
    ANCESTRAL = "ancestral"  # MDLM: each mask revealed with probability (a_s - a_t) / (1 - a_t)
    THRESHOLD = "threshold"  # Fast-dLLM: every mask whose confidence exceeds `threshold` (at least one)
    FACTOR = "factor"  # Fast-dLLM: the largest n with (n + 1)(1 - c_n) < `factor`, c sorted descending
    ENTROPY_BOUND = "entropy_bound"  # EB-sampler: lowest-entropy masks while sum H - max H <= `entropy_bound`


class CacheMode(str, enum.Enum):
    NONE = "none"  # every step is a full forward pass
    PREFIX = "prefix"  # Fast-dLLM prefix cache: reuse keys/values of the prompt and finished blocks
    DUAL = "dual"  # Fast-dLLM dual cache: also reuse the masked suffix; recompute only the active block


class RemaskKind(str, enum.Enum):
    NONE = "none"  # committed tokens are final
    CAP = "cap"  # ReMDM max-capped: sigma = min(eta, sigma_max)
    RESCALE = "rescale"  # ReMDM rescaled: sigma = eta * sigma_max
    CONF = "conf"  # ReMDM confidence: cap's budget spent on the least confident committed tokens


class TokenizerChoice(str, enum.Enum):
    CHAR = "char"
    BPE = "bpe"


class ParallelKind(str, enum.Enum):
    NONE = "none"  # one process (or independent processes)
    DDP = "ddp"  # DistributedDataParallel under torchrun: replicated weights, all-reduced gradients
    FSDP = "fsdp"  # FSDP2 (fully_shard) under torchrun: weights, gradients and optimizer state sharded


class LogKind(str, enum.Enum):
    JSONL = "jsonl"  # RUN_DIR/metrics.jsonl only
    TENSORBOARD = "tensorboard"  # also TensorBoard scalars in RUN_DIR/tensorboard
    WANDB = "wandb"  # also Weights & Biases (offline unless WANDB_MODE says otherwise)


class Section:
    """Base of the config sections: enum fields given as strings are converted on construction."""

    def __post_init__(self) -> None:
        for name, kind in typing.get_type_hints(type(self)).items():
            value = getattr(self, name)
            if isinstance(kind, type) and issubclass(kind, enum.Enum) and not isinstance(value, kind):
                object.__setattr__(self, name, _coerce(type(self).__name__, name, kind, value))
        section = SECTION_NAMES.get(type(self).__name__, type(self).__name__)
        for name, (low, high) in getattr(self, "RANGES", {}).items():
            value = getattr(self, name)
            if not (low <= value <= high):
                bound = f">= {low}" if high == float("inf") else f"between {low} and {high}"
                raise ConfigError(f"{section}.{name} = {value} is out of range; it must be {bound}")


@dataclass(frozen=True, kw_only=True)
class ModelConfig(Section):
    vocab_size: int = 0  # tokens; 0 = take it from the tokenizer
    d_model: int = 128  # residual width
    n_layers: int = 2  # transformer blocks
    n_heads: int = 4  # attention heads; d_model must divide evenly
    d_ff: int = 0  # MLP hidden width; 0 = 4 d_model (relu2) or the LLaMA 8/3 d_model rounded to 64 (swiglu)
    mlp: MLPKind = MLPKind.SWIGLU  # MLP kind
    context: int = 128  # maximum sequence length in tokens
    rope_base: float = 10000.0  # RoPE base frequency
    qk_norm: bool = False  # RMS-normalise queries and keys per head
    norm_weights: bool = True  # learnable RMSNorm gains (False: plain F.rms_norm, as micro-dllm)
    embed_norm: bool = False  # RMS-normalise the embeddings before the first block
    tie_embeddings: bool = False  # share the input embedding with the output head
    time_cond: TimeCond = TimeCond.NONE  # how the noise level reaches the network
    time_steps: int = 100  # T for the learned time embedding (T + 1 entries)
    attention: AttentionKind = AttentionKind.BIDIRECTIONAL  # bidirectional (diffusion) or causal (AR)
    init_std: float = 0.02  # std of the normal initialisation of weights

    RANGES = {"vocab_size": (0, INF), "d_model": (2, INF), "n_layers": (1, INF), "n_heads": (1, INF),
              "d_ff": (0, INF), "context": (1, INF), "time_steps": (1, INF), "init_std": (0.0, 1.0)}


@dataclass(frozen=True, kw_only=True)
class ProcessConfig(Section):
    kind: ProcessKind = ProcessKind.MASKED  # training objective / generative process
    schedule: ScheduleKind = ScheduleKind.LINEAR  # alpha(t), the probability a token is still clean
    discrete_steps: int = 0  # T > 0 samples t on the grid {1..T}/T; 0 = continuous t
    loss: LossKind = LossKind.NELBO  # training objective
    antithetic: bool = True  # low-discrepancy sampling of t across the batch
    eps: float = 1e-3  # smallest t drawn (and the log-linear schedule's eps), in (0, 0.5)
    block_size: int = 0  # block diffusion (BD3-LM) block size in tokens; 0 = one block (MDLM)
    noise_schedule: NoiseSchedule = NoiseSchedule.COSINE  # continuous: alpha_bar(t) of the Gaussian process
    param: Parameterisation = Parameterisation.X0  # continuous: what the network predicts (x0 | eps | v)
    embed: EmbedMode = EmbedMode.NORMALIZED  # continuous: how token embeddings (the data x0) are kept
    self_cond: bool = False  # continuous: feed the previous x0 estimate back in (Chen et al. 2022), 50% in training
    flow_noise: FlowNoise = FlowNoise.DIRICHLET  # flow: the noise point on the simplex
    flow_loss: FlowLoss = FlowLoss.CE  # flow: cross-entropy on p(x1) or velocity squared error
    learned_schedule: bool = False  # continuous/flow: warp noise levels by a learned monotone network
    learn_schedule_after: int = 0  # training batches on the fixed schedule before the learned one trains and is used
    prompt_prob: float = 0.0  # fraction of sequences whose random-length prefix is kept clean as a prompt, [0, 1]
    cond_dropout: float = 0.0  # fraction of those prompts replaced by [MASK] (classifier-free guidance), [0, 1]

    RANGES = {"discrete_steps": (0, INF), "eps": (1e-8, 0.5), "block_size": (0, INF), "prompt_prob": (0.0, 1.0),
              "learn_schedule_after": (0, INF),
              "cond_dropout": (0.0, 1.0)}


@dataclass(frozen=True, kw_only=True)
class OptimConfig(Section):
    lr: float = 1e-3  # peak learning rate
    beta1: float = 0.9  # AdamW beta1
    beta2: float = 0.95  # AdamW beta2
    eps: float = 1e-8  # AdamW epsilon
    weight_decay: float = 0.1  # decoupled weight decay on matrices only (not embeddings' norms or gains)
    warmup_steps: int = 100  # linear warm-up length in optimiser steps
    min_lr_ratio: float = 0.1  # cosine decay floor as a fraction of the peak
    grad_clip: float = 1.0  # global gradient-norm clip; 0 disables
    lr_embed: float = 1.0  # learning-rate multiplier for the token (and time) embeddings and output head
    lr_attn: float = 1.0  # learning-rate multiplier for attention weights
    lr_mlp: float = 1.0  # learning-rate multiplier for MLP weights

    RANGES = {"lr": (0.0, INF), "warmup_steps": (0, INF), "min_lr_ratio": (0.0, 1.0), "grad_clip": (0.0, INF),
              "lr_embed": (0.0, INF), "lr_attn": (0.0, INF), "lr_mlp": (0.0, INF)}


@dataclass(frozen=True, kw_only=True)
class TrainConfig(Section):
    steps: int = 1000  # planned total optimiser steps (the LR schedule follows it)
    batch_size: int = 16  # sequences per micro-batch
    grad_accum: int = 1  # micro-batches per optimiser step
    seq_len: int = 0  # tokens per sequence; 0 = the model's context
    log_every: int = 10  # steps between metric lines
    val_every: int = 100  # steps between validation passes; 0 disables
    val_batches: int = 4  # batches per validation pass (the same batches every time)
    save_every: int = 0  # steps between checkpoints; 0 = only at the end
    seed: int = 0  # seeds weights, data order and noise
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16
    compile: bool = False  # torch.compile the model
    threads: int = 0  # CPU threads for torch; 0 = leave torch's default
    parallel: ParallelKind = ParallelKind.NONE  # none | ddp | fsdp (ddp and fsdp run under torchrun)
    act_ckpt: int = 0  # activation checkpointing of every k-th block (1 = all blocks); 0 = off
    offload: bool = False  # fsdp: keep parameters, gradients and optimizer state in CPU memory
    keep_last: int = 0  # keep the newest K checkpoints (plus the best by validation loss); 0 = keep all
    max_bad_steps: int = 10  # abort after this many steps in a row with a non-finite loss or gradient
    log: LogKind = LogKind.JSONL  # metrics sink besides metrics.jsonl: jsonl | tensorboard | wandb
    ema: float = 0.0  # decay of an exponential moving average of the weights (e.g. 0.999); 0 = off
    peak_tflops: float = 0.0  # per-device peak TFLOP/s for MFU; 0 = look up the GPU (no MFU on CPU)

    RANGES = {"steps": (1, INF), "batch_size": (1, INF), "grad_accum": (1, INF), "seq_len": (0, INF),
              "log_every": (1, INF), "val_every": (0, INF), "val_batches": (1, INF), "save_every": (0, INF), "threads": (0, INF),
              "act_ckpt": (0, INF), "keep_last": (0, INF), "max_bad_steps": (1, INF), "ema": (0.0, 0.999999),
              "peak_tflops": (0.0, INF)}


@dataclass(frozen=True, kw_only=True)
class DataConfig(Section):
    tokenizer: TokenizerChoice = TokenizerChoice.CHAR  # tokenizer trained on the corpus when none is given
    bpe_vocab: int = 2048  # BPE vocabulary size (tokens, >= 260)
    synth_lang: str = "both"  # built-in corpus language when no --data: en | ru | both
    synth_docs: int = 4000  # built-in corpus size in stories
    val_fraction: float = 0.02  # documents held out for validation, in (0, 0.5)

    RANGES = {"bpe_vocab": (260, INF), "synth_docs": (2, INF), "val_fraction": (1e-6, 0.5)}


@dataclass(frozen=True, kw_only=True)
class SamplerConfig(Section):
    length: int = 64  # tokens to generate
    steps: int = 32  # denoising steps, 1..length
    policy: Policy = Policy.CONFIDENCE  # which masked positions to reveal (fixed schedule)
    schedule: StepSchedule = StepSchedule.FIXED  # how many positions to reveal per step
    block_length: int = 0  # semi-autoregressive block size in tokens; 0 = one block
    temperature: float = 0.0  # 0 = greedy; > 0 samples with float64 Gumbel noise
    top_k: int = 0  # keep the k most likely tokens; 0 = all
    top_p: float = 1.0  # nucleus mass in (0, 1]
    threshold: float = 0.9  # confidence bar of the threshold schedule, in (0, 1]
    factor: float = 1.0  # factor of the factor schedule (> 0; larger commits more per step)
    entropy_bound: float = 0.5  # gamma of the entropy-bound schedule, in nats (>= 0)
    cache: CacheMode = CacheMode.NONE  # approximate key/value cache, refreshed when a block completes
    stop_at_eos: bool = True  # prompted generation: after a block holding EOS, fill the rest with EOS and stop
    remask: RemaskKind = RemaskKind.NONE  # ReMDM remasking of committed tokens
    remask_eta: float = 0.1  # ReMDM eta: cap on sigma (cap, conf) or its multiplier (rescale), in [0, 1]
    remask_start: float = 0.5  # remask once this fraction of a block is decoded, in [0, 1]
    remask_end: float = 1.0  # ... and until this fraction, in [0, 1]
    guidance: float = 0.0  # classifier-free guidance w: uncond + (1 + w)(cond - uncond); 0 = off
    solver: Solver = Solver.AUTO  # continuous/flow models: ddim | ddpm (continuous), euler | heun (flow)
    eta: float = 0.0  # DDIM noise scale: 0 deterministic, 1 = DDPM's posterior variance, in [0, 1]
    rounding: Rounding = Rounding.HEAD  # continuous: how an x0 estimate becomes tokens
    clamp: bool = False  # continuous: snap each x0 estimate to its rounded token's embedding (clamping trick)

    RANGES = {"length": (1, INF), "steps": (1, INF), "block_length": (0, INF), "temperature": (0.0, INF),
              "top_k": (0, INF), "top_p": (1e-6, 1.0), "threshold": (1e-6, 1.0), "factor": (1e-6, INF),
              "entropy_bound": (0.0, INF), "remask_eta": (0.0, 1.0), "remask_start": (0.0, 1.0),
              "remask_end": (0.0, 1.0), "guidance": (0.0, INF), "eta": (0.0, 1.0)}


@dataclass(frozen=True, kw_only=True)
class EvalConfig(Section):
    """`sunfish eval` settings (not stored in checkpoints); flags --eval.field=value."""

    seed: int = 0  # seeds the Monte Carlo noise, the samples and the infill spans
    max_tokens: int = 16384  # held-out tokens the likelihood suite scores (whole documents; 0 = all)
    seq_len: int = 0  # tokens per scored window; 0 = the run's training sequence length
    batch_size: int = 16  # windows per forward pass
    rel_se: float = 0.01  # Monte Carlo stops once the standard error is below this fraction of the estimate
    min_rounds: int = 4  # fewest Monte Carlo passes over the held-out text
    max_rounds: int = 64  # most Monte Carlo passes (the reached error is reported either way)
    samples: int = 16  # unprompted samples per step count (generation suite)
    sample_length: int = 0  # tokens per sample; 0 = the checkpoint's sampler length
    sample_steps: str = "16,64,256"  # comma-separated denoising step counts (each capped at the sample length)
    temperature: float = 1.0  # sampling temperature of the generation suite (1 = the model's distribution)
    infill_windows: int = 32  # held-out windows per span kind (infill suite)
    translation_pairs: int = 32  # sentence pairs prompted and scored (translation suite)
    translation_direction: str = "en-ru"  # en-ru | ru-en

    RANGES = {"max_tokens": (0, INF), "seq_len": (0, INF), "batch_size": (1, INF), "rel_se": (1e-6, 1.0),
              "min_rounds": (2, INF), "max_rounds": (2, INF), "samples": (1, INF), "sample_length": (0, INF),
              "temperature": (0.0, INF), "infill_windows": (1, INF), "translation_pairs": (1, INF)}


class BaseKind(str, enum.Enum):
    HF = "hf"  # a local Hugging Face causal LM folder (transformers AutoModelForCausalLM)
    SUNFISH = "sunfish"  # a Sunfish run trained with `sunfish train --objective ar`


class Layout(str, enum.Enum):
    SAME = "same"  # LLaDA: the logits at position i predict token i
    SHIFTED = "shifted"  # Dream: the logits at i - 1 predict token i, keeping the AR head's alignment


@dataclass(frozen=True, kw_only=True)
class AdaptConfig(Section):
    """AR -> diffusion adaptation (`sunfish adapt`); saved in the checkpoint of an adapted run."""

    base: str = ""  # the causal model adapted: a local HF folder or a Sunfish AR run; "" = not an adapted run
    kind: BaseKind = BaseKind.HF  # what `base` is (set by `sunfish adapt` from the folder's contents)
    layout: Layout = Layout.SHIFTED  # which position's logits predict a masked token
    lora: bool = False  # train LoRA adapters (peft) instead of all weights
    lora_rank: int = 16  # LoRA rank r (>= 1)
    lora_alpha: float = 32.0  # LoRA scale numerator (the update is scaled by alpha / r)
    lora_targets: str = "all-linear"  # comma-separated module names LoRA wraps, or all-linear (peft's choice)
    qlora: bool = False  # 4-bit base weights (bitsandbytes; CUDA only), with lora
    align_weight: float = 0.0  # weight of the representation-alignment loss; 0 = off
    align_layers: str = ""  # comma-separated 1-based layers aligned with the causal teacher; "" = all
    align_layer_sample: int = 0  # layers drawn per step from align_layers; 0 = all of them
    align_token_fraction: float = 1.0  # fraction of positions scored by the alignment loss per step, in (0, 1]
    teacher_cache: str = ""  # folder of teacher hidden states (`sunfish adapt cache-teacher`); "" = none
    trajectories: str = ""  # file from `sunfish adapt trajectories`; "" = random masking only
    traj_mix: float = 1.0  # probability that a sequence with a trajectory is masked along it, in [0, 1]
    traj_min_ratio: float = 0.1  # smallest mask ratio drawn for trajectory masking, in (0, 1]
    traj_max_ratio: float = 0.9  # largest mask ratio drawn for trajectory masking, in (0, 1]

    RANGES = {"lora_rank": (1, INF), "lora_alpha": (0.0, INF), "align_weight": (0.0, INF),
              "align_layer_sample": (0, INF), "align_token_fraction": (1e-6, 1.0), "traj_mix": (0.0, 1.0),
              "traj_min_ratio": (1e-6, 1.0), "traj_max_ratio": (1e-6, 1.0)}


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    process: ProcessConfig = field(default_factory=ProcessConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    adapt: AdaptConfig = field(default_factory=AdaptConfig)
    preset: str = ""  # the preset this run started from

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self), default=_enum_value))


SECTIONS = {f.name: f.type for f in dataclasses.fields(RunConfig) if f.name != "preset"}


def _enum_value(obj: Any) -> Any:
    if isinstance(obj, enum.Enum):
        return obj.value
    raise TypeError(f"cannot serialise {obj!r}")


def _section_class(name: str) -> type:
    hints = typing.get_type_hints(RunConfig)
    if name not in SECTIONS:
        raise ConfigError(f"unknown config section '{name}'; sections are: {', '.join(SECTIONS)}")
    return hints[name]


def _coerce(section: str, key: str, kind: type, value: Any) -> Any:
    """Convert `value` (from TOML or a flag string) to the field type, or raise ConfigError."""
    where = f"{section}.{key}"
    try:
        if isinstance(kind, type) and issubclass(kind, enum.Enum):
            return kind(value.lower() if isinstance(value, str) else value)
        if kind is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
                return value.lower() in ("true", "1", "yes")
            raise ValueError
        if kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if kind is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if kind is str:
            return str(value)
    except (ValueError, TypeError):
        pass
    choices = ""
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        choices = f" (one of {', '.join(m.value for m in kind)})"
    raise ConfigError(f"{where} = {value!r} is not a valid {kind.__name__}{choices}")


def apply_section(obj: Any, section: str, values: dict[str, Any]) -> Any:
    """Return a copy of the section dataclass `obj` with `values` applied, strictly typed."""
    hints = typing.get_type_hints(type(obj))
    changes = {}
    for key, value in values.items():
        if key not in hints:
            known = ", ".join(hints)
            raise ConfigError(f"unknown config key '{section}.{key}'; keys of [{section}] are: {known}")
        changes[key] = _coerce(section, key, hints[key], value)
    return dataclasses.replace(obj, **changes)


def apply_tree(cfg: RunConfig, tree: dict[str, Any]) -> RunConfig:
    """Apply a nested {section: {key: value}} mapping (a preset or a saved config)."""
    updates: dict[str, Any] = {}
    for section, values in tree.items():
        if section == "preset":
            updates["preset"] = str(values)
            continue
        _section_class(section)
        if not isinstance(values, dict):
            raise ConfigError(f"config section '{section}' must be a table of key = value pairs")
        updates[section] = apply_section(getattr(cfg, section), section, values)
    return dataclasses.replace(cfg, **updates)


def preset_names() -> list[str]:
    folder = resources.files("sunfish") / "presets"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def load_preset(name: str) -> RunConfig:
    """Defaults overlaid with `sunfish/presets/NAME.toml`."""
    if name not in preset_names():
        raise ConfigError(f"unknown preset '{name}'; run `sunfish presets` to list them ({', '.join(preset_names())})")
    text = (resources.files("sunfish") / "presets" / f"{name}.toml").read_text(encoding="utf-8")
    return apply_tree(RunConfig(preset=name), tomllib.loads(text))


def parse_overrides(args: list[str]) -> dict[str, dict[str, str]]:
    """Turn ['--model.d_model=256', ...] into {'model': {'d_model': '256'}}; reject anything else."""
    tree: dict[str, dict[str, str]] = {}
    for arg in args:
        body = arg[2:] if arg.startswith("--") else ""
        key, sep, value = body.partition("=")
        section, dot, name = key.partition(".")
        if not (sep and dot and section and name):
            raise ConfigError(f"cannot read the argument '{arg}'; overrides look like --section.field=value")
        _section_class(section)
        tree.setdefault(section, {})[name] = value
    return tree


def config_from_dict(tree: dict[str, Any]) -> RunConfig:
    """Rebuild a RunConfig saved with `to_dict` (inside a checkpoint)."""
    return apply_tree(RunConfig(), tree)


def save_config(cfg: RunConfig, path: Path) -> None:
    path.write_text(json.dumps(cfg.to_dict(), indent=2) + "\n", encoding="utf-8")


def describe(cfg: RunConfig) -> str:
    """The resolved config as TOML-like text, printed at the start of a run."""
    lines = [f"# preset: {cfg.preset or '(none)'}"]
    for section, values in cfg.to_dict().items():
        if isinstance(values, dict):
            lines.append(f"[{section}]")
            lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    return "\n".join(lines)
