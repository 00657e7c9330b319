"""Experiment configs: the schema, YAML loading with ``--set`` overrides, validation and
dumping.

The schema is data: ``SCHEMA`` is a nested dict whose leaves are ``Field``s (default,
type, optional check, doc) and whose inner dicts are config blocks. Validation walks it
once, collecting every error, and returns the resolved config (plain dicts with all
defaults filled in, in schema order). A fitting method adds its own block with
``register_method_block``; ``methods`` accepts exactly the registered blocks. Rules that
tie several keys together are small functions in ``_CROSS_CHECKS``.

All problems are reported as one ``ConfigError`` whose lines look like
``configs/iris.yaml: model.covariance_type: expected one of [...], got 'ful'``.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

import jaxgmm
from experiments.datasets import DATASET_OPTIONS, DATASETS


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
    pass


def _as_int(value):
    # bool is a subclass of int in Python, but `n_init: true` is a mistake.
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Invalid
    return value


# PyYAML follows YAML 1.1, where 1e-6 (no dot) is a string; accept it as the float meant.
_FLOAT_TEXT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def _as_float(value):
    if isinstance(value, str) and _FLOAT_TEXT.match(value.strip()):
        return float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Invalid
    return float(value)


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


def _yaml_name(value):
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


def _check_name(value):
    # The name becomes the folder results/<name>/, so keep it a single safe path segment.
    if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", value):
        return None
    return f"expected letters, digits, '.', '_' or '-' (a folder name), got {value!r}"


def _check_prior(value):
    if not isinstance(value.get("name"), str):
        from jaxgmm.priors import PRIORS

        return f"a prior mapping needs a str key 'name' (one of {sorted(PRIORS)})"
    return None


def _check_prior_registry(config):
    """``model.prior`` against the prior registry: the name, each hyperparameter's name and
    value (built one at a time, so an error names its key), then all of them together.
    Data-dependent checks (vector lengths, covariance types) run once the data is loaded."""
    from jaxgmm.priors import PRIORS, hyperparameter_names, make_prior

    prior = config["model"]["prior"]
    if prior is None:
        return []
    name = prior["name"]
    if name not in PRIORS:
        return [("model.prior.name", f"expected one of {sorted(PRIORS)}, got {name!r}")]
    valid = hyperparameter_names(name)
    errors = []
    for key, value in prior.items():
        if key == "name":
            continue
        if key not in valid:
            close = difflib.get_close_matches(str(key), valid, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            errors.append(
                (
                    f"model.prior.{key}",
                    f"prior {name!r} has no such hyperparameter{hint} "
                    f"(valid hyperparameters: {valid})",
                )
            )
            continue
        try:
            make_prior(name, **{key: value})
        except (ValueError, TypeError) as error:
            errors.append((f"model.prior.{key}", str(error)))
    if not errors:
        rest = {k: v for k, v in prior.items() if k != "name"}
        try:
            make_prior(name, **rest)
        except (ValueError, TypeError) as error:
            errors.append(("model.prior", str(error)))
    return errors


def _check_methods(value):
    errors = [one_of(lambda: METHOD_BLOCKS)(m) for m in value]
    errors = [e for e in errors if e]
    if errors:
        return "; ".join(errors)
    if not value:
        return "expected at least one method"
    repeated = sorted({m for m in value if value.count(m) > 1})
    if repeated:
        return f"methods listed twice: {repeated}"
    return None


def _check_grid_sizes(value):
    if not value:
        return "expected a non-empty list of ints >= 1"
    if any(v < 1 for v in value):
        return f"expected ints >= 1, got {value!r}"
    return None


def _check_covariance_types(value):
    errors = [one_of(lambda: jaxgmm.model.COVARIANCE_FAMILIES)(v) for v in value]
    errors = [e for e in errors if e]
    if errors:
        return "; ".join(errors)
    return None if value else "expected a non-empty list"


def _check_feature_pair(value):
    if len(value) != 2:
        return f"expected two feature names, got {value!r}"
    return None


# --------------------------------------------------------------------------- schema

_synthetic = DATASET_OPTIONS["synthetic"]

SCHEMA = {
    "name": Field(REQUIRED, "str", _check_name, "run name; results go to results/<name>/"),
    "seed": Field(0, "int", at_least(0), "root seed for data generation, splits and fitting"),
    "dtype": Field(
        "float64", "str", one_of(["float32", "float64"]), "floating dtype of data and parameters"
    ),
    "data": {
        "dataset": Field(
            REQUIRED, "str", one_of(lambda: DATASETS), "a key of experiments.datasets.DATASETS"
        ),
        "path": Field(
            None,
            "str",
            doc="csv only: path of the file (relative to the working directory)",
            nullable=True,
        ),
        "columns": Field(
            None,
            "list[str]",
            doc="csv only: feature columns; default all numeric columns but the label",
            nullable=True,
        ),
        "label_column": Field(None, "str", doc="csv only: column of class labels", nullable=True),
        "n_samples": Field(
            None,
            "int",
            at_least(1),
            f"synthetic only (default {_synthetic['n_samples']})",
            nullable=True,
        ),
        "n_components": Field(
            None,
            "int",
            at_least(1),
            f"synthetic only: true number of components (default {_synthetic['n_components']})",
            nullable=True,
        ),
        "n_features": Field(
            None,
            "int",
            at_least(1),
            f"synthetic only (default {_synthetic['n_features']})",
            nullable=True,
        ),
        "separation": Field(
            None,
            "float",
            greater_than(0),
            f"synthetic only: smallest distance between means in cluster stds (default {_synthetic['separation']})",
            nullable=True,
        ),
        "standardize": Field(
            False, "bool", None, "scale features to zero mean, unit std (training statistics)"
        ),
        "test_fraction": Field(
            0.0, "float", in_interval(0.0, 1.0), "fraction of rows held out for evaluation"
        ),
    },
    "model": {
        "n_components": Field(REQUIRED, "int", at_least(1), "number of mixture components"),
        "covariance_type": Field(
            "full", "str", one_of(lambda: jaxgmm.model.COVARIANCE_FAMILIES), "covariance family"
        ),
        "reg_covar": Field(1.0e-6, "float", greater_than(0), "added to covariance diagonals"),
        "prior": Field(
            None,
            "mapping",
            _check_prior,
            "null, or {name: ..., hyperparameters...}; checked by the prior registry",
            nullable=True,
        ),
    },
    "init": {
        "method": Field(
            "kmeans",
            "str",
            one_of(lambda: jaxgmm.INITIALIZERS),
            "initialiser (a key of jaxgmm.INITIALIZERS); every method starts from its result",
        ),
        "n_init": Field(1, "int", at_least(1), "number of initialisations; the best is kept"),
    },
    "model_selection": {
        "n_components": Field(
            None,
            "list[int]",
            _check_grid_sizes,
            "grid of n_components for an EM model-selection sweep (null: no sweep)",
            nullable=True,
        ),
        "covariance_types": Field(
            None,
            "list[str]",
            _check_covariance_types,
            "covariance types of the sweep (null: model.covariance_type only)",
            nullable=True,
        ),
    },
    "plot": {
        "features": Field(
            None,
            "list[str]",
            _check_feature_pair,
            "two feature names for the cluster plot (null: the first two)",
            nullable=True,
        ),
        "animate": Field(False, "bool", None, "also draw a GIF of EM's ellipses (--animate)"),
    },
    "methods": Field(
        ["em"],
        "list[str]",
        _check_methods,
        "fitting methods to run, in order; each has a block below",
    ),
}

# Names of the method blocks registered in SCHEMA, in registration order.
METHOD_BLOCKS = []


def register_method_block(name, fields):
    """Add the config block of a fitting method.

    Args:
        name: the method's name as written in ``methods`` and as the block's key.
        fields: dict mapping key -> Field (nested dicts make sub-blocks).
    """
    if name in SCHEMA:
        raise ValueError(f"config key {name!r} is already in the schema")
    SCHEMA[name] = dict(fields)
    METHOD_BLOCKS.append(name)


register_method_block(
    "em",
    {
        "max_iter": Field(500, "int", at_least(1), "maximum EM iterations"),
        "tol": Field(
            1.0e-6, "float", at_least(0), "stop when the per-sample log-likelihood gains less"
        ),
    },
)


register_method_block(
    "gradient",
    {
        "optimizer": Field(
            "lbfgs", "str", one_of(lambda: jaxgmm.gradient.OPTIMIZERS),
            "optax optimiser: adam, sgd (momentum 0.9) or lbfgs (zoom line search)",
        ),
        "learning_rate": Field(
            None, "float", greater_than(0),
            "step size (null: the optimiser's default; L-BFGS uses its line search)",
            nullable=True,
        ),
        "schedule": Field(
            None, "str", one_of(lambda: jaxgmm.gradient.SCHEDULES),
            "learning-rate schedule (null: constant)", nullable=True,
        ),
        "max_steps": Field(1000, "int", at_least(1), "maximum iterations"),
        "tol": Field(
            1.0e-9, "float", at_least(0), "stop when the objective per sample changes less"
        ),
        "grad_tol": Field(0.0, "float", at_least(0), "stop when the gradient norm is below"),
        "batch_size": Field(
            None, "int", at_least(1), "minibatch size (null: full batch)", nullable=True
        ),
        "eval_every": Field(
            1, "int", at_least(1),
            "minibatch updates per iteration; the full-data log-likelihood is traced once per iteration",
        ),
    },
)


def _svi_optimizers():
    # The gradient fitter's optax registry, less line-search methods (SVI is stochastic).
    return [name for name, entry in jaxgmm.gradient.OPTIMIZERS.items() if not entry.line_search]


register_method_block(
    "svi",
    {
        "guide": Field(
            "auto_normal", "str", one_of(lambda: jaxgmm.bayes.GUIDES),
            "NumPyro autoguide: auto_delta (MAP), auto_normal (mean field), "
            "auto_multivariate_normal (full rank)",
        ),
        "optimizer": Field(
            "adam", "str", one_of(_svi_optimizers), "optax optimiser of the guide's parameters"
        ),
        "learning_rate": Field(0.01, "float", greater_than(0), "the optimiser's step size"),
        "num_steps": Field(2000, "int", at_least(1), "maximum SVI steps"),
        "num_particles": Field(1, "int", at_least(1), "draws per ELBO gradient estimate"),
        "tol": Field(
            None, "float", at_least(0),
            "stop when the objective per sample changes less (null: run num_steps; "
            "useful for auto_delta, whose objective is not noisy)",
            nullable=True,
        ),
        "n_eval_samples": Field(
            1000, "int", at_least(1),
            "guide draws for the final ELBO and, independently, the importance-sampling log p(X)",
        ),
    },
)


register_method_block(
    "nuts",
    {
        "num_warmup": Field(500, "int", at_least(0), "warm-up (adaptation) steps per chain"),
        "num_samples": Field(500, "int", at_least(1), "kept draws per chain"),
        "num_chains": Field(2, "int", at_least(1), "chains (r-hat needs >= 2)"),
        "chain_method": Field(
            "vectorized", "str", one_of(["vectorized", "sequential", "parallel"]),
            "how chains run: vectorized (one device, default), sequential, parallel "
            "(one device per chain)",
        ),
        "target_accept_prob": Field(
            0.8, "float", in_interval(1e-9, 1.0), "NUTS step-size adaptation target"
        ),
        "dense_mass": Field(False, "bool", None, "adapt a dense mass matrix (else diagonal)"),
        "max_tree_depth": Field(10, "int", at_least(1), "NUTS maximum tree depth"),
    },
)


# ----------------------------------------------------------------------- validation


def _unknown_key_message(key, valid):
    close = difflib.get_close_matches(str(key), [str(v) for v in valid], n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown key{hint} (valid keys: {sorted(valid)})"


def _validate_block(schema, raw, prefix, errors):
    """Resolve one block: returns a dict in schema order; appends (key_path, message)."""
    resolved = {}
    for key in raw:
        if key not in schema:
            errors.append((prefix + str(key), _unknown_key_message(key, schema)))
    for key, spec in schema.items():
        path = prefix + key
        if isinstance(spec, dict):
            sub = raw.get(key)
            if sub is None:
                sub = {}
            elif not isinstance(sub, dict):
                errors.append((path, f"expected a mapping, got {_yaml_name(sub)}"))
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
        except _Invalid:
            expected = spec.type + (" or null" if spec.nullable else "")
            errors.append((path, f"expected {expected}, got {_yaml_name(value)} {value!r}"))
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


def _check_data_options(config):
    """Dataset-specific data keys: forbidden for other datasets, defaulted for their own."""
    data = config["data"]
    dataset = data["dataset"]
    errors = []
    owners = {}
    for name, options in DATASET_OPTIONS.items():
        for key in options:
            owners.setdefault(key, []).append(name)
    for key, names in owners.items():
        if dataset in names:
            if data[key] is None:
                data[key] = DATASET_OPTIONS[dataset][key]
        elif data[key] is not None and dataset in DATASETS:
            errors.append(
                (
                    f"data.{key}",
                    f"only used by dataset {' or '.join(map(repr, names))}, not {dataset!r}",
                )
            )
    if dataset == "csv" and data["path"] is None:
        errors.append(("data.path", "required when data.dataset is 'csv'"))
    return errors


# Rules that involve several keys of one block: (block, check), with
# check(resolved_config) -> [(key_path, message)]. A check may fill defaults that depend on
# other keys; it runs only when its block has no per-key errors, so it can trust types.
_CROSS_CHECKS = [("data", _check_data_options), ("model", _check_prior_registry)]


def validate(raw, source="<config>", overridden=()):
    """Validate a parsed config and fill in defaults.

    Args:
        raw: the parsed YAML (a dict, or None for an empty file).
        source: the file name used as the prefix of every message.
        overridden: key paths that came from ``--set``, marked as such in messages.

    Returns:
        The resolved config, a dict.

    Raises:
        ConfigError listing every problem found.
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError([f"{source}: expected a mapping at the top level, got {_yaml_name(raw)}"])
    errors = []
    resolved = _validate_block(SCHEMA, raw, "", errors)
    for block, check in _CROSS_CHECKS:
        if not any(path == block or path.startswith(block + ".") for path, _ in errors):
            errors.extend(check(resolved))
    if errors:
        raise ConfigError(
            f"{source}: {path}{' (from --set)' if path in overridden else ''}: {message}"
            for path, message in errors
        )
    return resolved


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


def _parse_yaml(text, source):
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
                    f"{source}: {key_path} (from --set): {parent} is a {_yaml_name(node)}, not a block"
                )
                break
        else:
            node[keys[-1]] = value
            overridden.add(key_path)
    if errors:
        raise ConfigError(errors)
    return raw, overridden


def load_config(path, overrides=()):
    """Read, override and validate a YAML config.

    Args:
        path: str or Path of the YAML file.
        overrides: iterable of ``key.path=value`` strings (the ``--set`` options),
            applied in order after reading the file.

    Returns:
        The resolved config: nested dicts with every default filled in, in schema order.

    Raises:
        ConfigError whose lines each start with the file name and the key path.
    """
    source = str(path)
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise ConfigError([f"{source}: file not found"]) from None
    except OSError as error:
        raise ConfigError([f"{source}: cannot read file: {error.strerror}"]) from None
    raw = _parse_yaml(text, source)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError([f"{source}: expected a mapping at the top level, got {_yaml_name(raw)}"])
    raw, overridden = apply_overrides(raw, overrides, source)
    return validate(raw, source, overridden)


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


def schema_markdown():
    """Every config key with its type, default and doc, as a Markdown table."""
    header = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    return "\n".join(header + list(_rows(SCHEMA, ""))) + "\n"
