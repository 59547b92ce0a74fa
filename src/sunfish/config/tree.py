"""Building a RunConfig: defaults < a TOML preset < `--section.field=value` overrides; saved configs back.

Unknown sections or keys and values of the wrong type are errors (`ConfigError`, one sentence). Keys that
were renamed are converted when a saved config is read (`RENAMED`), so runs saved before a rename load.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import typing
from importlib import resources
from pathlib import Path
from typing import Any

from sunfish.config.base import ConfigError, coerce
from sunfish.config.sections import SECTIONS, RunConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on Python 3.10
    import tomli as tomllib

# (section, old key) -> new key. "schedule" used to name four things: alpha(t), the Gaussian noise schedule,
# the sampler's commit rule and a learned time warp; each now has a name of its own.
RENAMED = {("process", "schedule"): "mask_schedule", ("process", "learned_schedule"): "time_warp",
           ("process", "learn_schedule_after"): "time_warp_after", ("sampler", "schedule"): "rule"}


def section_class(name: str) -> type:
    if name not in SECTIONS:
        raise ConfigError(f"unknown config section '{name}'; sections are: {', '.join(SECTIONS)}")
    return SECTIONS[name]


def check_key(section: str, key: str, cls: type | None = None) -> None:
    """Raise ConfigError unless `section.key` names a field of the section (of `cls` when given, else of the
    RunConfig/EvalConfig section of that name); a renamed key is answered with its new name."""
    fields = [f.name for f in dataclasses.fields(cls or section_class(section))]
    if key in fields:
        return
    if (section, key) in RENAMED:
        raise ConfigError(f"{section}.{key} was renamed {section}.{RENAMED[section, key]}; use --{section}.{RENAMED[section, key]}")
    raise ConfigError(f"unknown config key '{section}.{key}'; keys of [{section}] are: {', '.join(fields)}")


def apply_section(obj: Any, section: str, values: dict[str, Any]) -> Any:
    """Return a copy of the section dataclass `obj` with `values` applied, strictly typed."""
    hints = typing.get_type_hints(type(obj))
    changes = {}
    for key, value in values.items():
        check_key(section, key, type(obj))
        changes[key] = coerce(section, key, hints[key], value)
    return dataclasses.replace(obj, **changes)


def apply_tree(cfg: RunConfig, tree: dict[str, Any]) -> RunConfig:
    """Apply a nested {section: {key: value}} mapping (a preset, flags or a saved config)."""
    updates: dict[str, Any] = {}
    for section, values in tree.items():
        if section == "preset":
            updates["preset"] = str(values)
            continue
        section_class(section)
        if not hasattr(cfg, section):
            raise ConfigError(f"the [{section}] section is not part of a run's config")
        if not isinstance(values, dict):
            raise ConfigError(f"config section '{section}' must be a table of key = value pairs")
        updates[section] = apply_section(getattr(cfg, section), section, values)
    return dataclasses.replace(cfg, **updates)


def upgrade_tree(tree: dict[str, Any]) -> dict[str, Any]:
    """A saved config with renamed keys given their current names (nothing else changes)."""
    out = {}
    for section, values in tree.items():
        if isinstance(values, dict):
            values = {RENAMED.get((section, k), k): v for k, v in values.items()}
        out[section] = values
    return out


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
        check_key(section, name)
        tree.setdefault(section, {})[name] = value
    return tree


def config_from_dict(tree: dict[str, Any]) -> RunConfig:
    """Rebuild a RunConfig saved with `to_dict` (inside a checkpoint), renamed keys converted."""
    return apply_tree(RunConfig(), upgrade_tree(tree))


def save_config(cfg: RunConfig, path: Path) -> None:
    path.write_text(json.dumps(cfg.to_dict(), indent=2) + "\n", encoding="utf-8")


def public_dict(cfg: RunConfig) -> dict:
    """`cfg.to_dict()` to show outside the run folder (the printed config, W&B's run config): notification URLs
    by their service only, since they carry tokens and passwords."""
    tree = cfg.to_dict()
    tree["train"] = {**tree["train"], "notify": [url.partition("://")[0] + "://..." for url in tree["train"]["notify"]]}
    return tree


def describe(cfg: RunConfig) -> str:
    """The resolved config as TOML-like text, printed at the start of a run (public_dict: URLs masked)."""
    lines = [f"# preset: {cfg.preset or '(none)'}"]
    for section, values in public_dict(cfg).items():
        if isinstance(values, dict):
            lines.append(f"[{section}]")
            lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    return "\n".join(lines)
