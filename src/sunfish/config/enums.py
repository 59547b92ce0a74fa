"""Choices of the configuration: one enum per family, so no choice is a bare string (STYLE habit 4)."""

from __future__ import annotations

import enum

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


class MaskScheduleKind(str, enum.Enum):
    LINEAR = "linear"  # alpha = 1 - t
    LOGLINEAR = "loglinear"  # alpha = 1 - (1 - eps) t (MDLM)
    COSINE = "cosine"  # alpha = cos(pi t / 2)
    COSINE_SQ = "cosine_sq"  # alpha = cos^2(pi t / 2) (micro-dllm)


class ProcessKind(str, enum.Enum):
    MASKED = "masked"  # absorbing-state diffusion (MDLM / LLaDA; BD3-LM with block_size > 0)
    AR = "ar"  # autoregressive baseline: next-token prediction, causal attention
    CONTINUOUS = "continuous"  # Gaussian diffusion over token embeddings (Diffusion-LM), rounding to tokens
    FLOW = "flow"  # flow matching on the probability simplex (noise -> one-hot), argmax at the end
    VFM = "vfm"  # a noise adapter q(z | prompt) in front of a frozen LM used as a one-step flow map (Open-dLLM's VFM)
    COLA = "cola"  # LDLM's latent diffusion over a VAE's latents (KL weight, free bits) of a frozen LM's states
    LDLM = "ldlm"  # latent diffusion over Perceiver latents of a frozen causal LM's states (LDLM, arXiv 2605.07933)


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


class SFTPad(str, enum.Enum):
    EOS = "eos"  # pad each conversation with EOS, masked and scored like the reply: the model learns where to stop (LLaDA)
    MASK = "mask"  # pad with [PAD], never masked or scored: the model learns nothing after the reply's end token


class Policy(str, enum.Enum):
    CONFIDENCE = "confidence"  # probability of the drawn token
    MARGIN = "margin"  # top-1 minus top-2 probability
    ENTROPY = "entropy"  # negative entropy of the predictive distribution
    RANDOM = "random"  # uniform random order
    INFO_GAIN = "info_gain"  # Info-Gain (arXiv 2602.18176): sampled candidate commits scored by a lookahead pass


class CommitRule(str, enum.Enum):
    FIXED = "fixed"  # LLaDA: about n / N tokens per step, chosen by the policy
    ANCESTRAL = "ancestral"  # MDLM: each mask revealed with probability (a_s - a_t) / (1 - a_t)
    ANCESTRAL_TOPK = "ancestral_topk"  # Dream: the ancestral step's expected count floor(n (a_s - a_t) / (1 - a_t)), by policy
    THRESHOLD = "threshold"  # Fast-dLLM: every mask whose confidence reaches `threshold` (at least one)
    FACTOR = "factor"  # Fast-dLLM: the largest n with (n + 1)(1 - c_n) < `factor`, c sorted descending
    ENTROPY_BOUND = "entropy_bound"  # EB-sampler: lowest-entropy masks while sum H - max H <= `entropy_bound`
    LEARNED = "learned"  # Learn2PD: the masks a small trained filter passes (`commit_model`), at least the most confident


class CacheMode(str, enum.Enum):
    NONE = "none"  # every step is a full forward pass
    PREFIX = "prefix"  # Fast-dLLM prefix cache: reuse keys/values of the prompt and finished blocks
    DUAL = "dual"  # Fast-dLLM dual cache: also reuse the masked suffix; recompute only the active block


class Speculate(str, enum.Enum):
    NONE = "none"  # one commit per step as the rule decides, no speculation
    SELF = "self"  # lossless self-speculative decoding: the model drafts from its own stale predictions
    DRAFT = "draft"  # lossless speculative decoding with a small draft model (sampler.draft)


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


class DistillMode(str, enum.Enum):
    SDTT = "sdtt"  # self-distillation through time: the student's one step matches the teacher's two (arXiv 2410.21035)
    TRAJECTORY = "trajectory"  # the teacher's greedy decodings, cross-entropy plus certainty forcing (arXiv 2509.26488)


class BaseKind(str, enum.Enum):
    HF = "hf"  # a local Hugging Face causal LM folder (transformers AutoModelForCausalLM)
    SUNFISH = "sunfish"  # a Sunfish run trained with `sunfish train --objective ar`


class Layout(str, enum.Enum):
    SAME = "same"  # LLaDA: the logits at position i predict token i
    SHIFTED = "shifted"  # Dream: the logits at i - 1 predict token i, keeping the AR head's alignment
