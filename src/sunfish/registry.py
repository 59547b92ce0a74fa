"""The process registry: each generative process declares, in one entry, what it is and what it can do.

An entry (`ProcessSpec`) names the process's training loss, its sampler, its likelihood estimator, the layers
it adds to the backbone, the config fields it reads and what its sampler supports (infilling, guidance,
caches, remasking, batches of mixed-length prompts, temperature / top-k / top-p). Code elsewhere asks
`spec_of(cfg.process)` and reads the entry; it never tests the process kind itself. Adding a process is one
entry here. (torchtitan's TrainSpec registry and vLLM's model registry are the models.)

Eight processes: masked diffusion (MDLM / LLaDA), block diffusion (BD3-LM: masked with process.block_size > 0),
the autoregressive baseline, Gaussian diffusion over embeddings, flow matching on the simplex, latent
diffusion over a frozen LM's compressed states (LDLM, or over a VAE's latents: Cola) and a noise adapter in front of a frozen LM (VFM); the
last three name the network they train around the frozen base, which `sunfish.adapt.latent` loads (loading a
base needs the checkpoint code that imports this module).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from sunfish.config import (AttentionKind, Layout, ModelConfig, ParallelKind, Parameterisation, ProcessConfig, ProcessKind,
                            SamplerConfig, Speculate, TimeCond)
from sunfish.model.transformer import Transformer, build_model
from sunfish.process.autoregressive import causal_nats, causal_warmup_loss, next_token_loss
from sunfish.process.block import block_diffusion_loss, block_hidden, block_nats, block_scores
from sunfish.process.continuous import continuous_loss, continuous_nats
from sunfish.process.flow import flow_loss
from sunfish.process.layers import continuous_layers, flow_layers
from sunfish.process.cola import ColaLM
from sunfish.process.ldlm import LatentLM, ldlm_loss, reconstruction
from sunfish.process.vfm import NoiseAdapterLM, vfm_loss
from sunfish.process.curriculum import FINAL, Stage, stage_process
from sunfish.process.masked import LossOutput, masked_diffusion_loss, masked_hidden, masked_nats, masked_scores
from sunfish.process.schedules import MaskSchedule
from sunfish.process.sft import ar_sft_loss, block_sft_loss, masked_sft_loss
from sunfish.sample.ar import ar_generate
from sunfish.sample.batch import Generators, Padding
from sunfish.sample.block import block_generate
from sunfish.sample.continuous import continuous_generate
from sunfish.sample.flow import flow_generate
from sunfish.sample.pipeline import pipeline_generate
from sunfish.sample.speculate import speculative_decode
from sunfish.sample.ldlm import ldlm_generate
from sunfish.sample.vfm import vfm_generate
from sunfish.sample.unmask import SampleResult, unmask


@dataclass(frozen=True)
class Estimator:
    """A likelihood estimator: per-sequence nats of the scored positions of x (B, L)."""

    name: str  # shown in reports
    nats: Callable[..., torch.Tensor]  # (model, x, process cfg, mask id, u (B,) in [0, 1), generator, scored=None) -> (B,)
    exact: bool  # one pass gives the exact value (no Monte Carlo)


@dataclass(frozen=True)
class DecodeJob:
    """What a sampler needs besides the network, the canvas and the sampler settings."""

    mask_id: int
    process: ProcessConfig
    generator: Generators  # one generator, or one per row (sample/batch.py)
    padding: Padding | None = None  # left padding of mixed-length prompts
    callback: Callable | None = None  # receives a StepInfo after each step
    eos_id: int | None = None  # stop at EOS (prompted generation)
    suppress: Sequence[int] = ()  # token ids never drawn besides [MASK] (PAD, BOS, UNK)
    drift: bool = False  # report cached-vs-exact drift (approximate caches only)
    draft: Any = None  # the loaded draft model of speculative decoding (sample/drafter.py: open_draft)


@dataclass(frozen=True)
class Need:
    """A setting a process cannot run without; `why` is the one-sentence refusal."""

    key: str  # dotted config key, e.g. "model.attention"
    ok: Callable[[Any], bool]
    why: str


@dataclass(frozen=True)
class ProcessSpec:
    name: str  # registry key, the value of `train --process`
    label: str  # how messages name the process
    loss: Callable[..., LossOutput]  # (model, x0 (B, L), process cfg, mask id, generator, curriculum Stage)
    decode: Callable[..., SampleResult]  # (model, canvas (B, L), fill_start, sampler cfg, DecodeJob)
    likelihood: Estimator | None  # None: no likelihood estimator is known
    reconstruction: Callable[..., tuple[int, int]] | None = None  # (model, x (B, L)) -> (correct, total) tokens
    # read back from their own latents; what evaluation reports for a latent model without a likelihood
    network: Callable[..., torch.nn.Module] | None = None  # (model cfg, process cfg, frozen base) -> the network
    # trained around a frozen LM (process.base); sunfish.adapt.latent loads the base and builds it
    scores: Callable[..., torch.Tensor] | None = None  # (model, z, x, t, where, process cfg) -> -log p (N,) of the
    # tokens of x at `where` given the masked z (B, L) at times t (B,); None: not a masking process (training/plateau.py)
    denoiser: Callable[..., torch.Tensor] | None = None  # (model, z, x, t, process cfg) -> hidden states (B, L, D) of
    # the masked z (B, L) at times t (B,), given the clean x (B, L) where the process conditions on it (block: the
    # earlier blocks); None: not a masking process (`sunfish distill` needs one)
    layers: Callable | None = None  # (model, process cfg): attaches model.process_io
    process_fields: frozenset[str] = frozenset()  # ProcessConfig fields the process reads (besides kind)
    sampler_fields: frozenset[str] = frozenset()  # SamplerConfig fields its sampler reads
    choices: dict[str, tuple[str, ...]] = field(default_factory=dict)  # the values it takes of a choice field that
    # other processes take more of (the solver: ddim/ddpm or euler/heun); absent: every value
    needs: tuple[Need, ...] = ()  # settings it cannot run without
    infill: bool = False  # fills masks anywhere in a canvas (else only after a prompt)
    causal: bool = False  # left to right, one token per pass, exact likelihood
    fixed_blocks: bool = False  # decodes in its trained blocks with an exact cache (block_length does not apply)
    parallel: bool = False  # commits several tokens per step by a rule tune-sampler can tune
    mixed_batches: bool = True  # decodes prompts of different lengths in one batch
    final_commits: bool = True  # a committed token never changes (without remasking), so text can stream as committed
    sft: Callable[..., LossOutput] | None = None  # (model, x0, roles (B, L), process cfg, mask id, generator): process/sft.py
    wants_time: bool = False  # `train --process NAME` turns on time conditioning when the config has none
    train_flags: dict = field(default_factory=dict)  # the config tree `sunfish train --process NAME` applies

    @property
    def a_label(self) -> str:
        """The label with its indefinite article, for messages: 'an autoregressive', 'a masked diffusion'."""
        return ("an " if self.label[0] in "aeiou" else "a ") + self.label

    @property
    def frozen_base(self) -> bool:
        """It trains around a frozen LM (process.base) and is built and loaded by sunfish.adapt.latent."""
        return self.network is not None

    def supports(self, sampler_field: str) -> bool:
        return sampler_field in self.sampler_fields


GAUSSIAN_SOLVERS = ("auto", "ddim", "ddpm")  # the solvers of Gaussian diffusion (continuous, latent); flow: euler, heun


# ---- samplers behind one signature ------------------------------------------------------------------

def _schedule(p: ProcessConfig) -> MaskSchedule:
    return MaskSchedule(p.mask_schedule, p.eps)


def _decode_masked(model, x, fill_start: int, cfg: SamplerConfig, job: DecodeJob) -> SampleResult:
    if cfg.speculate is not Speculate.NONE:
        return speculative_decode(model, x, fill_start, cfg, job, block_size=0, schedule=_schedule(job.process))
    return unmask(model, x, job.mask_id, cfg, generator=job.generator, schedule=_schedule(job.process),
                  callback=job.callback, eos_id=job.eos_id, track_drift=job.drift, suppress=job.suppress,
                  padding=job.padding)


def _prompt_and_length(x: torch.Tensor, fill_start: int, mask_id: int, what: str) -> tuple[torch.Tensor, int]:
    if fill_start < 1 or not bool((x[:, fill_start:] == mask_id).all()):
        raise ValueError(f"{what} generates after a prompt only; it cannot fill masks inside a text")
    return x[:, :fill_start], x.shape[1] - fill_start


def _decode_block(model, x, fill_start: int, cfg: SamplerConfig, job: DecodeJob) -> SampleResult:
    prompt, length = _prompt_and_length(x, fill_start, job.mask_id, "a block-diffusion model")
    if cfg.speculate is not Speculate.NONE:
        return speculative_decode(model, x, fill_start, cfg, job, block_size=job.process.block_size,
                                  schedule=_schedule(job.process))
    generate = block_generate if cfg.pipeline_start >= 1 else pipeline_generate  # several blocks in flight (D2F)
    return generate(model, prompt, length, job.mask_id, job.process.block_size, cfg, generator=job.generator,
                    schedule=_schedule(job.process), callback=job.callback, eos_id=job.eos_id,
                    suppress=job.suppress, padding=job.padding)


def _decode_ar(model, x, fill_start: int, cfg: SamplerConfig, job: DecodeJob) -> SampleResult:
    prompt, length = _prompt_and_length(x, fill_start, job.mask_id, "an autoregressive model")
    return ar_generate(model, prompt, length, cfg, generator=job.generator, mask_id=job.mask_id, callback=job.callback,
                       eos_id=job.eos_id, suppress=job.suppress, padding=job.padding)


def _decode_continuous(model, x, fill_start: int, cfg: SamplerConfig, job: DecodeJob) -> SampleResult:
    return continuous_generate(model, x, job.mask_id, cfg, job.process, generator=job.generator, callback=job.callback)


def _decode_ldlm(model, x, fill_start: int, cfg: SamplerConfig, job: DecodeJob) -> SampleResult:
    return ldlm_generate(model, x, fill_start, job.mask_id, cfg, job.process, generator=job.generator,
                         suppress=job.suppress, callback=job.callback)


def _decode_vfm(model, x, fill_start: int, cfg: SamplerConfig, job: DecodeJob) -> SampleResult:
    return vfm_generate(model, x, fill_start, job.mask_id, cfg, generator=job.generator, suppress=job.suppress,
                        callback=job.callback)


def _decode_flow(model, x, fill_start: int, cfg: SamplerConfig, job: DecodeJob) -> SampleResult:
    return flow_generate(model, x, job.mask_id, cfg, job.process, generator=job.generator, callback=job.callback)


# ---- the entries ------------------------------------------------------------------------------------

_MASKED_TRAIN = frozenset({"mask_schedule", "discrete_steps", "loss", "antithetic", "eps", "block_size",
                           "mask_curriculum", "mask_curriculum_start"})
_TIME_DRAWS = frozenset({"discrete_steps", "antithetic", "eps", "prompt_prob"})
_DRAWING = frozenset({"temperature", "top_k", "top_p"})
_INFO_GAIN = frozenset({"info_gain_candidates", "info_gain_temperature", "info_gain_weight", "info_gain_heuristic"})
_SPECULATE = frozenset({"speculate", "draft", "draft_len"})
_UNMASKING = frozenset({"length", "steps", "policy", "rule", "threshold", "factor", "entropy_bound", "stop_at_eos",
                        "remask", "remask_eta", "remask_start", "remask_end", "fp64_confidence",
                        "suppress_special", "commit_model"}) | _DRAWING | _INFO_GAIN | _SPECULATE
_PIPELINE = frozenset({"pipeline_start", "pipeline_depth", "pipeline_activate", "pipeline_threshold"})
_BIDIRECTIONAL = Need("model.attention", lambda v: v is AttentionKind.BIDIRECTIONAL,
                      "the {label} process needs bidirectional attention; set --model.attention=bidirectional")
_ONE_BLOCK = Need("process.block_size", lambda v: v == 0,
                  "the {label} process has no block variant; set --process.block_size=0")
_BASE = Need("process.base", bool, "the {label} process works on a frozen causal LM; pass --process.base PATH (a `sunfish "
             "train --objective ar` run or a local Hugging Face causal LM folder)")
# a network around a frozen base has no `blocks` to shard, compile or checkpoint one by one (training/parallel.py)
_WHOLE = (Need("train.parallel", lambda v: v is not ParallelKind.FSDP, "the {label} process trains a small network "
               "around a frozen base and runs without FSDP; use --train.parallel=ddp or none"),
          Need("train.compile", lambda v: not v, "the {label} process does not compile its network yet; drop "
               "--train.compile"),
          Need("train.act_ckpt", lambda v: v == 0, "the {label} process has no activation checkpointing; set "
               "--train.act_ckpt=0"))
_SAME_LAYOUT = Need("model.layout", lambda v: v is Layout.SAME,
                    "the {label} process reads the output at each position for that position; set --model.layout=same")

MASKED = ProcessSpec(
    name="masked", label="masked diffusion", loss=masked_diffusion_loss, decode=_decode_masked,
    likelihood=Estimator("NELBO (masked diffusion)", masked_nats, exact=False), scores=masked_scores,
    denoiser=masked_hidden,
    process_fields=_MASKED_TRAIN | {"prompt_prob", "cond_dropout", "causal_warmup"},
    sampler_fields=_UNMASKING | {"block_length", "cache", "refresh_bound", "guidance"},
    infill=True, parallel=True, sft=masked_sft_loss, train_flags={"process": {"kind": "masked", "block_size": 0}},
)
BLOCK = ProcessSpec(
    name="block", label="block diffusion", loss=block_diffusion_loss, decode=_decode_block,
    likelihood=Estimator("NELBO (block diffusion)", block_nats, exact=False), scores=block_scores,
    denoiser=block_hidden,
    process_fields=_MASKED_TRAIN | {"block_curriculum", "block_curriculum_start", "block_forcing"},
    sampler_fields=_UNMASKING | _PIPELINE,
    needs=(_SAME_LAYOUT, Need("model.time_cond", lambda v: v is TimeCond.NONE,
                              "the block process runs without time conditioning; set --model.time_cond=none"),
           Need("process.prompt_prob", lambda v: v == 0,
                "process.prompt_prob (conditional training) is not implemented for the block process; set it to 0")),
    fixed_blocks=True, parallel=True, sft=block_sft_loss,
    train_flags={"process": {"kind": "masked", "block_size": 16}, "model": {"time_cond": "none", "layout": "same"}},
)
AR = ProcessSpec(
    name="ar", label="autoregressive", loss=lambda model, x0, cfg, mask_id, generator, stage: next_token_loss(model, x0),
    decode=_decode_ar, likelihood=Estimator("exact NLL (causal)", causal_nats, exact=True),
    sampler_fields=frozenset({"length", "stop_at_eos", "suppress_special"}) | _DRAWING,
    needs=(_SAME_LAYOUT, Need("model.attention", lambda v: v is AttentionKind.CAUSAL,
                "the autoregressive objective needs causal attention; set --model.attention=causal or use --objective ar"),
           Need("process.prompt_prob", lambda v: v == 0,
                "process.prompt_prob (conditional training) is not implemented for the autoregressive objective; "
                "set it to 0")),
    causal=True, sft=ar_sft_loss,
    train_flags={"process": {"kind": "ar"}, "model": {"attention": "causal", "time_cond": "none", "layout": "same"}},
)
CONTINUOUS = ProcessSpec(
    name="continuous", label="continuous (embedding diffusion)", loss=lambda model, x0, cfg, mask_id, generator, stage:
    continuous_loss(model, x0, cfg, generator), decode=_decode_continuous,
    likelihood=Estimator("NELBO (embedding diffusion, continuous time)", continuous_nats, exact=False),
    layers=continuous_layers,
    process_fields=_TIME_DRAWS | {"noise_schedule", "param", "embed", "self_cond", "time_warp", "time_warp_after"},
    sampler_fields=frozenset({"length", "steps", "solver", "eta", "rounding", "clamp"}), choices={"solver": GAUSSIAN_SOLVERS},
    needs=(_BIDIRECTIONAL, _ONE_BLOCK, _SAME_LAYOUT), infill=True, mixed_batches=False, final_commits=False,
    wants_time=True,
    train_flags={"process": {"kind": "continuous"}, "model": {"layout": "same"}},
)
FLOW = ProcessSpec(
    name="flow", label="simplex flow", loss=lambda model, x0, cfg, mask_id, generator, stage: flow_loss(model, x0, cfg, generator),
    decode=_decode_flow, likelihood=None, layers=flow_layers,
    process_fields=_TIME_DRAWS | {"flow_noise", "flow_loss", "time_warp", "time_warp_after"},
    sampler_fields=frozenset({"length", "steps", "solver"}), choices={"solver": ("auto", "euler", "heun")},
    needs=(_BIDIRECTIONAL, _ONE_BLOCK, _SAME_LAYOUT,
           Need("process.self_cond", lambda v: not v, "process.self_cond applies to the continuous process only; "
                "drop it for flow models")),
    infill=True, mixed_batches=False, final_commits=False, wants_time=True,
    train_flags={"process": {"kind": "flow"}, "model": {"layout": "same"}},
)
_LATENT_FIELDS = _TIME_DRAWS | {"noise_schedule", "param", "base", "latents", "latent_dim", "perceiver_layers",
                                "diffusion_warmup", "adaptive_t", "decoder_noise", "hidden_weight"}
_LATENT_NEEDS = (_BASE, Need("process.param", lambda v: v is not Parameterisation.SOFTMAX, "the {label} process predicts "
                             "latents (x0, eps or v), not token probabilities; set --process.param=v"),
                 Need("model.time_cond", lambda v: v is TimeCond.ADALN, "the {label} denoiser is a DiT with adaLN time "
                      "conditioning; set --model.time_cond=adaln"), _BIDIRECTIONAL, _ONE_BLOCK, _SAME_LAYOUT, *_WHOLE)


def _latent(name: str, label: str, network: Callable, fields: frozenset[str]) -> ProcessSpec:
    """A latent diffusion process over a frozen LM's states: LDLM's loss, sampler and reconstruction."""
    return ProcessSpec(
        name=name, label=label, loss=lambda model, x0, cfg, mask_id, generator, stage: ldlm_loss(model, x0, cfg, generator),
        decode=_decode_ldlm, likelihood=None, reconstruction=reconstruction, process_fields=fields,
        sampler_fields=frozenset({"length", "steps", "solver", "eta"}), choices={"solver": GAUSSIAN_SOLVERS},
        needs=_LATENT_NEEDS, mixed_batches=False,
        final_commits=False, network=network,
        train_flags={"process": {"kind": name, "param": "v", "block_size": 0},
                     "model": {"time_cond": "adaln", "attention": "bidirectional", "layout": "same"}},
    )


LDLM = _latent("ldlm", "latent diffusion (LDLM)", LatentLM, _LATENT_FIELDS)
COLA = _latent("cola", "VAE latent diffusion (Cola)", ColaLM, _LATENT_FIELDS | {"kl_weight", "free_bits"})
VFM = ProcessSpec(
    name="vfm", label="noise-adapter flow map (VFM)", loss=lambda model, x0, cfg, mask_id, generator, stage:
    vfm_loss(model, x0, cfg, generator), decode=_decode_vfm, likelihood=None,
    process_fields=frozenset({"base", "adapter_layers", "vfm_tau", "vfm_sigma", "vfm_alpha", "prompt_prob"}),
    sampler_fields=frozenset({"length", "temperature"}),
    needs=(_BASE, _ONE_BLOCK, _SAME_LAYOUT, _BIDIRECTIONAL,
           Need("model.time_cond", lambda v: v is TimeCond.NONE, "the {label} adapter takes no time; set "
                "--model.time_cond=none"), *_WHOLE),
    mixed_batches=False, network=NoiseAdapterLM,
    train_flags={"process": {"kind": "vfm", "block_size": 0, "prompt_prob": 0.5},
                 "model": {"time_cond": "none", "attention": "bidirectional", "layout": "same"}},
)
SPECS: dict[str, ProcessSpec] = {s.name: s for s in (MASKED, BLOCK, AR, CONTINUOUS, FLOW, LDLM, COLA, VFM)}
_BY_KIND = {ProcessKind.MASKED: MASKED, ProcessKind.AR: AR, ProcessKind.CONTINUOUS: CONTINUOUS, ProcessKind.FLOW: FLOW,
            ProcessKind.LDLM: LDLM, ProcessKind.COLA: COLA,
            ProcessKind.VFM: VFM}


def spec_of(process: ProcessConfig) -> ProcessSpec:
    """The entry of the process a config names (masked with block_size > 0 is block diffusion)."""
    spec = _BY_KIND[process.kind]
    return BLOCK if spec is MASKED and process.block_size > 0 else spec


def processes_using(section: str, key: str) -> list[ProcessSpec]:
    """The processes that read `section.key` (section: "process" or "sampler")."""
    return [s for s in SPECS.values() if key in (s.process_fields if section == "process" else s.sampler_fields)]


# ---- what every caller needs ------------------------------------------------------------------------

def attach_layers(model: torch.nn.Module, process: ProcessConfig) -> None:
    """Give a backbone the layers its process adds (input/output projections, the learned warp), if any."""
    layers = spec_of(process).layers
    if layers is not None:
        layers(model, process)


def build_network(model_cfg: ModelConfig, process: ProcessConfig, device: torch.device | str = "cpu") -> Transformer:
    """The backbone with the layers its process adds."""
    if spec_of(process).frozen_base:
        raise ValueError(f"{spec_of(process).a_label} network is built around its frozen base; open the run with "
                         "sunfish.loading.load_model (or any sunfish verb), not as a plain network")
    model = build_model(model_cfg, device)
    attach_layers(model, process)
    return model


def training_loss(model: torch.nn.Module, x0: torch.Tensor, process: ProcessConfig, mask_id: int,
                  generator: torch.Generator, stage: Stage | None = None) -> LossOutput:
    """Loss of x0 (B, L) under the configured process at curriculum stage `stage` (process/curriculum.py: a causal
    warm-up step, a smaller largest t or block size; None: the final objective). A model with an objective of its own while training (an
    adapted causal LM, adapt/objective.py: NELBO + alignment) computes it instead; conversations (SFT) take no
    curriculum."""
    spec = spec_of(process)
    if x0.dim() == 3:  # conversations (B, 2, L): tokens and roles (data/sft.py)
        if spec.sft is None:
            raise ValueError(f"supervised fine-tuning is not defined for {spec.label} models; fine-tune a masked, "
                             "block or autoregressive model")
        return spec.sft(model, x0[:, 0], x0[:, 1], process, mask_id, generator)
    objective = getattr(model, "objective", None)
    if objective is not None and model.training:
        return objective.loss(model, x0, process, mask_id, generator)
    stage = stage or FINAL
    if stage.causal:
        return causal_warmup_loss(model, x0)
    return spec.loss(model, x0, stage_process(process, stage), mask_id, generator, stage)


def decode(model: torch.nn.Module, canvas: torch.Tensor, fill_start: int, cfg: SamplerConfig, job: DecodeJob,
           *, mixed_batches: bool = True) -> SampleResult:
    """Run the sampler of the process on canvas (B, L), whose columns from `fill_start` on may change."""
    spec = spec_of(job.process)
    if job.padding is not None and not (spec.mixed_batches and mixed_batches):
        raise ValueError(f"batched prompts of different lengths are not supported by {spec.label} models; "
                         "generate one prompt at a time or give prompts of one length")
    return spec.decode(model, canvas, fill_start, cfg, job)
