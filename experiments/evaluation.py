"""Evaluation of a run's fits and the model-selection sweep, from the shared density.

``evaluate`` computes, for every method alike, the metrics that need only the final
parameters (train and held-out log-likelihood per sample, log prior, BIC/AIC for point
estimates, ARI, parameter recovery); ``model_selection`` fits EM over a grid of
(covariance type, n_components), with BIC, AIC and ICL per cell; ``bic_best_model``
classifies the data with the BIC-best cell's fit (sizes, weights, per-point uncertainty,
its files) and ``model_selection_summary`` names the best cells.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

import jaxgmm
from experiments.metrics import adjusted_rand_index, parameter_recovery_error


@functools.partial(jax.jit, static_argnums=2)
def score(x, params, spec):
    """(log-likelihood per sample, hard assignments (n_samples,)), from the shared density."""
    return (
        jaxgmm.mean_log_likelihood(x, params, spec),
        jnp.argmax(jaxgmm.model.weighted_log_prob(x, params, spec), axis=1),
    )


@functools.partial(jax.jit, static_argnums=2)
def log_responsibilities(x, params, spec):
    """log p(z_n = k | x_n, params), shape (n_samples, n_components), from the shared
    density."""
    return jax.nn.log_softmax(jaxgmm.model.weighted_log_prob(x, params, spec), axis=1)


def icl(bic, log_resp):
    """ICL in the BIC's sign (lower is better): ``bic - 2 sum_n log max_k z_nk``.

    mclust's ``icl()`` (R/icl.R) is ``bic + 2 * sum(C * log(z))`` with C the MAP indicator
    matrix and its BIC in the opposite sign (2 log L - p log n); this is its negative.
    Biernacki, Celeux and Govaert (2000, IEEE TPAMI 22(7)) define ICL-BIC with the MAP
    labels likewise; the soft variant with sum_k z_nk log z_nk (an entropy) is not this one.

    Args:
        bic: the BIC, -2 log L + p log n (a total).
        log_resp: array of shape (n_samples, n_components), `log_responsibilities`.
    """
    return float(bic - 2.0 * np.sum(np.max(np.asarray(log_resp, np.float64), axis=1)))


@functools.partial(jax.jit, static_argnums=1)
def covariances(params, covariance_type):
    """`jaxgmm.covariances`, jitted: shape by family (full (K, D, D), tied (D, D), ...)."""
    return jaxgmm.covariances(params, covariance_type)


def evaluate(result, spec, train, test, x_train, x_test, dtype):
    """The metrics of one method's `MethodResult` that only need its final parameters.

    Args:
        result: the method's `experiments.methods.MethodResult`.
        spec: the `GMMSpec` the method fitted (its prior resolved).
        train, test: the prepared `experiments.datasets.Dataset`s (test may be None).
        x_train, x_test: the same data as jax arrays in the run's dtype (x_test may be None).
        dtype: the run's dtype.

    Returns:
        (row, arrays): row is the method's entry of ``metrics.json["methods"]``; arrays
        holds ``weights``, ``means``, ``prec_chol``, ``covariances`` and ``labels_train``
        for ``params.npz``, or is None when the method returned no parameters.
    """
    row = {
        "bound_name": result.bound_name,
        "bound_final": float(result.bound[-1]) if len(result.bound) else None,
        "n_iter": result.n_iter,
        "compile_s": result.compile_s,
        "fit_s": result.fit_s,
        "converged": result.converged,
        "status": result.status,
        "degeneracies": result.degeneracies,
        "restarts": result.restarts,
        "point_estimate": result.point_estimate,
        "extra": result.extra,
    }
    if result.params is None:
        return row, None
    params = jaxgmm.GMMParams(*(jnp.asarray(a, dtype) for a in result.params))
    n_samples, n_features = train.x.shape
    train_ll, labels_train = (np.asarray(a) for a in score(x_train, params, spec))
    train_ll = float(train_ll)
    row["train_log_likelihood"] = train_ll
    labels_test = None
    row["test_log_likelihood"] = None
    if test is not None:
        test_ll, labels_test = (np.asarray(a) for a in score(x_test, params, spec))
        row["test_log_likelihood"] = float(test_ll)
    # None for a hierarchical prior: its density of the parameters alone (the marginal
    # over its hyper-sites) is not defined.
    row["log_prior_total"] = (
        None
        if spec.prior is None or jaxgmm.priors.hyper_sites(spec.prior)
        else float(jaxgmm.log_prior(params, spec))
    )
    row["n_parameters"] = jaxgmm.n_parameters(spec, n_features)
    if result.point_estimate:
        row["bic"] = jaxgmm.bic(train_ll, n_samples, n_features, spec)
        row["aic"] = jaxgmm.aic(train_ll, n_samples, n_features, spec)
        # Every restart's BIC too, so a degenerate optimum's can be set beside the one kept.
        if result.restarts:
            row["restarts"] = [dict(r) for r in result.restarts]
            for r in row["restarts"]:
                ll = r["log_likelihood"]
                r["bic"] = None if ll is None else jaxgmm.bic(ll, n_samples, n_features, spec)
    if train.labels is not None:
        row["ari"] = adjusted_rand_index(train.labels, labels_train)
        if test is not None:
            row["ari_test"] = adjusted_rand_index(test.labels, labels_test)
    covs = np.asarray(covariances(params, spec.covariance_type))
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


def model_selection(config, x_train, x_test, key, progress, fits=None):
    """EM over the grid model_selection.n_components x covariance_types.

    Args:
        config: the resolved config.
        x_train, x_test: arrays of shape (n_samples, n_features) (x_test may be None).
        key: the grid's key.
        progress: a progress-bar factory (`experiments.progress`).
        fits: None, or a dict that receives ``(covariance_type, n_components) ->
            (spec, params)`` for every fitted cell (for `bic_best_model`).

    Returns:
        One dict per cell (the columns of ``results_io.MODEL_SELECTION_COLUMNS``: BIC,
        AIC and `icl`, totals in the BIC's sign); a cell whose spec cannot be fitted has
        ``error`` instead of metrics.
    """
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
                select=config["init"]["select"],
            )  # fmt: skip
        except ValueError as error:
            row["error"] = str(error)
            rows.append(row)
            continue
        ll = float(score(x_train, fit.params, spec)[0])
        bic = jaxgmm.bic(ll, n_samples, n_features, spec)
        if fits is not None:
            fits[(cov, k)] = (spec, fit.params)
        row.update(
            n_parameters=jaxgmm.n_parameters(spec, n_features),
            train_log_likelihood=ll,
            test_log_likelihood=None
            if x_test is None
            else float(score(x_test, fit.params, spec)[0]),
            bic=bic,
            aic=jaxgmm.aic(ll, n_samples, n_features, spec),
            icl=icl(bic, log_responsibilities(x_train, fit.params, spec)),
            n_iter=fit.n_iter,
            converged=fit.converged,
            fit_s=fit.run_s,
            degenerate=bool(fit.degeneracies),
        )
        rows.append(row)
        bar.update_to(done + 1)
    bar.close()
    return rows


def best_cell(rows, key, sign):
    """{covariance_type, n_components} of the row minimising ``sign * row[key]``, or None."""
    ok = [r for r in rows if r.get(key) is not None]
    if not ok:
        return None
    best = min(ok, key=lambda r: sign * r[key])
    return {"covariance_type": best["covariance_type"], "n_components": best["n_components"]}


def model_selection_summary(rows, best_model=None):
    """``metrics.json["model_selection"]``: the rows, the best cell by BIC, AIC, ICL and
    held-out log-likelihood, and ``bic_best_model`` (`bic_best_model`'s entry, or None)."""
    return {
        "rows": rows,
        "best_bic": best_cell(rows, "bic", 1),
        "best_aic": best_cell(rows, "aic", 1),
        "best_icl": best_cell(rows, "icl", 1),
        "best_test_log_likelihood": best_cell(rows, "test_log_likelihood", -1),
        "bic_best_model": best_model,
    }


UNCERTAINTY_FILE = "uncertainty.csv"
BEST_MODEL_FILE = "model_selection.npz"


def _uncertainty_csv(parts):
    """CSV text: split, index (the row of data.npz's x_<split>), label (hard assignment),
    uncertainty (1 - max responsibility), resp_0..resp_{K-1}."""
    n_components = parts[0][1].shape[1]
    lines = [",".join(["split", "index", "label", "uncertainty"]
                      + [f"resp_{k}" for k in range(n_components)])]  # fmt: skip
    for split, resp in parts:
        labels = np.argmax(resp, axis=1)
        uncertainty = 1.0 - np.max(resp, axis=1)
        for i, (label, u, r) in enumerate(zip(labels, uncertainty, resp, strict=True)):
            cells = [split, str(i), str(int(label)), repr(float(u))]
            lines.append(",".join(cells + [repr(float(v)) for v in r]))
    return "\n".join(lines) + "\n"


def bic_best_model(rows, fits, x_train, x_test=None):
    """The BIC-best grid cell's fit (reused, not refitted) applied to the data.

    Args:
        rows: `model_selection`'s rows.
        fits: the ``fits`` dict `model_selection` filled.
        x_train, x_test: arrays of shape (n_samples, n_features) (x_test may be None).

    Returns:
        (entry, files), or (None, {}) when no cell was fitted. entry is
        ``metrics.json["model_selection"]["bic_best_model"]``: covariance_type,
        n_components, n_samples, log_likelihood_total (training data), n_parameters,
        bic, icl, weights (K,), cluster_sizes (K,) (hard assignments of the training
        data, as mclust's clustering table), uncertainty_mean and uncertainty_max
        (1 - max responsibility over the training data). files: ``uncertainty.csv``
        (every training and held-out point) and ``model_selection.npz``
        (``best_bic/{weights,means,prec_chol,covariances,labels_train}``), in
        `experiments.results_io.write_run`'s format.
    """
    best = best_cell(rows, "bic", 1)
    if best is None:
        return None, {}
    cell = (best["covariance_type"], best["n_components"])
    row = next(r for r in rows if (r["covariance_type"], r["n_components"]) == cell)
    spec, params = fits[cell]
    resp_train = np.exp(np.asarray(log_responsibilities(x_train, params, spec), np.float64))
    parts = [("train", resp_train)]
    if x_test is not None and x_test.shape[0]:
        resp_test = np.exp(np.asarray(log_responsibilities(x_test, params, spec), np.float64))
        parts.append(("test", resp_test))
    labels = np.argmax(resp_train, axis=1)
    uncertainty = 1.0 - np.max(resp_train, axis=1)
    n_samples = x_train.shape[0]
    entry = {
        "covariance_type": spec.covariance_type,
        "n_components": spec.n_components,
        "n_samples": n_samples,
        "log_likelihood_total": row["train_log_likelihood"] * n_samples,
        "n_parameters": row["n_parameters"],
        "bic": row["bic"],
        "icl": row["icl"],
        "weights": np.asarray(params.weights, np.float64).tolist(),
        "cluster_sizes": np.bincount(labels, minlength=spec.n_components).tolist(),
        "uncertainty_mean": float(uncertainty.mean()),
        "uncertainty_max": float(uncertainty.max()),
    }
    arrays = {
        "best_bic/weights": np.asarray(params.weights),
        "best_bic/means": np.asarray(params.means),
        "best_bic/prec_chol": np.asarray(params.prec_chol),
        "best_bic/covariances": np.asarray(covariances(params, spec.covariance_type)),
        "best_bic/labels_train": labels,
    }
    files = {
        UNCERTAINTY_FILE: ("text", _uncertainty_csv(parts)),
        BEST_MODEL_FILE: ("npz", arrays),
    }
    return entry, files
