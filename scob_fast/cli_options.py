"""Typed option groups: a dataclass declares its fields once (type, default, help, choices) and the
command line, YAML configs, args.yaml and the code that reads them all follow from it.

    @dataclass
    class ScobConfig:
        lambda_cl: float = option(0.1, "contrastive loss weight")

    add_options(parser.add_argument_group("scob"), ScobConfig)       # --lambda-cl FLOAT
    config = options_from(ScobConfig, vars(parser.parse_args()))      # ScobConfig(lambda_cl=...)

A class attribute `cli_prefix` (e.g. "sst_") is put before every field name on the command line
and in flat dicts (field `threshold` -> flag `--sst-threshold`, key `sst_threshold`), so methods
read short names while flags stay unique across groups.
"""
from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, Mapping


def option(default: Any, help: str, *, choices: tuple | list | None = None, metavar: str | None = None) -> Any:
    """A dataclass field with its command-line help (and choices)."""
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices, "metavar": metavar})


def _prefix(cls) -> str:
    return getattr(cls, "cli_prefix", "")


def _base_type(hint) -> tuple[type, bool]:
    """(the scalar type, whether None is allowed) of a field's annotation."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"option type {hint} must be one type or that type | None")
        return args[0], True
    return hint, False


def option_fields(cls) -> list[tuple[dataclasses.Field, type, bool]]:
    hints = typing.get_type_hints(cls)
    return [(f, *_base_type(hints[f.name])) for f in dataclasses.fields(cls) if f.init]


def dest(cls, name: str) -> str:
    return _prefix(cls) + name


def add_options(group, cls) -> None:
    """One flag per field of the dataclass `cls` on `group` (a parser or an argument group)."""
    for field, kind, _ in option_fields(cls):
        meta = field.metadata
        name = dest(cls, field.name)
        flag = "--" + name.replace("_", "-")
        text = meta.get("help", "")
        if kind is bool:
            if field.default is True:
                group.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=True,
                                   help=text + " (default: on)")
            else:
                group.add_argument(flag, dest=name, action="store_true", help=text + " (default: off)")
            continue
        group.add_argument(flag, dest=name, type=kind, default=field.default, choices=meta.get("choices"),
                           metavar=meta.get("metavar"), help=text + " (default: %(default)s)")


def options_from(cls, values: Mapping[str, Any]):
    """An instance of `cls` from a flat mapping of prefixed names (missing keys keep their defaults)."""
    kwargs = {f.name: values[dest(cls, f.name)] for f, _, _ in option_fields(cls) if dest(cls, f.name) in values}
    return cls(**kwargs)


def flat_options(instance) -> dict[str, Any]:
    """The inverse of `options_from`: prefixed name -> value."""
    cls = type(instance)
    return {dest(cls, f.name): getattr(instance, f.name) for f, _, _ in option_fields(cls)}


def option_names(cls) -> list[str]:
    return [dest(cls, f.name) for f, _, _ in option_fields(cls)]
