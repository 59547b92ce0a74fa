"""One check before any work: what the chosen process or model cannot run, and flags that would do nothing.

`validate(cfg, given)` refuses, in one sentence each,
- settings a process cannot run without (the registry's `needs`: causal attention for the autoregressive
  objective, no time conditioning for block diffusion, ...), whatever set them;
- a flag the user gave (`given`, dotted keys such as "sampler.guidance") that the process does not read,
  naming the processes that do, or that does nothing in one process (--train.node_local);
- a sampler flag that does nothing under the other settings (a threshold without the threshold rule, top-k
  at temperature 0, remasking knobs without remasking, info_gain knobs without --policy info_gain, a commit
  model without the learned rule, a refresh bound without a cache, ...), a LoRA knob without --lora, a
  curriculum's start without its length, and --train.notify_every or --train.cool_wait without what they act on
  (--notify, --train.max_gpu_temp);
- curriculum settings that cannot work (a mask curriculum starting below eps, a block curriculum starting
  above the block size);
- info_gain settings that cannot run, whatever set them (info_gain as its own heuristic, with remasking);
- speculative decoding with what it cannot verify (another rule, info_gain, remasking, guidance; sample/speculate.py);
- the learned commit rule without its filter file or with remasking, and adaptive cache refresh under info_gain.
Values that come from a preset or a saved checkpoint are not flags and are not refused for being unused.
"""

from __future__ import annotations

from typing import Any, Iterable

from sunfish.config import (CacheMode, CommitRule, ConfigError, ParallelKind, Policy, RemaskKind, RunConfig,
                            SamplerConfig, Solver, Speculate)
from sunfish.registry import ProcessSpec, processes_using, spec_of
from sunfish.sample.speculate import speculation_problem

# sampler field -> (the field it depends on, the values of that field under which it acts, what to say)
ACTS_WHEN: dict[str, tuple[str, Any, str]] = {
    "steps": ("rule", (CommitRule.FIXED, CommitRule.ANCESTRAL, CommitRule.ANCESTRAL_TOPK), "the fixed and ancestral "
              "rules (the adaptive rules choose their own step count)"),
    "policy": ("rule", (CommitRule.FIXED, CommitRule.ANCESTRAL_TOPK), "the fixed and ancestral_topk rules"),
    "threshold": ("rule", (CommitRule.THRESHOLD,), "--sampler.rule=threshold"),
    "factor": ("rule", (CommitRule.FACTOR,), "--sampler.rule=factor"),
    "entropy_bound": ("rule", (CommitRule.ENTROPY_BOUND,), "--sampler.rule=entropy_bound"),
    "remask_eta": ("remask", tuple(k for k in RemaskKind if k is not RemaskKind.NONE), "remasking (--sampler.remask)"),
    "remask_start": ("remask", tuple(k for k in RemaskKind if k is not RemaskKind.NONE), "remasking (--sampler.remask)"),
    "remask_end": ("remask", tuple(k for k in RemaskKind if k is not RemaskKind.NONE), "remasking (--sampler.remask)"),
    "eta": ("solver", (Solver.AUTO, Solver.DDIM), "the ddim solver (ddpm is eta = 1)"),
    "commit_model": ("rule", (CommitRule.LEARNED,), "--sampler.rule=learned"),
    "refresh_bound": ("cache", (CacheMode.PREFIX, CacheMode.DUAL), "an approximate cache (--sampler.cache prefix or "
                      "dual): without one every step is a full pass already"),
    **{name: ("pipeline_start", lambda v: v < 1, "pipelined decoding (--sampler.pipeline_start below 1)") for name in
       ("pipeline_depth", "pipeline_activate", "pipeline_threshold")},
    "draft": ("speculate", (Speculate.DRAFT,), "--sampler.speculate draft"),
    "draft_len": ("speculate", (Speculate.SELF, Speculate.DRAFT), "speculative decoding (--sampler.speculate)"),
    **{name: ("policy", (Policy.INFO_GAIN,), "--policy info_gain") for name in
       ("info_gain_candidates", "info_gain_temperature", "info_gain_weight", "info_gain_heuristic")},
}
# a setting that acts only while a switch is on -> that switch (LoRA knobs of `sunfish adapt` and `sunfish sft`)
SWITCHED: dict[str, str] = {f"{section}.{name}": f"{section}.lora" for section in ("adapt", "sft")
                            for name in ("lora_rank", "lora_alpha", "lora_targets", "qlora")}
# a training setting that acts only when another is set -> (that setting, the flag that sets it)
ACTS_WITH: dict[str, tuple[str, str]] = {"train.notify_every": ("train.notify", "--notify URL"),
                                         "train.cool_wait": ("train.max_gpu_temp", "--train.max_gpu_temp=C")}
# a curriculum's start -> the share of the run that turns the curriculum on (process/curriculum.py)
CURRICULA: dict[str, str] = {"process.mask_curriculum_start": "process.mask_curriculum",
                             "process.block_curriculum_start": "process.block_curriculum"}


def _labels(specs: list[ProcessSpec]) -> str:
    return ", ".join(f"{s.label}" for s in specs) or "no process"


def _value(cfg: RunConfig, key: str) -> Any:
    section, _, name = key.partition(".")
    return getattr(getattr(cfg, section), name)


def check_needs(spec: ProcessSpec, cfg: RunConfig) -> None:
    """Settings the process cannot run without, whatever set them."""
    for need in spec.needs:
        if not need.ok(_value(cfg, need.key)):
            raise ConfigError(need.why.format(label=spec.label))
    if cfg.process.cond_dropout > 0 and cfg.process.prompt_prob == 0 and "cond_dropout" in spec.process_fields:
        raise ConfigError("process.cond_dropout drops prompts, so it needs process.prompt_prob > 0")
    check_curricula(spec, cfg)


def check_curricula(spec: ProcessSpec, cfg: RunConfig) -> None:
    """Curriculum settings that cannot work together with the rest of the run (process/curriculum.py)."""
    p = cfg.process
    if "mask_curriculum" in spec.process_fields and p.mask_curriculum and p.mask_curriculum_start <= p.eps:
        raise ConfigError(f"process.mask_curriculum_start ({p.mask_curriculum_start}) must exceed process.eps "
                          f"({p.eps}), the smallest t drawn")
    if "block_curriculum" in spec.process_fields and p.block_curriculum and p.block_curriculum_start > p.block_size:
        raise ConfigError(f"process.block_curriculum_start ({p.block_curriculum_start}) must not exceed "
                          f"process.block_size ({p.block_size}), where the block curriculum ends")


def check_sampler(spec: ProcessSpec, sampler: SamplerConfig, given: Iterable[str],
                  unavailable: dict[str, str] | None = None) -> None:
    """Refuse sampler flags (field names in `given`) that do nothing for this process or under the other
    settings, and combinations that cannot run; `unavailable` maps fields the loaded network cannot do to the reason."""
    check_info_gain(spec, sampler)
    check_learned(spec, sampler)
    problem = speculation_problem(sampler, set(given)) if "speculate" in spec.sampler_fields else None
    if problem:
        raise ConfigError(problem)
    for name in sorted(set(given)):
        if name not in spec.sampler_fields:
            raise ConfigError(f"sampler.{name} does nothing for {spec.label} models; it applies to "
                              f"{_labels(processes_using('sampler', name))} models")
        if unavailable and name in unavailable:
            raise ConfigError(f"sampler.{name} is not available for this model: {unavailable[name]}")
        if name in ACTS_WHEN:
            other, acts, when = ACTS_WHEN[name]
            value = getattr(sampler, other)
            ok = acts(value) if callable(acts) else value in acts
            if other in spec.sampler_fields and not ok:
                shown = getattr(value, "value", value)
                raise ConfigError(f"sampler.{name} does nothing with sampler.{other} = {shown}; it applies to {when}")


def check_info_gain(spec: ProcessSpec, sampler: SamplerConfig) -> None:
    """The info_gain policy's settings that cannot run, whatever set them."""
    if "policy" not in spec.sampler_fields or sampler.policy is not Policy.INFO_GAIN:
        return
    if sampler.info_gain_heuristic is Policy.INFO_GAIN:
        raise ConfigError("sampler.info_gain_heuristic cannot be info_gain itself; use confidence, margin, entropy or random")
    if sampler.remask is not RemaskKind.NONE and sampler.rule in (CommitRule.FIXED, CommitRule.ANCESTRAL_TOPK):
        raise ConfigError("the info_gain policy does not take committed tokens back; drop --remask or use another policy")


def check_learned(spec: ProcessSpec, sampler: SamplerConfig) -> None:
    """The learned commit rule and adaptive cache refresh settings that cannot run, whatever set them."""
    if "rule" in spec.sampler_fields and sampler.rule is CommitRule.LEARNED:
        if not sampler.commit_model:
            raise ConfigError("the learned commit rule needs its filter: pass --sampler.commit_model FILE (written by "
                              "`sunfish tune-commit CKPT`)")
        if sampler.remask is not RemaskKind.NONE:
            raise ConfigError("the learned commit rule does not take committed tokens back; drop --remask")
    adaptive = "refresh_bound" in spec.sampler_fields and sampler.refresh_bound >= 0
    if adaptive and sampler.cache is not CacheMode.NONE and sampler.policy is Policy.INFO_GAIN \
            and sampler.rule in (CommitRule.FIXED, CommitRule.ANCESTRAL_TOPK):
        raise ConfigError("adaptive cache refresh (refresh_bound) measures the block's own passes, which the info_gain "
                          "lookahead replaces; drop --refresh-bound or use another policy")
    if adaptive and sampler.cache is not CacheMode.NONE and sampler.speculate is not Speculate.NONE:
        raise ConfigError("speculative decoding refreshes its cache at block starts only; drop --refresh-bound or "
                          "--sampler.speculate")


def validate(cfg: RunConfig, given: Iterable[str] = ()) -> ProcessSpec:
    """Check a run's config before any work; returns the process entry. `given`: dotted keys the user set."""
    spec = spec_of(cfg.process)
    check_needs(spec, cfg)
    sampler_given = []
    for key in sorted(set(given)):
        section, _, name = key.partition(".")
        if section == "process" and name != "kind" and name not in spec.process_fields:
            raise ConfigError(f"process.{name} does nothing for {spec.label} models; it applies to "
                              f"{_labels(processes_using('process', name))} models")
        if section == "process" and name == "time_warp_after" and not cfg.process.time_warp:
            raise ConfigError("process.time_warp_after does nothing without process.time_warp=true")
        if key in CURRICULA and not _value(cfg, CURRICULA[key]):
            raise ConfigError(f"{key} does nothing without {CURRICULA[key]} > 0 (the curriculum's share of the run)")
        if key in ACTS_WITH and not _value(cfg, ACTS_WITH[key][0]):
            raise ConfigError(f"{key} does nothing without {ACTS_WITH[key][1]}; add it or leave {key} out")
        if key in SWITCHED and not _value(cfg, SWITCHED[key]):
            switch = SWITCHED[key].partition(".")[2]
            raise ConfigError(f"{key} does nothing without --{switch} ({SWITCHED[key]}=true); add --{switch} or leave it out")
        if key == "train.node_local" and cfg.train.node_local and cfg.train.parallel is ParallelKind.NONE:
            raise ConfigError("--train.node_local=true does nothing in one process (one process has one run folder); "
                              "it is for --train.parallel=ddp|fsdp on several nodes, or leave it out")
        if section == "sampler":
            sampler_given.append(name)
    check_sampler(spec, cfg.sampler, sampler_given)
    return spec
