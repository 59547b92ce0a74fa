"""Command-line flags generated from the config dataclasses, the same way for every verb.

`add_section(parser, cls)` gives each field of a config section a flag `--section.field=value` (help text from
the field's declaration, choices from its enum; a tuple field's flag repeats, one item each) and, for the fields a verb names, a short alias
(`--temperature` for `--sampler.temperature`). Values stay strings until `sunfish.config` converts them, so a
bad value is refused in one sentence that names the field and its choices. `given(args)` returns what the
user set as a {section: {field: value}} tree; `check_leftovers` explains flags that belong to no section of
the verb. `Parser` turns argparse's own errors into one sentence instead of a usage dump.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Iterable

from sunfish.config import RENAMED, SECTIONS, ConfigError, check_key, choices, field_help


class UsageError(ValueError):
    """Bad command-line input; the message is one sentence."""


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are raised as UsageError (printed by `sunfish` as one line), that never
    guesses a flag from its prefix, and whose sub-parsers behave the same."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        raise UsageError(message)


def _metavar(kind: type) -> str:
    options = choices(kind)
    if options:
        return "{" + ",".join(options) + "}"
    return {bool: "BOOL", int: "N", float: "X"}.get(kind, "TEXT")


def add_section(parser: argparse.ArgumentParser, cls: type, *, fields: Iterable[str] | None = None,
                short: Iterable[str] = (), note: str = "", defaults: bool = True) -> None:
    """Flags for the fields of config section `cls` (all, or those in `fields`); `short` fields also get
    --field-name. `note` is added to the group's description; `defaults` False leaves the dataclass defaults
    out of the help (when a checkpoint's values are the defaults)."""
    section = cls.SECTION
    wanted = None if fields is None else set(fields)
    short = set(short)
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(f"[{section}] settings", f"--{section}.FIELD=VALUE{'; ' + note if note else ''}")
    for f in dataclasses.fields(cls):
        if wanted is not None and f.name not in wanted:
            continue
        names = [f"--{section}.{f.name}"] + (["--" + f.name.replace("_", "-")] if f.name in short else [])
        default = f.default if f.default is not dataclasses.MISSING else None
        shown = getattr(default, "value", default)
        kind = hints[f.name]
        help_text = (field_help(cls, f.name) + (f" (default {shown!r})" if defaults else "")).replace("%", "%%")  # argparse formats help with %
        if kind is bool:  # --section.field alone means true; the short form is a plain switch
            group.add_argument(names[0], dest=f"{section}.{f.name}", default=None, nargs="?", const="true",
                               metavar="BOOL", help=help_text)
            if len(names) > 1:
                group.add_argument(names[1], dest=f"{section}.{f.name}", action="store_const", const="true",
                                   help=f"= {names[0]}=true")
            continue
        if typing.get_origin(kind) is tuple:  # a list: each use of the flag adds one item (items may hold commas)
            group.add_argument(*names, dest=f"{section}.{f.name}", default=None, action="append", metavar="TEXT",
                               help=help_text)
            continue
        group.add_argument(*names, dest=f"{section}.{f.name}", default=None, metavar=_metavar(kind), help=help_text)


def add_sampler(parser: argparse.ArgumentParser, *, skip: Iterable[str] = ()) -> None:
    """--sampler.FIELD flags for every SamplerConfig field but `skip`, each with its short form (--length,
    --steps, --temperature, ...), their help without defaults: a checkpoint's own apply."""
    from sunfish.config import SamplerConfig

    fields = [f.name for f in dataclasses.fields(SamplerConfig) if f.name not in set(skip)]
    add_section(parser, SamplerConfig, fields=fields, short=fields, note="defaults come from the checkpoint",
                defaults=False)


def given(args: argparse.Namespace, sections: Iterable[str] = tuple(SECTIONS)) -> dict[str, dict[str, str]]:
    """The config values of `sections` the user set on the command line, as {section: {field: value}}."""
    tree: dict[str, dict[str, str]] = {}
    sections = set(sections)
    for dest, value in vars(args).items():
        section, dot, name = dest.partition(".")
        if dot and value is not None and section in sections:
            tree.setdefault(section, {})[name] = value
    return tree


def given_keys(tree: dict[str, dict]) -> list[str]:
    """Dotted keys ("sampler.steps") of a {section: {field: value}} tree."""
    return [f"{section}.{name}" for section, values in tree.items() for name in values]


def absorb_renamed(args: argparse.Namespace, extra: list[str]) -> list[str]:
    """Take `--section.old=value` flags of renamed keys (config/tree.py RENAMED) as their new names, so commands
    written before a rename keep working; returns the arguments left over."""
    rest = []
    for arg in extra:
        key, eq, value = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
        section, _, name = key.partition(".")
        new = RENAMED.get((section, name))
        if new is not None and hasattr(args, f"{section}.{new}"):
            setattr(args, f"{section}.{new}", value if eq else "true")
        else:
            rest.append(arg)
    return rest


def check_leftovers(verb: str, extra: list[str], offered: dict[str, Iterable[str] | None]) -> None:
    """Raise one sentence for arguments no flag of `verb` took: a setting of a section the verb does not take, a
    field of a section it takes only in part (`offered` maps section -> fields, None = all), an unknown or
    renamed key, or anything else."""
    if not extra:
        return
    for arg in extra:
        key = arg[2:].partition("=")[0] if arg.startswith("--") else ""
        section, dot, name = key.partition(".")
        if dot and section not in offered:
            if section in SECTIONS:
                offer = ", ".join(f"--{s}.*" for s in offered) or "no config settings"
                raise ConfigError(f"`sunfish {verb}` does not take --{section}.* settings; it takes {offer}")
            check_key(section, name)  # an unknown section: says which sections exist
        if dot and section in SECTIONS:
            check_key(section, name)  # unknown or renamed: says which keys exist
            fields = offered[section]
            if fields is not None and name not in fields:
                listed = ", ".join(f"--{section}.{f}" for f in fields)
                raise ConfigError(f"`sunfish {verb}` sets {section}.{name} itself; of [{section}] it takes {listed}")
    raise UsageError(f"unrecognised arguments: {' '.join(extra)}")


def subcommands(parser: argparse.ArgumentParser, dest: str) -> argparse._SubParsersAction:
    """The parser's sub-command group (for verb modules that add to a group such as `data` or `bench`),
    created if it has none (argparse offers no public lookup)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return parser.add_subparsers(dest=dest, required=True)


def add_runtime(parser: argparse.ArgumentParser) -> None:
    """--device, --dtype and --quantize: where and in what precision a verb runs its model."""
    from sunfish.runtime import DTYPES, QUANTIZE

    parser.add_argument("--device", default="auto", help="auto (CUDA when available) | cpu | cuda | cuda:N")
    parser.add_argument("--dtype", default="auto", choices=["auto", *DTYPES],
                        help="weights' dtype for inference (auto: bf16 on CUDA, fp32 on the CPU)")
    parser.add_argument("--quantize", default="none", choices=list(QUANTIZE),
                        help="weight-only quantization of the linear layers: int8 (CPU, CUDA), int4 (CUDA); needs torchao")
