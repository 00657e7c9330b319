"""This project's config schema: the top-level keys and blocks (``SCHEMA``), the rules that
tie several keys together (``CROSS_CHECKS``), and ``load_config`` / ``validate`` /
``schema_markdown`` bound to them.

The engine (``Field``, types, checks, validation, YAML loading, overrides, dumping, the
Markdown table) is `experiments.config_engine`; its names are re-exported here. Each
fitting method declares its own block in `experiments.methods.<name>` (``Method.config``);
importing this module registers every method's block with ``register_method_block``, so
``methods`` accepts exactly the registered blocks.

All problems are reported as one ``ConfigError`` whose lines look like
``configs/iris.yaml: model.covariance_type: expected one of [...], got 'ful'``.
"""

from __future__ import annotations

import difflib
import re

import jaxgmm
from experiments import evidence
from experiments.config_engine import (  # noqa: F401  (re-exported: the config API)
    REQUIRED,
    TYPES,
    ConfigError,
    Field,
    apply_overrides,
    at_least,
    dump_config,
    greater_than,
    in_interval,
    one_of,
    read_config_file,
    schema_table,
    validate_against,
)
from experiments.datasets import DATASET_OPTIONS, DATASETS
from experiments.methods import METHODS

# ------------------------------------------------------------------ project checks


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
    from jaxgmm.priors import PRIORS, hyperparameter_names, load_prior_class, make_prior

    prior = config["model"]["prior"]
    if prior is None:
        return []
    name = prior["name"]
    if isinstance(name, str) and ":" in name:
        # A plug-in prior, "package.module:ClassName", from the researcher's own file.
        try:
            load_prior_class(name)
        except ValueError as error:
            return [("model.prior.name", str(error))]
    elif name not in PRIORS:
        return [
            (
                "model.prior.name",
                f"expected one of {sorted(PRIORS)} or a plug-in 'package.module:ClassName', "
                f"got {name!r}",
            )
        ]
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
        "drop": Field(
            None,
            "list[str]",
            doc="csv only: columns left out of the default features (e.g. a row id)",
            nullable=True,
        ),
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
        "n_init": Field(
            1,
            "int",
            at_least(1),
            "number of initialisations; every method runs all of them and keeps one (select)",
        ),
        "select": Field(
            "non_degenerate",
            "str",
            one_of(lambda: jaxgmm.fit.results.SELECTIONS),
            "restart kept by em, gradient and the model-selection grid: non_degenerate (the "
            "best log-likelihood among restarts with no degenerate component, else the best) "
            "or likelihood (the best, degenerate or not)",
        ),
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


for _method in METHODS.values():
    register_method_block(_method.name, _method.config)

# Not a method: the run's log-evidence estimates (`experiments.evidence`).
SCHEMA["evidence"] = dict(evidence.CONFIG)


# ----------------------------------------------------------------------- validation


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
CROSS_CHECKS = [
    ("data", _check_data_options),
    ("model", _check_prior_registry),
    ("evidence", lambda c: [(f"evidence.{k}", m) for k, m in evidence.config_check(c["evidence"])]),
]


def _block_check(name, check):
    def run(config):
        return [(f"{name}.{key}", message) for key, message in check(config[name])]

    return run


# Every method's rules between keys of its own block (``Method.config_check``), checked for
# every block whether or not the method is listed: a config is valid or not as a whole.
for _method in METHODS.values():
    if _method.config_check is not None:
        CROSS_CHECKS.append((_method.name, _block_check(_method.name, _method.config_check)))


def validate(raw, source="<config>", overridden=()):
    """Validate a parsed config against ``SCHEMA`` and fill in defaults.

    Args:
        raw: the parsed YAML (a dict, or None for an empty file).
        source: the file name used as the prefix of every message.
        overridden: key paths that came from ``--set``, marked as such in messages.

    Returns:
        The resolved config, a dict.

    Raises:
        ConfigError listing every problem found.
    """
    return validate_against(SCHEMA, raw, source, overridden, CROSS_CHECKS)


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
    raw, overridden = read_config_file(path, overrides)
    return validate(raw, str(path), overridden)


def schema_markdown():
    """Every config key with its type, default and doc, as a Markdown table."""
    return schema_table(SCHEMA)
