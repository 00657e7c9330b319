"""The experiment runner: ``python -m experiments.run CONFIG [options]``.

Loads and validates a YAML config, loads and prepares the data, builds the one `GMMSpec`,
computes the initial parameters once, runs every listed method from them, evaluates
all of them with the same metrics, runs the optional model-selection sweep, prints a
comparison table, writes the run directory (see `experiments.results_io`) and draws the
figures (`experiments.plot`).

A run directory is never overwritten silently: if ``results/<name>/`` (or ``--output``)
exists and is not empty the runner refuses unless ``--overwrite``. The run is written into
a temporary sibling folder that replaces the target only once everything is written, so
an interrupted run leaves the previous results intact.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import functools
import importlib.metadata
import math
import os
import platform
import shutil
import sys
import zlib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import jaxgmm
from experiments import results_io
from experiments.config import ConfigError, dump_config, load_config

# Import for their side effect of registering config blocks before configs are loaded.
from experiments.methods import METHODS, MethodContext

PACKAGES = (
    "jax", "jaxlib", "numpy", "optax", "numpyro", "scipy", "matplotlib", "pyyaml", "tqdm",
)  # fmt: skip


# ------------------------------------------------------------------------ progress


class _NoBar:
    def update_to(self, n, **postfix):
        pass

    def close(self):
        pass


class _Bar:
    def __init__(self, total, desc):
        from tqdm.auto import tqdm

        self._bar = tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)

    def update_to(self, n, **postfix):
        self._bar.update(max(0, min(n, self._bar.total) - self._bar.n))
        if postfix:
            self._bar.set_postfix(postfix, refresh=False)

    def close(self):
        self._bar.close()


def progress_factory(enabled):
    """``progress(total, desc)`` making tqdm bars, or silent ones when not enabled."""
    if not enabled:
        return lambda total, desc: _NoBar()
    return _Bar


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
    label = prior_config["name"]
    return f"{label} (default)" if default else label


def method_specs(config, spec, x_train, source):
    """The `GMMSpec` of every listed method, priors resolved on the training data.

    Methods that need a prior (SVI, NUTS) get `DEFAULT_PRIOR` when ``model.prior`` is
    null. Every method's ``check`` runs here, so a method that cannot fit its spec (EM
    with a prior that has no closed-form M-step) is a config error before any fitting.

    Returns:
        {method: (spec, prior_label)}, prior_label "none", "<name>" or "<name> (default)".
    """
    from experiments.methods import DEFAULT_PRIOR
    from jaxgmm.priors import log_prior

    prior_config = config["model"]["prior"]
    resolved = {}

    def resolve(prior_spec, what):
        try:
            out = jaxgmm.priors.resolve_prior(prior_spec, x_train)
            out.prior.check(out, x_train.shape[1])
            # Trace the density once (abstractly) so hyperparameters of the wrong
            # length for the data surface here, not in the middle of a fit.
            jax.eval_shape(lambda p: log_prior(p, out), _abstract_params(out, x_train))
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
            except ValueError as error:
                errors.append(
                    f"{source}: methods: {name} cannot fit this model "
                    f"(model.prior: {label}): {error}"
                )
        resolved[name] = (method_spec, label)
    if errors:
        raise ConfigError(errors)
    return {name: resolved[name] for name in config["methods"]}


def _abstract_params(spec, x):
    """Shape-only `GMMParams` of ``spec`` on data like ``x`` (for eval_shape checks)."""
    k, d = spec.n_components, x.shape[1]
    prec_shape = {"full": (k, d, d), "tied": (d, d), "diag": (k, d), "spherical": (k,)}
    return jaxgmm.GMMParams(
        jax.ShapeDtypeStruct((k,), x.dtype),
        jax.ShapeDtypeStruct((k, d), x.dtype),
        jax.ShapeDtypeStruct(prec_shape[spec.covariance_type], x.dtype),
    )


@functools.partial(jax.jit, static_argnums=2)
def _score(x, params, spec):
    """(log-likelihood per sample, hard assignments (n_samples,)), from the shared density."""
    return (
        jaxgmm.mean_log_likelihood(x, params, spec),
        jnp.argmax(jaxgmm.model.weighted_log_prob(x, params, spec), axis=1),
    )


@functools.partial(jax.jit, static_argnums=1)
def _covariances(params, covariance_type):
    return jaxgmm.covariances(params, covariance_type)


def evaluate(result, spec, train, test, x_train, x_test, dtype):
    """The metrics that only need the final parameters, from the shared density."""
    from experiments.datasets import adjusted_rand_index, parameter_recovery_error
    from jaxgmm.priors import log_prior

    row = {
        "bound_name": result.bound_name,
        "bound_final": float(result.bound[-1]) if len(result.bound) else None,
        "n_iter": result.n_iter,
        "compile_s": result.compile_s,
        "fit_s": result.fit_s,
        "converged": result.converged,
        "degeneracies": result.degeneracies,
        "point_estimate": result.point_estimate,
        "extra": result.extra,
    }
    if result.params is None:
        return row, None
    params = jaxgmm.GMMParams(*(jnp.asarray(a, dtype) for a in result.params))
    n_samples, n_features = train.x.shape
    train_ll, labels_train = (np.asarray(a) for a in _score(x_train, params, spec))
    train_ll = float(train_ll)
    row["train_log_likelihood"] = train_ll
    labels_test = None
    row["test_log_likelihood"] = None
    if test is not None:
        test_ll, labels_test = (np.asarray(a) for a in _score(x_test, params, spec))
        row["test_log_likelihood"] = float(test_ll)
    row["log_prior_total"] = None if spec.prior is None else float(log_prior(params, spec))
    n_params = jaxgmm.n_parameters(spec, n_features)
    row["n_parameters"] = n_params
    if result.point_estimate:
        total = train_ll * n_samples
        row["bic"] = -2.0 * total + n_params * math.log(n_samples)
        row["aic"] = -2.0 * total + 2.0 * n_params
    if train.labels is not None:
        row["ari"] = adjusted_rand_index(train.labels, labels_train)
        if test is not None:
            row["ari_test"] = adjusted_rand_index(test.labels, labels_test)
    covs = np.asarray(_covariances(params, spec.covariance_type))
    true = train.true_params
    if true is not None and np.shape(true["means"]) == np.shape(result.params.means):
        row["recovery"] = parameter_recovery_error(
            true, result.params.weights, result.params.means, covs, spec.covariance_type
        )
    arrays = {
        "weights": np.asarray(result.params.weights),
        "means": np.asarray(result.params.means),
        "prec_chol": np.asarray(result.params.prec_chol),
        "covariances": covs,
        "labels_train": labels_train,
    }
    return row, arrays


def model_selection(config, x_train, x_test, key, progress):
    """EM over the grid model_selection.n_components x covariance_types; rows of metrics."""
    grid = config["model_selection"]
    types = grid["covariance_types"] or [config["model"]["covariance_type"]]
    cells = [(cov, k) for cov in types for k in grid["n_components"]]
    n_samples, n_features = x_train.shape
    rows = []
    bar = progress(len(cells), "model selection")
    for done, (cov, k) in enumerate(cells):
        row = {"covariance_type": cov, "n_components": k}
        try:
            spec = jaxgmm.GMMSpec(k, cov, config["model"]["reg_covar"])
            init = jaxgmm.initial_params(
                jax.random.fold_in(key, 0), x_train, spec, config["init"]["method"],
                config["init"]["n_init"],
            )  # fmt: skip
            fit = jaxgmm.run_fitter(
                jaxgmm.em.em_fitter(spec, float(config["em"]["tol"])), jax.random.fold_in(key, 1),
                x_train, init, spec, max_iter=config["em"]["max_iter"],
            )  # fmt: skip
        except ValueError as error:
            row["error"] = str(error)
            rows.append(row)
            continue
        p = jaxgmm.n_parameters(spec, n_features)
        ll = float(_score(x_train, fit.params, spec)[0])
        row.update(
            n_parameters=p,
            train_log_likelihood=ll,
            test_log_likelihood=None
            if x_test is None
            else float(_score(x_test, fit.params, spec)[0]),
            bic=-2.0 * ll * n_samples + p * math.log(n_samples),
            aic=-2.0 * ll * n_samples + 2.0 * p,
            n_iter=fit.n_iter,
            converged=fit.converged,
            fit_s=fit.run_s,
            degenerate=bool(fit.degeneracies),
        )
        rows.append(row)
        bar.update_to(done + 1)
    bar.close()
    return rows


MODEL_SELECTION_COLUMNS = (
    "covariance_type", "n_components", "n_parameters", "train_log_likelihood",
    "test_log_likelihood", "bic", "aic", "n_iter", "converged", "fit_s", "degenerate", "error",
)  # fmt: skip


def _best(rows, key, sign):
    ok = [r for r in rows if r.get(key) is not None]
    if not ok:
        return None
    best = min(ok, key=lambda r: sign * r[key])
    return {"covariance_type": best["covariance_type"], "n_components": best["n_components"]}


def _versions():
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def run_experiment(config, *, config_path, progress, animate=False, show_progress=False):
    """Fit everything a resolved config asks for.

    Returns:
        (metrics, files): metrics is the metrics.json dict; files maps file names to
        ("json" | "text" | "npz" | "traces" | "rows", payload) for `write_run`.
    """
    from experiments.datasets import load_dataset, prepare

    source = str(config_path)
    dtype = jnp.float64 if config["dtype"] == "float64" else jnp.float32
    seed = config["seed"]
    data_config = config["data"]
    try:
        dataset = load_dataset(data_config, seed)
        train, test, scaling = prepare(
            dataset, seed, data_config["standardize"], data_config["test_fraction"]
        )
    except ValueError as error:
        raise ConfigError([f"{source}: data: {error}"]) from None
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
    model = config["model"]
    spec = jaxgmm.GMMSpec(
        model["n_components"], model["covariance_type"], model["reg_covar"],
        build_prior(model["prior"], source),
    )  # fmt: skip
    if train.n_samples < spec.n_components:
        raise ConfigError(
            [
                f"{source}: model.n_components: {spec.n_components} components but only "
                f"{train.n_samples} training samples"
            ]
        )
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
        jax.vmap(_covariances, in_axes=(0, None))(init, spec.covariance_type)
    )

    rows, traces, history, posterior = {}, {}, {}, {}
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
        )
        result = METHODS[name].run(context)
        row, arrays = evaluate(result, name_spec, train, test, x_train, x_test, dtype)
        row["prior"] = prior_label
        row["prior_hyperparameters"] = (
            None if name_spec.prior is None else dataclasses.asdict(name_spec.prior)
        )
        rows[name] = row
        for key, value in (arrays or {}).items():
            npz[f"{name}/{key}"] = value
        traces[name] = {
            "iteration": result.iteration,
            "log_likelihood": result.log_likelihood,
            "bound": result.bound,
            "elapsed_s": result.elapsed_s,
            "bound_name": result.bound_name,
        }
        for key, value in (result.history or {}).items():
            history[f"{name}/{key}"] = np.asarray(value)
        for key, value in (result.posterior or {}).items():
            posterior[f"{name}/{key}"] = np.asarray(value)

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

    grid_rows = None
    if config["model_selection"]["n_components"] is not None:
        grid_rows = model_selection(config, x_train, x_test, jax.random.fold_in(root, 2), progress)

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
        "units": "log-likelihoods and bounds in nats per sample; log_prior_total is a total",
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
        "model_selection": None,
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
    if grid_rows is not None:
        metrics["model_selection"] = {
            "rows": grid_rows,
            "best_bic": _best(grid_rows, "bic", 1),
            "best_aic": _best(grid_rows, "aic", 1),
            "best_test_log_likelihood": _best(grid_rows, "test_log_likelihood", -1),
        }
        files["model_selection.csv"] = ("rows", grid_rows)
    files["metrics.json"] = ("json", metrics)  # last: its presence marks a complete run
    return metrics, files


def write_run(folder, files):
    folder = Path(folder)
    for name, (kind, payload) in files.items():
        path = folder / name
        if kind == "text":
            results_io.write_text(path, payload)
        elif kind == "json":
            results_io.write_json(path, payload)
        elif kind == "npz":
            results_io.write_npz(path, payload)
        elif kind == "traces":
            results_io.write_traces(path, payload)
        elif kind == "rows":
            results_io.write_rows_csv(path, payload, MODEL_SELECTION_COLUMNS)
        else:  # pragma: no cover - programming error
            raise ValueError(kind)


# ---------------------------------------------------------------------- table


def _fmt(value, spec):
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return format(value, spec)


TABLE_COLUMNS = (
    # header, width, getter, format
    ("method", 8, lambda m, r: m, ""),
    ("train ll", 10, lambda m, r: r.get("train_log_likelihood"), ".5f"),
    ("test ll", 10, lambda m, r: r.get("test_log_likelihood"), ".5f"),
    ("bound", 10, lambda m, r: r.get("bound_final"), ".5f"),
    ("bound name", 13, lambda m, r: r.get("bound_name"), ""),
    ("prior", 17, lambda m, r: r.get("prior"), ""),
    ("log prior", 10, lambda m, r: r.get("log_prior_total"), ".3f"),
    ("BIC", 10, lambda m, r: r.get("bic"), ".2f"),
    ("AIC", 10, lambda m, r: r.get("aic"), ".2f"),
    ("ARI", 6, lambda m, r: r.get("ari"), ".3f"),
    ("mean err", 8, lambda m, r: (r.get("recovery") or {}).get("means_rmse"), ".4f"),
    ("iters", 6, lambda m, r: r.get("n_iter"), "d"),
    ("compile s", 9, lambda m, r: r.get("compile_s"), ".2f"),
    ("fit s", 8, lambda m, r: r.get("fit_s"), ".3f"),
    ("conv", 4, lambda m, r: r.get("converged"), ""),
    ("degenerate", 10, lambda m, r: _degeneracy_text(r.get("degeneracies")), ""),
)


# Method extras shown under the table: (key in row["extra"], label, format).
EXTRA_COLUMNS = (
    ("elbo", "ELBO", ".5f"),
    ("elbo_stderr", "+-", ".5f"),
    ("log_marginal_is", "IS log p(X)", ".5f"),
    ("elbo_below_is", "ELBO <= IS", ""),
    ("r_hat_max", "r-hat max", ".4f"),
    ("ess_min", "ESS min", ".0f"),
    ("divergences", "divergences", "d"),
    ("plug_in_log_likelihood", "plug-in ll (posterior mean)", ".5f"),
    ("posterior_mean_log_likelihood", "E[ll | X]", ".5f"),
    ("log_predictive_density_test", "held-out log pred. density", ".5f"),
)


def _degeneracy_text(degeneracies):
    if not degeneracies:
        return "none"
    return ",".join(f"{d['kind'].split('_')[0]}:{d['component']}" for d in degeneracies)


def format_table(metrics):
    lines = [
        f"{metrics['name']}: {metrics['data']['dataset']}, n_train={metrics['data']['n_train']}, "
        f"n_test={metrics['data']['n_test']}, K={metrics['spec']['n_components']} "
        f"{metrics['spec']['covariance_type']}, {metrics['dtype']} on {metrics['jax_backend']}"
        "  (ll, bound: nats per sample)",
        "  ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w, _, _) in enumerate(TABLE_COLUMNS)),
    ]
    for method, row in metrics["methods"].items():
        cells = []
        for i, (_, width, get, spec) in enumerate(TABLE_COLUMNS):
            text = _fmt(get(method, row), spec)
            cells.append(text.rjust(width) if i else text.ljust(width))
        lines.append("  ".join(cells))
    details = [
        f"  {method}: "
        + ", ".join(
            f"{label} {_fmt(row['extra'][key], spec)}"
            for key, label, spec in EXTRA_COLUMNS
            if row.get("extra", {}).get(key) is not None
        )
        for method, row in metrics["methods"].items()
        if any(row.get("extra", {}).get(key) is not None for key, _, _ in EXTRA_COLUMNS)
    ]
    if details:
        lines.append("")
        lines.append("posterior / variational diagnostics (per sample unless noted):")
        lines.extend(details)
    defaults = sorted(
        {r["prior"] for r in metrics["methods"].values() if "(default)" in (r.get("prior") or "")}
    )
    if defaults:
        lines.append(
            "  (default) prior: model.prior is null, so methods that need a prior use "
            "conjugate with data defaults; set model.prior to choose"
        )
    grid = metrics.get("model_selection")
    if grid:
        lines.append("")
        lines.append("model selection (EM):")
        lines.append(
            f"{'covariance':<10}  {'K':>3}  {'params':>6}  {'train ll':>10}  {'test ll':>10}  "
            f"{'BIC':>10}  {'AIC':>10}  {'conv':>4}"
        )
        for r in grid["rows"]:
            if "error" in r:
                lines.append(
                    f"{r['covariance_type']:<10}  {r['n_components']:>3}  error: {r['error']}"
                )
                continue
            lines.append(
                f"{r['covariance_type']:<10}  {r['n_components']:>3}  {r['n_parameters']:>6}  "
                f"{_fmt(r['train_log_likelihood'], '.5f'):>10}  "
                f"{_fmt(r['test_log_likelihood'], '.5f'):>10}  {r['bic']:>10.2f}  "
                f"{r['aic']:>10.2f}  {_fmt(r['converged'], ''):>4}"
            )
        for key, label in (
            ("best_bic", "BIC"),
            ("best_aic", "AIC"),
            ("best_test_log_likelihood", "held-out ll"),
        ):
            best = grid.get(key)
            if best:
                lines.append(
                    f"best by {label}: {best['covariance_type']}, K={best['n_components']}"
                )
    return "\n".join(lines)


# ------------------------------------------------------------------ run folders


def _is_nonempty_dir(path):
    return path.is_dir() and any(path.iterdir())


class RunFolderExists(Exception):
    pass


@contextlib.contextmanager
def staging_folder(target, overwrite=False):
    """A fresh sibling folder; on success it replaces ``target`` (old contents removed).

    Raises RunFolderExists at the end, keeping ``target``, if ``target`` is a non-empty
    folder and ``overwrite`` is false (checked again in case another run wrote it)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.partial-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if _is_nonempty_dir(target) and not overwrite:
        shutil.rmtree(staging, ignore_errors=True)
        raise RunFolderExists(str(target))
    old = None
    if target.exists():
        old = target.parent / f".{target.name}.old-{os.getpid()}"
        os.replace(target, old)
    os.replace(staging, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ------------------------------------------------------------------------- CLI


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m experiments.run",
        description="Fit one Gaussian-mixture spec with several methods and compare them.",
    )
    parser.add_argument("config", help="YAML config file (see the README, section Experiments)")
    parser.add_argument("--output", "-o", help="run folder (default: results/<name>)")
    parser.add_argument(
        "--methods", help="comma-separated subset of methods to run, e.g. em,gradient"
    )
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
        help="override a config value (YAML syntax), e.g. --set model.n_components=4; repeatable",
    )  # fmt: skip
    parser.add_argument("--x64", action="store_true", help="same as --dtype float64")
    parser.add_argument(
        "--dtype", choices=["float32", "float64"], help="override the config's dtype"
    )
    parser.add_argument("--quiet", "-q", action="store_true", help="no table, no progress bars")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing non-empty run folder"
    )
    parser.add_argument("--animate", action="store_true", help="also draw em_animation.gif")
    parser.add_argument("--no-plots", action="store_true", help="write files but draw no figures")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    overrides = list(args.overrides)
    if args.methods is not None:
        names = [m.strip() for m in args.methods.split(",") if m.strip()]
        overrides.append("methods=[" + ",".join(names) + "]")
    if args.x64 and args.dtype == "float32":
        print("error: --x64 contradicts --dtype float32", file=sys.stderr)
        return 2
    if args.x64 or args.dtype:
        overrides.append(f"dtype={'float64' if args.x64 else args.dtype}")
    try:
        config = load_config(args.config, overrides)
    except ConfigError as error:
        print(f"error: invalid config\n{error}", file=sys.stderr)
        return 2

    if config["dtype"] == "float64" and not jax.config.jax_enable_x64:
        jax.config.update("jax_enable_x64", True)

    output = Path(args.output) if args.output else Path("results") / config["name"]
    if _is_nonempty_dir(output) and not args.overwrite:
        print(
            f"error: {output} already holds results; pass --overwrite to replace them "
            "or --output to write elsewhere",
            file=sys.stderr,
        )
        return 3
    if output.exists() and not output.is_dir():
        print(f"error: {output} exists and is not a folder", file=sys.stderr)
        return 3

    show_progress = not args.quiet and sys.stdout.isatty()
    animate = args.animate or config["plot"]["animate"]
    try:
        metrics, files = run_experiment(
            config, config_path=args.config, progress=progress_factory(show_progress),
            animate=animate, show_progress=show_progress,
        )  # fmt: skip
    except ConfigError as error:
        print(f"error: invalid config\n{error}", file=sys.stderr)
        return 2
    try:
        with staging_folder(output, overwrite=args.overwrite) as folder:
            write_run(folder, files)
            if not args.no_plots:
                from experiments.plot import plot_run

                plot_run(folder, animate=animate)
    except RunFolderExists:
        print(
            f"error: {output} was written by another run meanwhile; not replaced", file=sys.stderr
        )
        return 3
    if not args.quiet:
        print(format_table(metrics))
        print(f"\nresults written to {output}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
