"""The machinery of config sections: `knob` declares a field with its help text and valid range, `Section`
checks both when a section is built, and `coerce` turns TOML values and flag strings into field types.

A field's help and range live in its metadata, so the command-line flags (sunfish/flags.py), their help
text and the range checks all come from the one declaration.
"""

from __future__ import annotations

import dataclasses
import enum
import typing
from typing import Any, ClassVar

INF = float("inf")


class ConfigError(ValueError):
    """A configuration problem a person can fix; the message is one sentence."""


def knob(default: Any, help: str, *, lo: float | None = None, hi: float | None = None) -> Any:
    """A config field: its default, a one-line help text (units, meaning) and its valid range [lo, hi]."""
    return dataclasses.field(default=default, metadata={"help": help, "lo": lo, "hi": hi})


def field_help(section: type, name: str) -> str:
    """The help text of a field (its declaration's metadata)."""
    return {f.name: f.metadata for f in dataclasses.fields(section)}[name].get("help", "")


class Section:
    """Base of the config sections: enum fields given as strings are converted, ranges are checked.

    Subclasses name themselves with SECTION (the `[section]` of presets and `--section.field` flags)."""

    SECTION: ClassVar[str] = ""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            kind = hints[f.name]
            if isinstance(kind, type) and issubclass(kind, enum.Enum) and not isinstance(value, kind):
                value = coerce(self.SECTION, f.name, kind, value)
                object.__setattr__(self, f.name, value)
            lo, hi = f.metadata.get("lo"), f.metadata.get("hi")
            if (lo is not None and value < lo) or (hi is not None and value > hi):
                bound = f">= {lo}" if hi is None else f"between {lo} and {hi}"
                raise ConfigError(f"{self.SECTION}.{f.name} = {value} is out of range; it must be {bound}")


def choices(kind: type) -> list[str] | None:
    """The values an enum field takes, or None for other types."""
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return [m.value for m in kind]
    return None


def coerce(section: str, key: str, kind: type, value: Any) -> Any:
    """Convert `value` (from TOML or a flag string) to the field type, or raise ConfigError."""
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
        if typing.get_origin(kind) is tuple:
            return _tuple(kind, value)
    except (ValueError, TypeError):
        pass
    options = choices(kind)
    listed = f" (one of {', '.join(options)})" if options else ""
    name = getattr(kind, "__name__", str(kind))
    raise ConfigError(f"{section}.{key} = {value!r} is not a valid {name}{listed}")


def _tuple(kind: type, value: Any) -> tuple:
    """A tuple field from a tuple/list or a comma-separated string."""
    items = value.split(",") if isinstance(value, str) else list(value)
    item_type = typing.get_args(kind)[0]
    return tuple(item_type(v.strip() if isinstance(v, str) else v) for v in items if not (isinstance(v, str) and not v.strip()))
