"""Run configuration: one frozen dataclass per concern, TOML presets, strict overrides.

Precedence (../shared/STYLE.md): dataclass defaults, then a preset file from `sunfish/presets/`, then
`--section.field=value` flags. Unknown sections or keys and values of the wrong type are errors
(`ConfigError`, one sentence). Each component receives only its own slice of a `RunConfig`.

  enums.py     the choices (one enum per family)
  base.py      `knob` (a field with its help and range), `Section`, `coerce`
  sections.py  ModelConfig, ProcessConfig, OptimConfig, TrainConfig, DataConfig, SamplerConfig, EvalConfig,
               ServeConfig, AdaptConfig and RunConfig
  tree.py      presets, overrides, saved configs (renamed keys converted), `describe`
"""

from sunfish.config.base import INF, ConfigError, Section, choices, coerce, field_help, knob
from sunfish.config.enums import (AttentionKind, BaseKind, CacheMode, CommitRule, DistillMode, EmbedMode, FlowLoss, FlowNoise,
                                  Layout, LogKind, LossKind, MaskScheduleKind, MLPKind, NoiseSchedule, ParallelKind,
                                  Parameterisation, Policy, ProcessKind, RemaskKind, Rounding, SFTPad, Solver, Speculate,
                                  TimeCond, TokenizerChoice)
from sunfish.config.sections import (SECTIONS, AdaptConfig, DataConfig, DistillConfig, EvalConfig, ModelConfig, OptimConfig,
                                     ProcessConfig, RunConfig, SamplerConfig, ServeConfig, SFTConfig, TrainConfig)
from sunfish.config.tree import (RENAMED, apply_section, apply_tree, check_key, config_from_dict, describe, load_preset,
                                 parse_overrides, preset_names, public_dict, save_config, section_class, upgrade_tree)

__all__ = [
    "INF", "ConfigError", "Section", "choices", "coerce", "field_help", "knob",
    "AttentionKind", "BaseKind", "CacheMode", "CommitRule", "DistillMode", "EmbedMode", "FlowLoss", "FlowNoise", "Layout", "LogKind",
    "LossKind", "MaskScheduleKind", "MLPKind", "NoiseSchedule", "ParallelKind", "Parameterisation", "Policy", "Speculate",
    "ProcessKind", "RemaskKind", "Rounding", "SFTPad", "Solver", "TimeCond", "TokenizerChoice",
    "SECTIONS", "AdaptConfig", "DataConfig", "DistillConfig", "EvalConfig", "ModelConfig", "OptimConfig", "ProcessConfig", "RunConfig",
    "SamplerConfig", "ServeConfig", "SFTConfig", "TrainConfig",
    "RENAMED", "apply_section", "apply_tree", "check_key", "config_from_dict", "describe", "load_preset",
    "parse_overrides", "preset_names", "public_dict", "save_config", "section_class", "upgrade_tree",
]
