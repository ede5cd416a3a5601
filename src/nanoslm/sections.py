"""Typed, frozen sections built from plain mappings, each checked when made: the machinery under nanoslm.config.

Knows no setting by name: config.py declares the sections (their fields, types and range checks) and Params.
"""

import dataclasses
import difflib
import typing
from dataclasses import fields

from .errors import UserError


class ConfigError(UserError):
    """A setting out of range or of the wrong type; `key` is its params.yaml name, e.g. 'sample.temperature'."""

    def __init__(self, key: str, problem: str):
        super().__init__(f"'{key}' {problem}")
        self.key, self.field, self.problem = key, key.rpartition(".")[2], problem


class Section:
    """Base of the sections: coerce each value to its field's type, then run the section's own checks."""

    SECTION: typing.ClassVar[str]

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for f in fields(self):
            object.__setattr__(self, f.name, coerce(hints[f.name], getattr(self, f.name), self._key(f.name)))
        self.validate()

    def validate(self) -> None:
        """Range checks of this section's values (types are already right)."""

    def _key(self, name: str) -> str:
        return f"{self.SECTION}.{name}"

    def _fail(self, name: str, problem: str):
        raise ConfigError(self._key(name), problem)

    def _positive(self, *names):
        for name in names:
            if getattr(self, name) <= 0:
                self._fail(name, f"must be positive, got {getattr(self, name)}")

    def _at_least_zero(self, *names):
        for name in names:
            if getattr(self, name) < 0:
                self._fail(name, f"must be zero or more, got {getattr(self, name)}")

    def _one_of(self, name, choices):
        if getattr(self, name) not in choices:
            self._fail(name, f"must be one of {', '.join(choices)}, got {getattr(self, name)!r}")


def build(cls, raw, prefix):
    """Build dataclass `cls` from a mapping, refusing unknown and missing keys; the sections check the values."""
    where = prefix.rstrip(".") or "top level"
    if not isinstance(raw, dict):
        raise UserError(f"{where}: expected a mapping of keys, got {_describe(raw)}")
    names = [f.name for f in fields(cls)]
    for key in raw:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; known keys: {', '.join(names)}"
            raise UserError(f"unknown key '{prefix}{key}'{hint}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name in names:
        if name not in raw:
            raise UserError(f"missing key '{prefix}{name}'; see params.yaml in the repository for every key")
        kind = hints[name]
        is_section = isinstance(kind, type) and dataclasses.is_dataclass(kind)
        values[name] = build(kind, raw[name], f"{prefix}{name}.") if is_section else raw[name]
    return cls(**values)


def coerce(kind, value, key):
    """`value` as type `kind` (an int where a float is wanted becomes a float); a ConfigError if it is not one."""
    if typing.get_origin(kind) is typing.Union:  # Optional[X]
        if value is None:
            return None
        (kind,) = [k for k in typing.get_args(kind) if k is not type(None)]
    if typing.get_origin(kind) is list:
        (item,) = typing.get_args(kind)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(key, f"must be a list, got {_describe(value)}")
        return [coerce(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    else:
        ok = isinstance(value, kind)
    if not ok:
        hint = ""
        if kind is float and isinstance(value, str):
            hint = f" (YAML reads {value} as text; write it with a dot, e.g. 3.0e-4)"
        raise ConfigError(key, f"must be {_type_name(kind)}, got {_describe(value)}{hint}")
    return value


def _type_name(kind):
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(kind, kind.__name__)


def _describe(value):
    if value is None:
        return "nothing (null)"
    if isinstance(value, str):
        return f"the string {value!r}"
    return f"{type(value).__name__} {value!r}"
