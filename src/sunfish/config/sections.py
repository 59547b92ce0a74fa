"""The config sections: one frozen dataclass per concern, and RunConfig, which holds the sections a run
saves in its checkpoints. Each field is declared with `knob(default, help, lo=, hi=)`; the flags of every
verb are generated from these declarations (sunfish/flags.py)."""

from __future__ import annotations

import dataclasses
import enum
import json
from dataclasses import dataclass, field
from typing import Any

from sunfish.config.base import Section, knob
from sunfish.config.enums import (SFTPad, AttentionKind, BaseKind, CacheMode, CommitRule, DistillMode, EmbedMode, FlowLoss, FlowNoise,
                                  Layout, LogKind, LossKind, MaskScheduleKind, MLPKind, NoiseSchedule, ParallelKind,
                                  Parameterisation, Policy, ProcessKind, RemaskKind, Rounding, Solver, Speculate, TimeCond,
                                  TokenizerChoice)


@dataclass(frozen=True, kw_only=True)
class ModelConfig(Section):
    SECTION = "model"

    vocab_size: int = knob(0, "tokens; 0 = take it from the tokenizer", lo=0)
    d_model: int = knob(128, "residual width", lo=2)
    n_layers: int = knob(2, "transformer blocks", lo=1)
    n_heads: int = knob(4, "attention heads; d_model must divide evenly", lo=1)
    n_kv_heads: int = knob(0, "key/value heads (grouped-query attention; must divide n_heads); 0 = n_heads", lo=0)
    qkv_bias: bool = knob(False, "biases on the query, key and value projections (Qwen2 / Dream)")
    norm_eps: float = knob(0.0, "RMSNorm epsilon; 0 = float32's machine epsilon (F.rms_norm's default)", lo=0.0)
    d_ff: int = knob(0, "MLP hidden width; 0 = 4 d_model (relu2) or the LLaMA 8/3 d_model rounded to 64 (swiglu)", lo=0)
    mlp: MLPKind = knob(MLPKind.SWIGLU, "MLP kind")
    context: int = knob(128, "maximum sequence length in tokens", lo=1)
    rope_base: float = knob(10000.0, "RoPE base frequency")
    qk_norm: bool = knob(False, "RMS-normalise queries and keys per head")
    norm_weights: bool = knob(True, "learnable RMSNorm gains (False: plain F.rms_norm, as micro-dllm)")
    embed_norm: bool = knob(False, "RMS-normalise the embeddings before the first block")
    tie_embeddings: bool = knob(False, "share the input embedding with the output head")
    time_cond: TimeCond = knob(TimeCond.NONE, "how the noise level reaches the network")
    time_steps: int = knob(100, "T for the learned time embedding (T + 1 entries)", lo=1)
    attention: AttentionKind = knob(AttentionKind.BIDIRECTIONAL, "bidirectional (diffusion) or causal (AR)")
    layout: Layout = knob(Layout.SAME, "same: the output at i predicts token i (LLaDA); shifted: the output at "
                          "i - 1 does (Dream, AR-adapted models)")
    init_std: float = knob(0.02, "std of the normal initialisation of weights", lo=0.0, hi=1.0)


@dataclass(frozen=True, kw_only=True)
class ProcessConfig(Section):
    SECTION = "process"

    kind: ProcessKind = knob(ProcessKind.MASKED, "training objective / generative process")
    mask_schedule: MaskScheduleKind = knob(MaskScheduleKind.LINEAR, "masked: alpha(t), the probability a token is still clean at time t")
    discrete_steps: int = knob(0, "T > 0 samples t on the grid {1..T}/T; 0 = continuous t", lo=0)
    loss: LossKind = knob(LossKind.NELBO, "training objective")
    antithetic: bool = knob(True, "low-discrepancy sampling of t across the batch")
    eps: float = knob(1e-3, "smallest t drawn (and the log-linear mask schedule's eps), in (0, 0.5)", lo=1e-08, hi=0.5)
    block_size: int = knob(0, "block diffusion (BD3-LM) block size in tokens; 0 = one block (MDLM)", lo=0)
    causal_warmup: float = knob(0.0, "masked: fraction of train.steps spent first on next-token prediction under a "
                                "causal mask, then the masked objective (process/curriculum.py), in [0, 0.9]; 0 = off",
                                lo=0.0, hi=0.9)
    mask_curriculum: float = knob(0.0, "masked/block: fraction of train.steps over which the largest t drawn rises "
                                  "linearly from mask_curriculum_start to 1 (low mask rates first), in [0, 1]; 0 = off",
                                  lo=0.0, hi=1.0)
    mask_curriculum_start: float = knob(0.2, "masked/block: the largest t drawn at the first step of the mask "
                                        "curriculum, in [0.01, 1]", lo=0.01, hi=1.0)
    block_forcing: float = knob(0.0, "block: fraction of training sequences corrupted as in discrete diffusion "
                                "forcing (D2F): every block masked, mask rates rising along the sequence, one "
                                "block-causal copy; trains for pipelined decoding (sampler.pipeline_start < 1), "
                                "in [0, 1]; 0 = BD3-LM alone", lo=0.0, hi=1.0)
    block_curriculum: float = knob(0.0, "block: fraction of train.steps over which the block size grows geometrically "
                                   "from block_curriculum_start to block_size, in [0, 1]; 0 = off", lo=0.0, hi=1.0)
    block_curriculum_start: int = knob(1, "block: block size at the first step of the block curriculum (1 = "
                                       "autoregressive)", lo=1)
    noise_schedule: NoiseSchedule = knob(NoiseSchedule.COSINE, "continuous/ldlm/cola: alpha_bar(t) of the Gaussian process")
    param: Parameterisation = knob(Parameterisation.X0, "continuous/ldlm/cola: what the network predicts (x0 | eps | v)")
    embed: EmbedMode = knob(EmbedMode.NORMALIZED, "continuous: how token embeddings (the data x0) are kept")
    self_cond: bool = knob(False, "continuous: feed the previous x0 estimate back in (Chen et al. 2022), 50% in training")
    flow_noise: FlowNoise = knob(FlowNoise.DIRICHLET, "flow: the noise point on the simplex")
    flow_loss: FlowLoss = knob(FlowLoss.CE, "flow: cross-entropy on p(x1) or velocity squared error")
    time_warp: bool = knob(False, "continuous/flow: warp noise levels by a learned monotone network (CDCD time warping)")
    time_warp_after: int = knob(0, "continuous/flow: training batches on the plain noise levels before the warp trains and is used", lo=0)
    base: str = knob("", "ldlm/cola/vfm: the frozen causal LM (ldlm and cola compress its states, vfm uses it as a one-step flow "
                     "map): a `sunfish train --objective ar` run or a local Hugging Face causal LM folder")
    latents: int = knob(32, "ldlm/cola: K, the latent vectors a text is compressed into (at most two tokens per latent "
                        "learn quickly: see docs/latent.md)", lo=1)
    latent_dim: int = knob(32, "ldlm/cola: width of each latent vector", lo=1)
    perceiver_layers: int = knob(2, "ldlm/cola: self-attention blocks of the Perceiver encoder and of the decoder (each)", lo=0)
    diffusion_warmup: int = knob(1000, "ldlm/cola: training batches over which the diffusion loss's gradient into the "
                                 "encoder rises linearly from 0 to 1 (diffusion-to-encoder warm-up); 0 = full from the "
                                 "start", lo=0)
    adaptive_t: bool = knob(True, "ldlm/cola: draw diffusion times in proportion to the running diffusion loss of each "
                            "time bin (adaptive timestep sampling) instead of uniformly")
    decoder_noise: float = knob(1.0, "ldlm/cola: largest std of the Gaussian noise added to the decoder's input latents in "
                                "training (decoder-input noise), [0, 1]; 1.0 sampled 1.8-2.6x better than 0.1 for LDLM in "
                                "docs/results_processes.md", lo=0.0, hi=1.0)
    hidden_weight: float = knob(1.0, "ldlm/cola: weight of the decoder's MSE to the frozen LM's hidden states", lo=0.0)
    kl_weight: float = knob(0.1, "cola: weight of the VAE encoder's KL to N(0, I) (in docs/results_processes.md 0.1 "
                            "sampled 3x better than 1e-3 and 1e-2, and 1 collapsed)", lo=0.0)
    free_bits: float = knob(0.1, "cola: nats per latent dimension the KL leaves free (free bits)", lo=0.0)
    adapter_layers: int = knob(2, "vfm: transformer blocks of the noise adapter (width model.d_model)", lo=1)
    vfm_tau: float = knob(1.0, "vfm: tau, the data term's weight is 1 / (2 tau^2) and the std of the pure noise mixed in",
                          lo=1e-3)
    vfm_sigma: float = knob(1.0, "vfm: sigma, the observation (prompt) term's weight is 1 / (2 sigma^2)", lo=1e-3)
    vfm_alpha: float = knob(0.5, "vfm: share of training rows that draw their noise from the adapter (the rest draw "
                            "N(0, tau^2)), [0, 1]", lo=0.0, hi=1.0)
    prompt_prob: float = knob(0.0, "fraction of sequences whose random-length prefix is kept clean as a prompt, [0, 1]", lo=0.0, hi=1.0)
    cond_dropout: float = knob(0.0, "fraction of those prompts replaced by [MASK] (classifier-free guidance), [0, 1]", lo=0.0, hi=1.0)


@dataclass(frozen=True, kw_only=True)
class OptimConfig(Section):
    SECTION = "optim"

    lr: float = knob(1e-3, "peak learning rate", lo=0.0)
    beta1: float = knob(0.9, "AdamW beta1")
    beta2: float = knob(0.95, "AdamW beta2")
    eps: float = knob(1e-8, "AdamW epsilon")
    weight_decay: float = knob(0.1, "decoupled weight decay on matrices only (not embeddings' norms or gains)")
    warmup_steps: int = knob(100, "linear warm-up length in optimiser steps", lo=0)
    min_lr_ratio: float = knob(0.1, "cosine decay floor as a fraction of the peak", lo=0.0, hi=1.0)
    grad_clip: float = knob(1.0, "global gradient-norm clip; 0 disables", lo=0.0)
    lr_embed: float = knob(1.0, "learning-rate multiplier for the token (and time) embeddings and output head", lo=0.0)
    lr_attn: float = knob(1.0, "learning-rate multiplier for attention weights", lo=0.0)
    lr_mlp: float = knob(1.0, "learning-rate multiplier for MLP weights", lo=0.0)


@dataclass(frozen=True, kw_only=True)
class TrainConfig(Section):
    SECTION = "train"

    steps: int = knob(1000, "planned total optimiser steps (the LR schedule follows it)", lo=1)
    batch_size: int = knob(16, "sequences per micro-batch", lo=1)
    grad_accum: int = knob(1, "micro-batches per optimiser step", lo=1)
    seq_len: int = knob(0, "tokens per sequence; 0 = the model's context", lo=0)
    log_every: int = knob(10, "steps between metric lines", lo=1)
    val_every: int = knob(100, "steps between validation passes; 0 disables", lo=0)
    val_batches: int = knob(4, "batches per validation pass (the same batches every time)", lo=1)
    save_every: int = knob(0, "steps between checkpoints; 0 = only at the end", lo=0)
    seed: int = knob(0, "seeds weights, data order and noise")
    device: str = knob("auto", "auto | cpu | cuda | cuda:N")
    dtype: str = knob("auto", "auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16")
    compile: bool = knob(False, "torch.compile the model")
    threads: int = knob(0, "CPU threads for torch; 0 = leave torch's default", lo=0)
    parallel: ParallelKind = knob(ParallelKind.NONE, "none | ddp | fsdp (ddp and fsdp run under torchrun)")
    act_ckpt: int = knob(0, "activation checkpointing of every k-th block (1 = all blocks); 0 = off", lo=0)
    offload: bool = knob(False, "fsdp: keep parameters, gradients and optimizer state in CPU memory")
    node_local: bool = knob(False, "ddp/fsdp on several nodes without a shared filesystem: each node keeps a complete "
                            "run folder (--out on its own disk) and its checkpoints (docs/multinode.md)")
    keep_last: int = knob(0, "keep the newest K checkpoints (plus the best by validation loss); 0 = keep all", lo=0)
    max_bad_steps: int = knob(10, "abort after this many steps in a row with a non-finite loss or gradient", lo=1)
    log: LogKind = knob(LogKind.JSONL, "metrics sink besides metrics.jsonl: jsonl | tensorboard | wandb")
    ema: float = knob(0.0, "decay of an exponential moving average of the weights (e.g. 0.999); 0 = off", lo=0.0, hi=0.999999)
    peak_tflops: float = knob(0.0, "per-device peak TFLOP/s for MFU; 0 = look up the GPU (no MFU on CPU)", lo=0.0)
    notify: tuple[str, ...] = knob((), "apprise URLs told when the run finishes, fails or stops (repeat --notify URL; "
                                   "json://, ntfy://, tgram://, discord://, slack://, mailto://, ...); needs apprise")
    notify_every: int = knob(0, "with notify: also a message at every N-th checkpoint written; 0 = none", lo=0)
    monitor_every: int = knob(0, "steps between CPU/RAM/GPU figures in the metrics; 0 = with every metric line "
                              "(log_every)", lo=0)
    max_gpu_temp: float = knob(0.0, "CUDA: above this GPU temperature (deg C) the run pauses to cool, then stops with "
                               "a checkpoint if it stays hot; 0 = off", lo=0.0)
    cool_wait: float = knob(300.0, "with max_gpu_temp: seconds a hot GPU may pause (re-read every 10 s) before the "
                            "run stops", lo=0.0)


@dataclass(frozen=True, kw_only=True)
class DataConfig(Section):
    SECTION = "data"

    tokenizer: TokenizerChoice = knob(TokenizerChoice.CHAR, "tokenizer trained on the corpus when none is given")
    bpe_vocab: int = knob(2048, "BPE vocabulary size (tokens, >= 260)", lo=260)
    synth_lang: str = knob("both", "built-in corpus language when no --data: en | ru | both")
    synth_docs: int = knob(4000, "built-in corpus size in stories", lo=2)
    val_fraction: float = knob(0.02, "documents held out for validation, in (0, 0.5)", lo=1e-06, hi=0.5)
    mix: str = knob("", "streamed tar shards: weights by source or language, 'wiki=3,books=1', or stages from a step on, "
                    "'0:wiki=1,books=1;5000:wiki=3,books=1'; '' = the manifest's weights; may change on --resume")
    workers: int = knob(0, "streamed tar shards: DataLoader worker processes reading batches ahead; 0 = read in the "
                        "training process (the next shard is still fetched in a background thread)", lo=0)


@dataclass(frozen=True, kw_only=True)
class SamplerConfig(Section):
    SECTION = "sampler"

    length: int = knob(64, "tokens to generate", lo=1)
    steps: int = knob(32, "denoising steps (the fixed and ancestral rules use at most one per token)", lo=1)
    policy: Policy = knob(Policy.CONFIDENCE, "which masked positions the fixed and ancestral_topk rules reveal first: "
                          "confidence | margin | entropy | random | info_gain (lookahead, the info_gain_* settings)")
    info_gain_candidates: int = knob(8, "info_gain: candidate commits scored per step, each one lookahead forward "
                                     "pass (1 = the heuristic policy alone)", lo=1)
    info_gain_temperature: float = knob(0.2, "info_gain: temperature of the candidates' positions, drawn from "
                                        "softmax(heuristic score / T) (> 0; small keeps them near the heuristic's)",
                                        lo=1e-06)
    info_gain_weight: float = knob(1.0, "info_gain: weight of the information gain against the immediate entropy "
                                   "cost (the paper's objective: 1; 0 = the cost alone, which is the entropy "
                                   "policy: no lookahead)", lo=0.0)
    info_gain_heuristic: Policy = knob(Policy.CONFIDENCE, "info_gain: the policy that ranks the first candidate and "
                                       "shapes the others: confidence | margin | entropy | random")
    rule: CommitRule = knob(CommitRule.FIXED, "how many positions a step commits: fixed count, ancestral, threshold, "
                            "factor, entropy_bound, learned (a filter from `sunfish tune-commit`, see commit_model)")
    commit_model: str = knob("", "learned rule: the filter file written by `sunfish tune-commit` (.safetensors); \"\" = "
                             "the checkpoint's own commit_rule.safetensors")
    block_length: int = knob(0, "semi-autoregressive block size in tokens; 0 = one block", lo=0)
    temperature: float = knob(0.0, "0 = greedy; > 0 samples with float64 Gumbel noise", lo=0.0)
    top_k: int = knob(0, "keep the k most likely tokens; 0 = all", lo=0)
    top_p: float = knob(1.0, "nucleus mass in (0, 1]", lo=1e-06, hi=1.0)
    threshold: float = knob(0.9, "confidence bar of the threshold rule (a position at or above it commits), in (0, 1]",
                            lo=1e-06, hi=1.0)
    factor: float = knob(1.0, "factor of the factor rule (> 0; larger commits more per step)", lo=1e-06)
    entropy_bound: float = knob(0.5, "gamma of the entropy-bound rule, in nats (>= 0)", lo=0.0)
    fp64_confidence: bool = knob(False, "rank and threshold confidences from a float64 softmax, as Fast-dLLM does "
                                 "(default float32, as LLaDA's generate and Dream do)")
    suppress_special: bool = knob(True, "never write [MASK], PAD, BOS or UNK; false: draw from every token as "
                                  "LLaDA, Fast-dLLM and Dream do (a drawn [MASK] leaves its position masked)")
    cache: CacheMode = knob(CacheMode.NONE, "approximate key/value cache, refreshed when a block starts (and as "
                            "refresh_bound says)")
    refresh_bound: float = knob(-1.0, "with a cache: also refresh it within a block once the block's still-masked "
                                "predictions have moved this far (largest total variation, in [0, 1]) from the last "
                                "full pass; 0 = every step; negative (default -1) = off, only at block starts (Fast-dLLM)")
    stop_at_eos: bool = knob(True, "prompted generation: after a block holding EOS, fill the rest with EOS and stop")
    remask: RemaskKind = knob(RemaskKind.NONE, "ReMDM remasking of committed tokens")
    remask_eta: float = knob(0.1, "ReMDM eta: cap on sigma (cap, conf) or its multiplier (rescale), in [0, 1]", lo=0.0, hi=1.0)
    remask_start: float = knob(0.5, "remask once this fraction of a block is decoded, in [0, 1]", lo=0.0, hi=1.0)
    remask_end: float = knob(1.0, "... and until this fraction, in [0, 1]", lo=0.0, hi=1.0)
    speculate: Speculate = knob(Speculate.NONE, "lossless speculative decoding of the one-commit-per-step fixed rule: "
                                "none | self (drafts from the model's own predictions) | draft (a small draft model, "
                                "sampler.draft); greedy output equals the exact sampler's, sampling keeps its law")
    draft: str = knob("", "speculate=draft: the draft model's run or checkpoint folder (same tokenizer as the model)")
    draft_len: int = knob(2, "speculate: commits drafted and verified per target pass (1 = no speculation; 2 was the "
                          "best measured on small models)", lo=1)
    guidance: float = knob(0.0, "classifier-free guidance w: uncond + (1 + w)(cond - uncond); 0 = off", lo=0.0)
    pipeline_start: float = knob(1.0, "block diffusion: pipelined decoding (D2F): the next block starts once this "
                                 "fraction of the newest block in flight is committed, in (0, 1]; 1 = off (one "
                                 "block at a time)", lo=1e-06, hi=1.0)
    pipeline_depth: int = knob(4, "pipelined decoding: most blocks in flight at once, counted from the first "
                               "unfinished one (>= 2)", lo=2)
    pipeline_activate: float = knob(0.9, "pipelined decoding: a block decodes by sampler.rule once this fraction of "
                                    "the block before it is committed; until then it commits only positions at "
                                    "pipeline_threshold, in (0, 1]", lo=1e-06, hi=1.0)
    pipeline_threshold: float = knob(0.9, "pipelined decoding: confidence a position of a block not yet activated "
                                     "needs to be committed (none is forced), in (0, 1]", lo=1e-06, hi=1.0)
    solver: Solver = knob(Solver.AUTO, "continuous/flow models: ddim | ddpm (continuous), euler | heun (flow)")
    eta: float = knob(0.0, "DDIM noise scale: 0 deterministic, 1 = DDPM's posterior variance, in [0, 1]", lo=0.0, hi=1.0)
    rounding: Rounding = knob(Rounding.HEAD, "continuous: how an x0 estimate becomes tokens")
    clamp: bool = knob(False, "continuous: snap each x0 estimate to its rounded token's embedding (clamping trick)")


@dataclass(frozen=True, kw_only=True)
class SFTConfig(Section):
    """Supervised fine-tuning on conversations (`sunfish sft`); saved in the checkpoint of an SFT run."""

    SECTION = "sft"

    base: str = knob("", "the run the fine-tuning started from (set by `sunfish sft BASE`); \"\" = not an SFT run")
    pad: SFTPad = knob(SFTPad.EOS, "what fills a conversation up to the sequence length: eos (masked and scored like "
                       "the reply, so the model learns where to stop; LLaDA) | mask (PAD, never scored)")
    added_tokens: int = knob(0, "tokens `sunfish sft` appended to the base's vocabulary (its chat tokens; set by "
                             "`sunfish sft`): with lora, their embedding and output rows train", lo=0)
    lora: bool = knob(False, "train LoRA adapters (peft) and the rows of the added tokens; every other weight stays "
                      "frozen (checkpoints keep the adapters; loading and `sunfish export` merge them)")
    lora_rank: int = knob(16, "LoRA rank r (>= 1)", lo=1)
    lora_alpha: float = knob(32.0, "LoRA scale numerator (the update is scaled by alpha / r)", lo=0.0)
    lora_targets: str = knob("all-linear", "comma-separated names of the linear layers LoRA wraps (a Sunfish block "
                             "has qkv, out, up, down), or all-linear (every one but the output head)")
    qlora: bool = knob(False, "QLoRA: the wrapped layers' frozen base weights in 4-bit NF4 (torchao; CPU and CUDA), "
                       "with lora")


@dataclass(frozen=True, kw_only=True)
class ServeConfig(Section):
    """`sunfish serve` settings (not stored in checkpoints); flags --serve.field=value (docs/serving.md)."""

    SECTION = "serve"

    host: str = knob("127.0.0.1", "address to bind; 0.0.0.0 serves every interface (use --api-key there)")
    port: int = knob(8000, "TCP port; 0 picks a free one (printed at start)", lo=0, hi=65535)
    api_key: str = knob("", "when set, every endpoint but /health (and the page's files) needs 'Authorization: Bearer KEY'")
    name: str = knob("", "the model's id in the API (default: the model folder's name)")
    max_batch: int = knob(16, "rows (request choices) decoded together in one batch", lo=1, hi=1024)
    max_queue: int = knob(256, "rows waiting for a batch slot before requests get 429", lo=0)
    max_tokens: int = knob(1024, "largest max_tokens a request may ask for (also capped by the model's context)", lo=1)
    max_prompt_tokens: int = knob(0, "longest prompt in tokens (413 beyond it); 0 = the model's context", lo=0)
    max_n: int = knob(16, "most choices (n) per request", lo=1)
    max_body: int = knob(1_000_000, "largest request body in bytes (413 beyond it)", lo=1024)
    grace: float = knob(30.0, "seconds SIGTERM waits for running requests before cancelling them (they get 503)", lo=0.0)
    retry_after: int = knob(1, "seconds a 429 (queue full) tells the client to wait", lo=0)


@dataclass(frozen=True, kw_only=True)
class EvalConfig(Section):
    """`sunfish eval` settings (not stored in checkpoints); flags --eval.field=value."""

    SECTION = "eval"

    seed: int = knob(0, "seeds the Monte Carlo noise, the samples and the infill spans")
    max_tokens: int = knob(16384, "held-out tokens the likelihood suite scores (whole documents; 0 = all)", lo=0)
    seq_len: int = knob(0, "tokens per scored window; 0 = the run's training sequence length", lo=0)
    batch_size: int = knob(16, "windows per forward pass", lo=1)
    rel_se: float = knob(0.01, "Monte Carlo stops once the standard error is below this fraction of the estimate", lo=1e-06, hi=1.0)
    min_rounds: int = knob(4, "fewest Monte Carlo passes over the held-out text", lo=2)
    max_rounds: int = knob(64, "most Monte Carlo passes (the reached error is reported either way)", lo=2)
    samples: int = knob(16, "unprompted samples per step count (generation suite); rows scored, the first of --data (instruct suite)", lo=1)
    sample_length: int = knob(0, "tokens per sample; 0 = the checkpoint's sampler length", lo=0)
    sample_steps: str = knob("16,64,256", "comma-separated denoising step counts (each capped at the sample length)")
    temperature: float = knob(1.0, "sampling temperature of the generation suite (1 = the model's distribution)", lo=0.0)
    infill_windows: int = knob(32, "held-out windows per span kind (infill suite)", lo=1)
    translation_pairs: int = knob(32, "sentence pairs prompted and scored (translation suite)", lo=1)
    translation_direction: str = knob("en-ru", "en-ru | ru-en")


@dataclass(frozen=True, kw_only=True)
class AdaptConfig(Section):
    """AR -> diffusion adaptation (`sunfish adapt`); saved in the checkpoint of an adapted run."""

    SECTION = "adapt"

    base: str = knob("", "the causal model adapted: a local HF folder or a Sunfish AR run; \"\" = not an adapted run")
    kind: BaseKind = knob(BaseKind.HF, "what `base` is (set by `sunfish adapt` from the folder's contents)")
    layout: Layout = knob(Layout.SHIFTED, "which position's logits predict a masked token")
    lora: bool = knob(False, "train LoRA adapters (peft) instead of all weights")
    lora_rank: int = knob(16, "LoRA rank r (>= 1)", lo=1)
    lora_alpha: float = knob(32.0, "LoRA scale numerator (the update is scaled by alpha / r)", lo=0.0)
    lora_targets: str = knob("all-linear", "comma-separated module names LoRA wraps, or all-linear (peft's choice)")
    qlora: bool = knob(False, "4-bit base weights (bitsandbytes; CUDA only), with lora")
    align_weight: float = knob(0.0, "weight of the representation-alignment loss; 0 = off", lo=0.0)
    align_layers: str = knob("", "comma-separated 1-based layers aligned with the causal teacher; \"\" = all")
    align_layer_sample: int = knob(0, "layers drawn per step from align_layers; 0 = all of them", lo=0)
    align_token_fraction: float = knob(1.0, "fraction of positions scored by the alignment loss per step, in (0, 1]", lo=1e-06, hi=1.0)
    teacher_cache: str = knob("", "folder of teacher hidden states (`sunfish adapt cache-teacher`); \"\" = none")
    trajectories: str = knob("", "file from `sunfish adapt trajectories`; \"\" = random masking only")
    traj_mix: float = knob(1.0, "probability that a sequence with a trajectory is masked along it, in [0, 1]", lo=0.0, hi=1.0)
    traj_min_ratio: float = knob(0.1, "smallest mask ratio drawn for trajectory masking, in (0, 1]", lo=1e-06, hi=1.0)
    traj_max_ratio: float = knob(0.9, "largest mask ratio drawn for trajectory masking, in (0, 1]", lo=1e-06, hi=1.0)


@dataclass(frozen=True, kw_only=True)
class DistillConfig(Section):
    """Step distillation of a masked or block model (`sunfish distill`, training/distill.py); saved in the run."""

    SECTION = "distill"

    teacher: str = knob("", "the run the distillation started from (set by `sunfish distill TEACHER`); \"\" = not a "
                        "distilled run")
    mode: DistillMode = knob(DistillMode.SDTT, "sdtt: the student's one step matches the teacher's two (KL), rounds halve "
                             "the steps | trajectory: cross-entropy toward the teacher's greedy decodings plus certainty "
                             "forcing")
    rounds: int = knob(1, "rounds; each starts with the student of the round before as the teacher (sdtt: and half "
                       "its step count)", lo=1)
    round_steps: int = knob(200, "optimizer steps per round (the run trains rounds x round_steps steps)", lo=1)
    steps_start: int = knob(64, "sdtt: the teacher's denoising steps over a training window in the first round; the "
                            "student learns to match them in half as many, halved again each round", lo=2)
    prompt_length: int = knob(32, "trajectory: tokens at the start of each training window kept as the rollout's "
                              "prompt", lo=1)
    gen_length: int = knob(128, "trajectory: tokens the teacher generates after the prompt, one per step", lo=1)
    block_length: int = knob(32, "trajectory: semi-autoregressive block of the rollouts in tokens (block models: "
                             "their own block size); 0 = one block", lo=0)
    cache: CacheMode = knob(CacheMode.NONE, "trajectory: the rollouts' key/value cache (none | prefix | dual, "
                            "Fast-dLLM's approximate caches)")
    pool: int = knob(0, "trajectory: 0 = roll out the prompt of every training window as it comes (once per prompt); "
                     "N = draw N training windows once, roll their prompts out at each round's start (kept in the "
                     "run folder) and train on states of those N rollouts", lo=0)
    rollout_batch: int = knob(64, "trajectory with a pool: prompts the teacher decodes together", lo=1)
    min_ratio: float = knob(0.05, "trajectory: smallest share of the generated tokens masked in a training state, "
                            "in (0, 1]", lo=1e-06, hi=1.0)
    max_ratio: float = knob(1.0, "trajectory: largest share of the generated tokens masked in a training state, in "
                            "(0, 1]", lo=1e-06, hi=1.0)
    data_weight: float = knob(0.0, "weight of the teacher's own training loss (masked or block NELBO) on the real "
                              "training windows, added to the distillation loss to keep the student a good denoiser; "
                              "0 = distillation only", lo=0.0)
    certainty_weight: float = knob(1.0, "trajectory: weight of certainty forcing (the entropy of the student's "
                                   "predictions at positions it already gets right); 0 = cross-entropy only", lo=0.0)


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    process: ProcessConfig = field(default_factory=ProcessConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    adapt: AdaptConfig = field(default_factory=AdaptConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    preset: str = ""  # the preset this run started from

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self), default=_enum_value))


# section name -> its class: the sections a RunConfig holds, EvalConfig (`sunfish eval`) and ServeConfig (`sunfish
# serve`), which are never saved
SECTIONS: dict[str, type[Section]] = {cls.SECTION: cls for cls in (ModelConfig, ProcessConfig, OptimConfig, TrainConfig,
                                                                    DataConfig, SamplerConfig, AdaptConfig, SFTConfig,
                                                                    DistillConfig,
                                                                    EvalConfig, ServeConfig)}


def _enum_value(obj: Any) -> Any:
    if isinstance(obj, enum.Enum):
        return obj.value
    raise TypeError(f"cannot serialise {obj!r}")
