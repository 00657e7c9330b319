"""The generic config engine: typed fields, validation against a schema, YAML loading with
unique keys, ``key.path=value`` overrides, dumping and the schema's Markdown table.

Nothing here knows this project's keys; `experiments.config` holds the schema (``SCHEMA``)
and the rules that tie its keys together, and each fitting method declares its own block
(`experiments.methods`).

A schema is a nested dict whose leaves are ``Field``s and whose inner dicts are blocks.
Validation walks it once, collecting every error, and returns the resolved config (plain
dicts with all defaults filled in, in schema order). All problems are reported as one
``ConfigError`` whose lines look like
``configs/iris.yaml: model.covariance_type: expected one of [...], got 'ful'``.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """An invalid config; ``errors`` holds one message per problem."""

    def __init__(self, errors):
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))


REQUIRED = object()  # Field default of a key that must be given


@dataclasses.dataclass(frozen=True)
class Field:
    """One config key.

    Attributes:
        default: value used when the key is absent, or REQUIRED.
        type: a key of ``TYPES`` ("int", "float", "bool", "str", "list[str]", "mapping").
        check: optional ``check(value) -> error message or None``, run after the type check.
        doc: one line for the schema table.
        nullable: whether null (None) is allowed.
    """

    default: Any
    type: str
    check: Callable[[Any], str | None] | None = None
    doc: str = ""
    nullable: bool = False


# ------------------------------------------------------------------- types and checks


class _Invalid(Exception):
    """A value of the wrong type; its message, if any, replaces the generic one."""


def _as_int(value):
    # bool is a subclass of int in Python, but `n_init: true` is a mistake.
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Invalid
    return value


# PyYAML follows YAML 1.1, where 1e-6 (no dot) is a string; accept it as the float meant.
_FLOAT_TEXT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def _as_float(value):
    if isinstance(value, str) and _FLOAT_TEXT.match(value.strip()):
        converted = float(value)
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Invalid
    else:
        converted = float(value)
    # No key means anything by .inf or .nan (an infinite tolerance stops EM at once, an
    # infinite reg_covar or learning rate gives NaN), and 1e999 overflows to inf.
    if not math.isfinite(converted):
        raise _Invalid(f"expected a finite number, got {value!r}")
    return converted


def _exact(kind):
    def convert(value):
        if not isinstance(value, kind):
            raise _Invalid
        return value

    return convert


def _as_str_list(value):
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _Invalid
    return list(value)


def _as_int_list(value):
    if not isinstance(value, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        raise _Invalid
    return list(value)


# Converters from parsed YAML to the field's Python value; raise _Invalid on a wrong type.
TYPES = {
    "int": _as_int,
    "float": _as_float,
    "bool": _exact(bool),
    "str": _exact(str),
    "list[str]": _as_str_list,
    "list[int]": _as_int_list,
    "mapping": _exact(dict),
}


def yaml_name(value):
    """The YAML-ish name of a parsed value's type, for messages."""
    if value is None:
        return "null"
    return {
        bool: "bool",
        int: "int",
        float: "float",
        str: "str",
        list: "list",
        dict: "mapping",
    }.get(type(value), type(value).__name__)


def one_of(choices):
    """Check that a value is in ``choices`` (an iterable, or a callable returning one so a
    registry filled later is seen)."""

    def check(value):
        valid = sorted(choices() if callable(choices) else choices)
        if value not in valid:
            return f"expected one of {valid}, got {value!r}"
        return None

    return check


def at_least(lower):
    def check(value):
        return None if value >= lower else f"expected a value >= {lower}, got {value!r}"

    return check


def greater_than(lower):
    def check(value):
        return None if value > lower else f"expected a value > {lower}, got {value!r}"

    return check


def in_interval(lower, upper):
    """lower <= value < upper."""

    def check(value):
        if lower <= value < upper:
            return None
        return f"expected {lower} <= value < {upper}, got {value!r}"

    return check


# ----------------------------------------------------------------------- validation


def unknown_key_message(key, valid):
    """The message for a key not in ``valid``, naming the closest valid key."""
    close = difflib.get_close_matches(str(key), [str(v) for v in valid], n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown key{hint} (valid keys: {sorted(valid)})"


def _validate_block(schema, raw, prefix, errors):
    """Resolve one block: returns a dict in schema order; appends (key_path, message)."""
    resolved = {}
    for key in raw:
        if key not in schema:
            errors.append((prefix + str(key), unknown_key_message(key, schema)))
    for key, spec in schema.items():
        path = prefix + key
        if isinstance(spec, dict):
            sub = raw.get(key)
            if sub is None:
                sub = {}
            elif not isinstance(sub, dict):
                errors.append((path, f"expected a mapping, got {yaml_name(sub)}"))
                sub = {}
            resolved[key] = _validate_block(spec, sub, path + ".", errors)
            continue
        if key not in raw:
            if spec.default is REQUIRED:
                errors.append((path, "required key is missing"))
            # Copy so that mutating a resolved config never edits the schema's defaults.
            resolved[key] = None if spec.default is REQUIRED else _copy(spec.default)
            continue
        value = raw[key]
        if value is None:
            if not spec.nullable:
                errors.append((path, f"expected {spec.type}, got null"))
            resolved[key] = None
            continue
        try:
            value = TYPES[spec.type](value)
        except _Invalid as invalid:
            expected = spec.type + (" or null" if spec.nullable else "")
            message = str(invalid) or f"expected {expected}, got {yaml_name(value)} {value!r}"
            errors.append((path, message))
            resolved[key] = value
            continue
        message = spec.check(value) if spec.check else None
        if message:
            errors.append((path, message))
        resolved[key] = value
    return resolved


def _copy(value):
    if isinstance(value, list):
        return list(value)
    if isinstance(value, dict):
        return dict(value)
    return value


def validate_against(schema, raw, source="<config>", overridden=(), cross_checks=()):
    """Validate a parsed config against ``schema`` and fill in defaults.

    Args:
        schema: nested dict of ``Field``s (inner dicts are blocks).
        raw: the parsed YAML (a dict, or None for an empty file).
        source: the file name used as the prefix of every message.
        overridden: key paths that came from ``--set``, marked as such in messages.
        cross_checks: (block, check) pairs, ``check(resolved) -> [(key_path, message)]``,
            for rules that involve several keys. A check may fill defaults that depend on
            other keys; it runs only when its block has no per-key errors, so it can trust
            types.

    Returns:
        The resolved config, a dict.

    Raises:
        ConfigError listing every problem found.
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError([f"{source}: expected a mapping at the top level, got {yaml_name(raw)}"])
    errors = []
    resolved = _validate_block(schema, raw, "", errors)
    for block, check in cross_checks:
        if not any(path == block or path.startswith(block + ".") for path, _ in errors):
            errors.extend(check(resolved))
    if errors:
        raise ConfigError(
            f"{source}: {path}{' (from --set)' if path in overridden else ''}: {message}"
            for path, message in errors
        )
    return resolved


# ------------------------------------------------------------------ YAML in and out


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys, which plain YAML silently resolves to the last."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text, source):
    """Parsed YAML of ``text`` (duplicate keys rejected); ConfigError with the line and
    column of a syntax error."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(error, "problem", None) or str(error)
        raise ConfigError([f"{source}: {where}invalid YAML: {problem}"]) from None


def apply_overrides(raw, overrides, source="<config>"):
    """Apply ``key.path=value`` strings to a parsed config, in place.

    Values are parsed with YAML (``4`` is an int, ``[em, nuts]`` a list, ``null`` None).
    Missing intermediate blocks are created; unknown keys are left for validation.

    Returns:
        (raw, overridden): the updated dict and the set of key paths that were set.
    """
    errors = []
    overridden = set()
    for override in overrides:
        key_path, sep, text = override.partition("=")
        key_path = key_path.strip()
        keys = key_path.split(".")
        if not sep or not all(keys):
            errors.append(f"{source}: --set {override!r}: expected KEY.PATH=VALUE")
            continue
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as error:
            problem = getattr(error, "problem", None) or str(error)
            errors.append(
                f"{source}: {key_path} (from --set): invalid YAML value {text!r}: {problem}"
            )
            continue
        node = raw
        for depth, key in enumerate(keys[:-1]):
            if node.get(key) is None:
                node[key] = {}
            node = node[key]
            if not isinstance(node, dict):
                parent = ".".join(keys[: depth + 1])
                errors.append(
                    f"{source}: {key_path} (from --set): {parent} is a {yaml_name(node)}, not a block"
                )
                break
        else:
            node[keys[-1]] = value
            overridden.add(key_path)
    if errors:
        raise ConfigError(errors)
    return raw, overridden


def read_config_file(path, overrides=()):
    """Read a YAML config file and apply ``overrides``, without validating it.

    Returns:
        (raw, overridden): the parsed, overridden mapping and the key paths that were set.

    Raises:
        ConfigError (file missing or unreadable, invalid YAML, not a mapping, bad override).
    """
    source = str(path)
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise ConfigError([f"{source}: file not found"]) from None
    except OSError as error:
        raise ConfigError([f"{source}: cannot read file: {error.strerror}"]) from None
    raw = parse_yaml(text, source)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError([f"{source}: expected a mapping at the top level, got {yaml_name(raw)}"])
    return apply_overrides(raw, overrides, source)


def dump_config(config):
    """The config as YAML text, keys in schema order; ``load`` of it validates back to it."""
    return yaml.safe_dump(config, sort_keys=False, default_flow_style=False)


# ------------------------------------------------------------------ documentation


def _format_default(value):
    if value is REQUIRED:
        return "*required*"
    return (
        "`"
        + yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
        + "`"
    )


def _rows(schema, prefix):
    for key, spec in schema.items():
        if isinstance(spec, dict):
            yield from _rows(spec, f"{prefix}{key}.")
        else:
            kind = spec.type + (" \\| null" if spec.nullable else "")
            yield f"| `{prefix}{key}` | {kind} | {_format_default(spec.default)} | {spec.doc} |"


def schema_table(schema):
    """Every key of ``schema`` with its type, default and doc, as a Markdown table."""
    header = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    return "\n".join(header + list(_rows(schema, ""))) + "\n"
