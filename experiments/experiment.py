"""One experiment as a Python call: ``run_experiment(config) -> ExperimentResult``.

It loads and validates the config, loads and prepares the data, builds the one `GMMSpec`
(each method's prior resolved on the training data by ``method_specs``), computes the
initial parameters once, runs every listed method from them (`experiments.methods`),
evaluates all of them alike (`experiments.evaluation`), runs the optional
model-selection sweep, and returns the metrics, every method's `MethodResult` and the
run folder's files. Files are written only when asked (``output=`` or
``ExperimentResult.write``); the command line (`experiments.run`) is a thin layer on it.

From a notebook::

    from experiments import run_experiment

    result = run_experiment("configs/iris.yaml", overrides=["methods=[em,gradient]"])
    print(result.table())
    result.rows["em"]["bic"], result.results["em"].log_likelihood
    gm = result.models["em"]  # a fitted jaxgmm.GaussianMixture
    gm.predict(result.saved_models["em"].transform(new_x))  # new data, as the run saw it
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import functools
import hashlib
import importlib.metadata
import os
import platform
import warnings
import zlib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import jaxgmm
from experiments import evidence as evidence_estimates
from experiments import results_io
from experiments.config import ConfigError, apply_overrides, dump_config, load_config, validate
from experiments.evaluation import (
    bic_best_model,
    covariances,
    evaluate,
    model_selection,
    model_selection_summary,
)
from experiments.ledger import method_ledger
from experiments.methods import (
    DEFAULT_PRIOR,
    METHODS,
    MethodContext,
    MethodResult,
    SettingError,
)
from experiments.progress import progress_factory
from experiments.report import converged_text, format_table, ledger_warnings, method_warnings

PACKAGES = (
    "jax", "jaxlib", "numpy", "optax", "numpyro", "scipy", "matplotlib", "pyyaml", "tqdm",
)  # fmt: skip


@dataclasses.dataclass(frozen=True, eq=False)
class ExperimentResult:
    """What one run produced.

    Attributes:
        config: the resolved config (every default filled in).
        metrics: the ``metrics.json`` dict: run facts (name, seed, dtype, JAX backend,
            versions, data, spec, init), ``methods`` (one row of metrics per method, see
            ``rows``), ``model_selection`` (None, or its rows and best cells) and
            ``warnings`` (sentences: data problems, non-finite, stalled or degenerate
            fits, a reported restart that is not the best overall).
        results: {method: `experiments.methods.MethodResult`}, in config order: final
            parameters (host NumPy), per-iteration trace, timings, diagnostics, posterior
            draws.
        files: {file name: (kind, payload)}, the run folder's contents for
            `results_io.write_run`.
        animate: whether EM's iterates were recorded (history.npz, the animation).
        folder: the run folder written by ``run_experiment(output=...)``, else None.
        saved_models: {method: `jaxgmm.saved.SavedModel`}, what ``models/<method>.npz``
            holds (methods that report parameters); see ``models``.
    """

    config: dict
    metrics: dict
    results: dict
    files: dict
    animate: bool = False
    folder: Path | None = None
    saved_models: dict = dataclasses.field(default_factory=dict)

    @functools.cached_property
    def models(self):
        """{method: fitted estimator}: a `jaxgmm.GaussianMixture` (EM, gradient, and SVI /
        NUTS at their posterior summary) or `jaxgmm.BayesianGaussianMixture` (VB), the
        same objects ``jaxgmm.load(run_folder, method)`` gives. They work on the data as
        the run fitted them: standardised when ``data.standardize`` is set (use
        ``saved_models[method].transform(x)`` on new data)."""
        return {name: saved.estimator() for name, saved in self.saved_models.items()}

    @property
    def rows(self):
        """{method: metrics row}: train_log_likelihood, test_log_likelihood (per sample),
        bound_final, bic/aic (point estimates), ari, recovery, n_iter, fit_s, converged,
        status, degeneracies, restarts (one dict per restart), ..."""
        return self.metrics["methods"]

    def table(self):
        """The comparison table the command line prints."""
        return format_table(self.metrics)

    def write(self, folder, overwrite=False, plots=True):
        """Write the run folder (atomically, see `results_io.staging_folder`) and, unless
        ``plots`` is false, draw its figures. Returns the folder as a Path.

        Raises:
            results_io.RunFolderExists if ``folder`` holds results and not ``overwrite``.
        """
        folder = Path(folder)
        with results_io.staging_folder(folder, overwrite=overwrite) as staging:
            results_io.write_run(staging, self.files)
            if plots:
                from experiments.plot import plot_run

                plot_run(staging, animate=self.animate)
        return folder


def run_experiment(
    config,
    *,
    overrides=(),
    output=None,
    overwrite=False,
    plots=True,
    animate=None,
    progress=False,
    source=None,
):
    """Fit everything a config asks for.

    Args:
        config: path (str or PathLike) of a YAML config, or a config mapping (as parsed
            from YAML, or an already resolved config); it is validated and its defaults
            filled in, and a mapping is not modified.
        overrides: ``key.path=value`` strings applied before validation (the ``--set`` of
            the command line), e.g. ``["model.n_components=4", "methods=[em]"]``.
        output: None (write nothing), or the run folder to write as the command line
            does; a folder that holds results is refused before anything is fitted
            unless ``overwrite``.
        overwrite: replace the results in ``output``.
        plots: draw the figures into ``output`` (ignored without ``output``).
        animate: record every EM iterate (history.npz, em_animation.gif); None: the
            config's ``plot.animate``.
        progress: show progress bars.
        source: the name used in error messages and as ``metrics["config_file"]``;
            default the path, or ``"<config>"`` for a mapping.

    A float64 config turns on ``jax_enable_x64`` (a process-wide JAX setting), as the
    command line does.

    Returns:
        `ExperimentResult`.

    Raises:
        ConfigError: an invalid config, or one that does not fit the data (each line
            names the file and the key).
        results_io.RunFolderExists: ``output`` holds results and not ``overwrite``.
        results_io.RunFolderUnwritable: ``output`` could not be written (checked before
            fitting).
    """
    if isinstance(config, (str, os.PathLike)):
        source = str(config) if source is None else source
        config = load_config(config, overrides)
    else:
        source = "<config>" if source is None else source
        raw, overridden = apply_overrides(copy.deepcopy(dict(config)), overrides, source)
        config = validate(raw, source, overridden)
    if config["dtype"] == "float64" and not jax.config.jax_enable_x64:
        jax.config.update("jax_enable_x64", True)
    if output is not None:
        if results_io.is_nonempty_dir(output) and not overwrite:
            raise results_io.RunFolderExists(str(output))
        results_io.check_writable(output, overwrite=overwrite)
    animate = config["plot"]["animate"] if animate is None else bool(animate)
    result = _run(config, source, progress_factory(progress), animate, progress)
    if output is not None:
        folder = result.write(output, overwrite=overwrite, plots=plots)
        result = dataclasses.replace(result, folder=folder)
    return result


# ---------------------------------------------------------------------- the run


def _method_key(root_key, name):
    return jax.random.fold_in(
        jax.random.fold_in(root_key, 1), zlib.crc32(name.encode()) & 0x7FFFFFFF
    )


def build_prior(prior_config, source):
    """The prior object of ``model.prior`` (None for maximum likelihood), unresolved:
    data-dependent hyperparameters are filled by `method_specs` once the data is loaded.
    (`experiments.config` has already checked the name and hyperparameters.)"""
    if prior_config is None:
        return None
    try:
        return jaxgmm.priors.prior_from_config(dict(prior_config))
    except (ValueError, TypeError) as error:
        raise ConfigError([f"{source}: model.prior: {error}"]) from None


def _prior_label(prior_config, default):
    label = jaxgmm.priors.prior_from_config(prior_config).label
    return f"{label} (default)" if default else label


def method_specs(config, spec, x_train, source):
    """The `GMMSpec` of every listed method, priors resolved on the training data.

    Methods that need a prior (SVI, NUTS) get `DEFAULT_PRIOR` when ``model.prior`` is
    null. Every method's ``check`` runs here, so a method that cannot fit its spec (EM
    with a prior that has no closed-form M-step) is a config error before any fitting.

    Returns:
        {method: (spec, prior_label)}, prior_label "none", "<name>" or "<name> (default)".
    """
    prior_config = config["model"]["prior"]
    resolved = {}

    def resolve(prior_spec, what):
        try:
            out = jaxgmm.priors.resolve_prior(prior_spec, x_train)
            # Trace the density once (abstractly) so hyperparameters of the wrong
            # length for the data surface here, not in the middle of a fit.
            jaxgmm.priors.check_prior(out, x_train.shape[1], x_train.dtype)
        except ValueError as error:
            raise ConfigError([f"{source}: {what}: {error}"]) from None
        return out

    errors = []
    for name in config["methods"]:
        method = METHODS[name]
        method_spec, label = spec, "none"
        if spec.prior is not None:
            if "config" not in resolved:
                resolved["config"] = resolve(spec, "model.prior")
            method_spec, label = resolved["config"], _prior_label(prior_config, False)
        elif method.needs_prior:
            if "default" not in resolved:
                default = dataclasses.replace(
                    spec, prior=jaxgmm.priors.prior_from_config(DEFAULT_PRIOR)
                )
                resolved["default"] = resolve(default, f"model.prior (default for {name})")
            method_spec, label = resolved["default"], _prior_label(DEFAULT_PRIOR, True)
        if method.check is not None:
            try:
                method.check(method_spec, config[name], x_train)
            except SettingError as error:
                errors.append(f"{source}: {name}.{error.key}: {error}")
            except ValueError as error:
                errors.append(
                    f"{source}: methods: {name} cannot fit this model "
                    f"(model.prior: {label}): {error}"
                )
        resolved[name] = (method_spec, label)
    if errors:
        raise ConfigError(errors)
    return {name: resolved[name] for name in config["methods"]}


def _versions():
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _check_csv_path(data_config, source):
    """data.path of a csv dataset names a readable file (a ConfigError naming the key)."""
    if data_config["dataset"] != "csv" or data_config.get("path") is None:
        return
    path = Path(data_config["path"])
    problem = None
    if path.is_dir():
        problem = "is a folder, not a CSV file"
    elif not path.exists():
        problem = f"file not found (relative paths start at {Path.cwd()})"
    elif not os.access(path, os.R_OK):
        problem = "cannot be read (permission denied)"
    if problem:
        raise ConfigError([f"{source}: data.path: {path}: {problem}"])


def _load_data(config, source):
    """(train, test, scaling, data_warnings) of the config's data block: data_warnings lists
    the loader's `experiments.datasets.DataWarning` messages. ConfigError on bad data or
    plot.features that name no feature."""
    from experiments.datasets import DataWarning, load_dataset, prepare

    data_config = config["data"]
    _check_csv_path(data_config, source)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DataWarning)
        try:
            dataset = load_dataset(data_config, config["seed"])
            train, test, scaling = prepare(
                dataset, config["seed"], data_config["standardize"], data_config["test_fraction"]
            )
        except ValueError as error:
            raise ConfigError([f"{source}: data: {error}"]) from None
    data_warnings = []
    for warning in caught:
        if issubclass(warning.category, DataWarning):
            data_warnings.append(f"data: {warning.message}")
        else:  # not ours to swallow
            warnings.warn_explicit(
                warning.message, warning.category, warning.filename, warning.lineno
            )
    features = config["plot"]["features"]
    if features is not None:
        missing = [f for f in features if f not in train.feature_names]
        if missing:
            raise ConfigError(
                [
                    f"{source}: plot.features: no feature(s) {missing}; "
                    f"features are {list(train.feature_names)}"
                ]
            )
    return train, test, scaling, data_warnings


def _check_sizes(config, n_train, source):
    """Every number of components the run fits is at most the training sample count."""
    errors = []
    n_components = config["model"]["n_components"]
    if n_train < n_components:
        errors.append(
            f"{source}: model.n_components: {n_components} components but only "
            f"{n_train} training samples"
        )
    grid = config["model_selection"]["n_components"] or []
    too_many = sorted(k for k in set(grid) if k > n_train)
    if too_many:
        errors.append(
            f"{source}: model_selection.n_components: {too_many} exceed the {n_train} "
            "training samples (each component needs at least one)"
        )
    if errors:
        raise ConfigError(errors)


def _run(config, source, progress, animate, show_progress):
    """Fit a resolved config; the `ExperimentResult` with nothing written."""
    dtype = jnp.float64 if config["dtype"] == "float64" else jnp.float32
    seed = config["seed"]
    config_sha256 = _sha256_of_file(source)  # before fitting: the file as it was run
    train, test, scaling, data_warnings = _load_data(config, source)
    _check_sizes(config, train.n_samples, source)
    model = config["model"]
    spec = jaxgmm.GMMSpec(
        model["n_components"], model["covariance_type"], model["reg_covar"],
        build_prior(model["prior"], source),
    )  # fmt: skip
    x_train = jnp.asarray(train.x, dtype)
    x_test = None if test is None else jnp.asarray(test.x, dtype)
    specs = method_specs(config, spec, x_train, source)

    root = jax.random.key(seed)
    init = jaxgmm.initial_params(
        jax.random.fold_in(root, 0), x_train, spec, config["init"]["method"],
        config["init"]["n_init"],
    )  # fmt: skip
    npz = {f"init/{k}": np.asarray(v) for k, v in init._asdict().items()}
    npz["init/covariances"] = np.asarray(
        jax.vmap(covariances, in_axes=(0, None))(init, spec.covariance_type)
    )

    rows, traces, history, posterior, results = {}, {}, {}, {}, {}
    inference_data = {}  # method -> ArviZ InferenceData, one netCDF group each
    for name in config["methods"]:
        name_spec, prior_label = specs[name]
        context = MethodContext(
            key=_method_key(root, name),
            x=x_train,
            spec=name_spec,
            init_params=init,
            settings=config[name],
            progress=progress,
            record_history=animate,
            x_test=x_test,
            show_progress=show_progress,
            select=config["init"]["select"],
            feature_names=tuple(train.feature_names),
        )
        result: MethodResult = METHODS[name].run(context)
        results[name] = result
        row, arrays = evaluate(result, name_spec, train, test, x_train, x_test, dtype)
        row["prior"] = prior_label
        row["prior_hyperparameters"] = (
            None if name_spec.prior is None else dataclasses.asdict(name_spec.prior)
        )
        row["convergence"] = converged_text(row, config[name])
        rows[name] = row
        for key, value in (arrays or {}).items():
            npz[f"{name}/{key}"] = value
        traces[name] = {
            "iteration": result.iteration,
            "log_likelihood": result.log_likelihood,
            "bound": result.bound,
            "elapsed_s": result.elapsed_s,
            "bound_name": result.bound_name,
            **result.trace_columns,
        }
        for key, value in (result.history or {}).items():
            history[f"{name}/{key}"] = np.asarray(value)
        for key, value in (result.posterior or {}).items():
            posterior[f"{name}/{key}"] = np.asarray(value)
        if result.inference_data is not None:
            inference_data[name] = result.inference_data

    data_npz = {
        "x_train": np.asarray(train.x),
        "x_test": np.zeros((0, train.n_features)) if test is None else np.asarray(test.x),
        "feature_names": np.asarray(train.feature_names, dtype=str),
    }
    if train.labels is not None:
        data_npz["labels_train"] = train.labels
        if test is not None:
            data_npz["labels_test"] = test.labels
    if train.true_params is not None:
        for key, value in train.true_params.items():
            data_npz[f"true/{key}"] = np.asarray(value)

    # log p(X) under the posterior methods' prior: the target of their ELBOs.
    evidence = None
    if evidence_estimates.wanted(config):
        posterior_method = next(
            m for m in config["methods"] if m in evidence_estimates.POSTERIOR_METHODS
        )
        evidence = evidence_estimates.estimate_evidence(
            jax.random.fold_in(root, 3), x_train, specs[posterior_method][0],
            config["evidence"], prior_label=specs[posterior_method][1],
        )  # fmt: skip
    for name, row in rows.items():
        row["ledger"] = method_ledger(name, row, results[name], evidence, train.n_samples)

    grid_rows, grid_fits = None, {}
    if config["model_selection"]["n_components"] is not None:
        grid_rows = model_selection(
            config, x_train, x_test, jax.random.fold_in(root, 2), progress, fits=grid_fits
        )
        if config["evidence"]["model_selection"]:
            evidence_estimates.grid_evidence(
                grid_rows, config, x_train, jax.random.fold_in(root, 4), DEFAULT_PRIOR
            )

    metrics = {
        "name": config["name"],
        "config_file": source,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "seed": seed,
        "dtype": config["dtype"],
        "jax_backend": jax.default_backend(),
        "jax_devices": [str(d) for d in jax.devices()],
        "jax_enable_x64": bool(jax.config.jax_enable_x64),
        "versions": _versions(),
        "units": "log-likelihoods, bounds, targets and log evidence in nats per sample; "
        "names ending in _total are totals",
        "data": {
            "dataset": train.name,
            "n_train": train.n_samples,
            "n_test": 0 if test is None else test.n_samples,
            "n_features": train.n_features,
            "feature_names": list(train.feature_names),
            "standardized": scaling is not None,
            "has_labels": train.labels is not None,
            "has_true_params": train.true_params is not None,
        },
        "spec": {
            "n_components": spec.n_components,
            "covariance_type": spec.covariance_type,
            "reg_covar": spec.reg_covar,
            "prior": model["prior"],
        },
        "init": dict(config["init"]),
        "methods": rows,
        "evidence": evidence,
        "model_selection": None,
        "warnings": data_warnings
        + [w for name, row in rows.items() for w in method_warnings(name, row, config[name])]
        + ledger_warnings(rows, evidence),
    }
    files = {
        "config.yaml": ("text", dump_config(config)),
        "traces.csv": ("traces", traces),
        "params.npz": ("npz", npz),
        "data.npz": ("npz", data_npz),
    }
    if history:
        files["history.npz"] = ("npz", history)
    if posterior:
        files["posterior.npz"] = ("npz", posterior)
    if inference_data:
        files["posterior.nc"] = ("netcdf", inference_data)
    if grid_rows is not None:
        best_model, best_files = bic_best_model(grid_rows, grid_fits, x_train, x_test)
        metrics["model_selection"] = model_selection_summary(grid_rows, best_model)
        files["model_selection.csv"] = ("rows", grid_rows)
        files.update(best_files)
    saved_models, not_saved = _saved_models(
        config, source, config_sha256, specs, results, train, scaling, metrics["created_utc"]
    )
    metrics["warnings"] += not_saved
    folder = jaxgmm.saved.MODELS_FOLDER
    if saved_models:
        files[folder] = ("models", saved_models)
    metrics["models"] = {name: f"{folder}/{name}{jaxgmm.saved.SUFFIX}" for name in saved_models}
    files["metrics.json"] = ("json", metrics)  # last: its presence marks a complete run
    return ExperimentResult(
        config=config, metrics=metrics, results=results, files=files, animate=animate,
        saved_models=saved_models,
    )  # fmt: skip


def _sha256_of_file(source):
    """The SHA-256 of the config file ``source`` names, or None (a mapping's "<config>")."""
    path = Path(source)
    if not path.is_file():
        return None
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _saved_models(config, source, config_sha256, specs, results, train, scaling, created_utc):
    """({method: `jaxgmm.saved.SavedModel`} of every method that reports parameters, with
    the run's provenance (`results_io.saved_model`), [warning for each model that could
    not be saved])."""
    provenance = {
        "run": config["name"],
        "created_utc": created_utc,
        "config_file": source,
        "config_sha256": config_sha256,
        "resolved_config_sha256": hashlib.sha256(dump_config(config).encode()).hexdigest(),
        "seed": config["seed"],
        "dtype": config["dtype"],
        "dataset": train.name,
        "n_train": train.n_samples,
        "standardized": scaling is not None,
        "jax_version": jax.__version__,
    }
    saved, not_saved = {}, []
    for name, result in results.items():
        try:
            model = results_io.saved_model(
                result, specs[name][0], method=name, feature_names=train.feature_names,
                standardize=scaling, provenance={**provenance, "prior": specs[name][1]},
            )  # fmt: skip
        except ValueError as error:  # e.g. parameters that are not finite: say so, run on
            not_saved.append(f"{name}: its model was not saved ({error})")
            continue
        if model is not None:
            saved[name] = model
    return saved, not_saved
