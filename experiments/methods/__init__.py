"""The fitting methods the runner can compare, one registry entry per method.

Each method lives in its own small module and registers a `Method` in ``METHODS``:
``run(context) -> MethodResult``. The runner builds one `MethodContext` per method (the
shared data, spec and initial parameters), so every method starts from the same
`GMMParams`, and it computes every metric that only needs the final parameters (train
and held-out log-likelihood from the shared density, BIC/AIC, ARI, recovery error)
itself, uniformly; a method reports only what it alone knows (its trace, timings, bound,
diagnostics, posterior draws).

Entries: ``em``, ``gradient``, ``svi``, ``nuts``, ``smc``, ``vb``. Adding one is a module with a ``run``
function and its config block (``Method.config``, a dict of
`experiments.config_engine.Field`; `experiments.config` registers every entry's block),
plus a line in ``_registry`` below.

Priors: a method whose `Method.needs_prior` is set (SVI, NUTS, SMC: a posterior needs a
prior) gets ``DEFAULT_PRIOR`` (conjugate, empirical-Bayes within-cluster Psi) when
``model.prior`` is null; the runner records which prior every method used.

Checks before fitting: ``Method.config_check(settings)`` returns the rules broken among
the keys of the method's block (they are config errors when the config is loaded, e.g.
minibatches with L-BFGS); ``Method.check(spec, settings, x)`` may refuse the spec or the
data once they are known, raising ValueError (EM without a closed-form M-step for the
prior) or `SettingError` naming its key (a batch larger than the data). The runner
reports both as config errors before any method runs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np


class SettingError(ValueError):
    """A ``Method.check`` failure caused by one key of the method's block.

    Attributes:
        key: the key within the block (e.g. ``"batch_size"``); the runner reports it as
            ``<method>.<key>``.
    """

    def __init__(self, key, message):
        self.key = key
        super().__init__(message)


@dataclasses.dataclass(frozen=True)
class MethodContext:
    """What the runner hands to a method.

    Attributes:
        key: PRNG key of this method (derived from the config's seed and the method name).
        x: jax array of shape (n_samples, n_features), the training data in the run's dtype.
        spec: the `GMMSpec` of the run.
        init_params: `GMMParams` with a leading (n_init,) restart axis, shared by all methods.
        settings: the method's resolved config block (a dict).
        progress: ``progress(total, desc) -> bar`` with ``bar.update_to(n, **postfix)`` and
            ``bar.close()``; a no-op bar when progress is off.
        record_history: whether to return per-iteration parameters (for the animation).
        x_test: jax array of the held-out rows, or None (for held-out predictive densities).
        show_progress: whether progress is shown (for libraries with their own bars).
        select: the config's ``init.select``, the rule that picks the restart reported
            (``run_fitter(select=...)``): "non_degenerate" or "likelihood".
        feature_names: the training data's column names (for ArviZ coordinates).
    """

    key: Any
    x: Any
    spec: Any
    init_params: Any
    settings: dict
    progress: Callable
    record_history: bool = False
    x_test: Any = None
    show_progress: bool = False
    select: str = "non_degenerate"
    feature_names: tuple = ()


@dataclasses.dataclass
class MethodResult:
    """Uniform output of every method (host numpy values only).

    Attributes:
        params: final `GMMParams` of numpy arrays (a point estimate, or the posterior
            summary the method reports, e.g. a posterior mean), or None.
        point_estimate: whether ``params`` is an ML/MAP estimate, for which BIC and AIC
            are reported.
        iteration, log_likelihood, bound, elapsed_s: per-iteration trace, arrays of shape
            (n_iter,); log_likelihood and bound per sample.
        bound_name: what ``bound`` is ("em_bound", "elbo", "log_joint", ...).
        compile_s, fit_s: seconds compiling and running.
        n_iter: iterations (or samples) performed; converged: bool or None.
        status: why the run stopped, or None: "converged", "max_iter", "stalled" (the
            optimiser stopped moving), "nonfinite" (a step gave non-finite values; the
            fit kept the last finite parameters), or a method's own word (NUTS:
            "r_hat" when chains have not mixed). ``converged`` is True iff "converged".
        degeneracies: list of dicts (component, kind, first_iteration, value) of the
            returned restart.
        restarts: None, or one dict per restart (restart, log_likelihood per sample,
            n_iter, converged, status, degenerate, degeneracies, selected,
            best_overall) when the method ran the shared restarts.
        extra: further scalar metrics (e.g. r_hat_max, is_log_marginal), JSON-able.
        posterior: None or a dict of draws, e.g. ``weights`` (S, K), ``means`` (S, K, D),
            ``log_likelihood`` (S,) per sample.
        history: None or a dict with ``weights`` (T+1, K), ``means`` (T+1, K, D),
            ``covariances`` (T+1, ...) of every iterate, when record_history is set.
        fitted_state: None, or what the saved model needs beyond ``params`` (vb: the
            final `jaxgmm.vb.VBPosterior`, host NumPy), see `experiments.results_io`.
        inference_data: None, or the method's ArviZ ``InferenceData`` (NUTS, SVI, when
            ArviZ is installed); the runner writes it to ``posterior.nc``.
        trace_columns: further per-iteration arrays of shape (n_iter,), written as
            traces.csv columns: ``target`` (what row t's bound is below, per sample; EM),
            ``log_prior`` (log p(theta_t) / N of the row's iterate; EM with a prior).
    """

    params: Any | None
    point_estimate: bool
    iteration: np.ndarray
    log_likelihood: np.ndarray
    bound: np.ndarray
    elapsed_s: np.ndarray
    bound_name: str
    compile_s: float
    fit_s: float
    n_iter: int
    converged: bool | None
    status: str | None = None
    degeneracies: list = dataclasses.field(default_factory=list)
    restarts: list | None = None
    extra: dict = dataclasses.field(default_factory=dict)
    posterior: dict | None = None
    history: dict | None = None
    fitted_state: Any | None = None
    inference_data: Any | None = None
    trace_columns: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Method:
    """A registry entry.

    Attributes:
        name: the method's name in ``methods`` and its config block.
        run: ``run(context) -> MethodResult``.
        doc: one line.
        needs_prior: whether the method needs a prior (it gets `DEFAULT_PRIOR` when the
            config has none).
        check: optional ``check(spec, settings, x)`` raising ValueError (or
            `SettingError`, naming the key) when the method cannot fit ``spec`` on ``x``
            (``settings``: its resolved config block; ``x``: the training data, for
            shapes); run before anything is fitted.
        config_check: optional ``config_check(settings) -> [(key, message)]``, the
            rules tying keys of the block together, run when the config is loaded
            (``settings``: the block, types already checked).
        config: the method's config block, key -> `experiments.config_engine.Field`
            (nested dicts make sub-blocks); registered under ``name`` by
            `experiments.config`.
    """

    name: str
    run: Callable[[MethodContext], MethodResult]
    doc: str
    needs_prior: bool = False
    check: Callable | None = None
    config: dict = dataclasses.field(default_factory=dict, hash=False)
    config_check: Callable | None = None


# The prior of methods that need one when ``model.prior`` is null: the conjugate
# Dirichlet x Normal-inverse-Wishart prior (alpha = 1, m0 = data mean, kappa = 0.01,
# nu = D + 2) with Psi at the scale of one cluster, the diagonal of the pooled
# within-cluster covariance of a deterministic k-means of the training data: empirical
# Bayes, and labelled so. mclust's Psi (data covariance / K^(2/D), the conjugate prior's
# own default, a regulariser for MAP) puts the between-cluster scatter into every
# component's prior and NUTS mixes poorly under it (docs/priors.md, measured).
DEFAULT_PRIOR = {"name": "conjugate", "covariance_prior": "within_cluster"}


def fit_status(fit):
    """Why a `jaxgmm.FitResult` stopped: its ``status``, or for a result without one
    (an older core) the same words derived from ``converged`` and
    ``nonfinite_iteration``."""
    status = getattr(fit, "status", None)
    if status is not None:
        return str(status)
    if fit.nonfinite_iteration is not None:
        return "nonfinite"
    return "converged" if fit.converged else "max_iter"


def restart_rows(fit):
    """One dict per restart of a `jaxgmm.FitResult`: restart, log_likelihood (per sample,
    None when not finite), n_iter, converged, status, degenerate, degeneracies (dicts),
    selected (the restart returned) and best_overall (the highest log-likelihood,
    degenerate or not)."""
    summary = fit.restarts
    lls = np.asarray(summary.log_likelihood, dtype=np.float64).reshape(-1)
    n_init = lls.size
    degenerate = getattr(summary, "degenerate", None)
    per_restart = getattr(summary, "degeneracies", None)
    statuses = getattr(summary, "status", None)
    best_overall = getattr(fit, "best_overall_restart", None)
    if best_overall is None and np.isfinite(lls).any():
        best_overall = int(np.nanargmax(np.where(np.isfinite(lls), lls, np.nan)))
    rows = []
    for r in range(n_init):
        found = None if per_restart is None else [d._asdict() for d in per_restart[r]]
        if r == fit.best_restart and found is None:
            found = [d._asdict() for d in fit.degeneracies]
        flag = None if degenerate is None else bool(np.asarray(degenerate)[r])
        if flag is None and found is not None:
            flag = bool(found)
        rows.append(
            {
                "restart": r,
                "log_likelihood": float(lls[r]) if np.isfinite(lls[r]) else None,
                "n_iter": int(np.asarray(summary.n_iter).reshape(-1)[r]),
                "converged": bool(np.asarray(summary.converged).reshape(-1)[r]),
                "status": None if statuses is None else str(np.asarray(statuses)[r]),
                "degenerate": flag,
                "degeneracies": found,
                "selected": r == int(fit.best_restart),
                "best_overall": best_overall is not None and r == int(best_overall),
            }
        )
    return rows


def refuse_without_map(spec, method):
    """Raise ValueError when ``spec.prior`` has no maximum (its ``no_map_reason``, e.g.
    Dirichlet alpha < 1 or stick-breaking gamma < K - 1): a MAP fitter would climb an
    unbounded density and return emptied components that look like a fit."""
    no_map_reason = getattr(spec.prior, "no_map_reason", None)
    reason = None if no_map_reason is None else no_map_reason(spec)
    if reason:
        raise ValueError(f"{method} is a MAP estimate here, and {reason}")


def result_from_fit(fit, point_estimate=True, extra=None, history=None):
    """`MethodResult` from a `jaxgmm.FitResult` of the driver (any fitter)."""
    import jax

    trace = fit.trace
    status = fit_status(fit)
    selection = getattr(fit, "selection", None)
    return MethodResult(
        params=jax.tree_util.tree_map(np.asarray, fit.params),
        point_estimate=point_estimate,
        iteration=np.asarray(trace.iteration),
        log_likelihood=np.asarray(trace.log_likelihood, dtype=np.float64),
        bound=np.asarray(trace.bound, dtype=np.float64),
        elapsed_s=np.asarray(trace.elapsed_s, dtype=np.float64),
        bound_name=fit.bound_name,
        compile_s=float(fit.compile_s),
        fit_s=float(fit.run_s),
        n_iter=int(fit.n_iter),
        converged=status == "converged",
        status=status,
        degeneracies=[d._asdict() for d in fit.degeneracies],
        restarts=restart_rows(fit),
        extra={
            **(
                {}
                if fit.nonfinite_iteration is None
                else {"nonfinite_iteration": fit.nonfinite_iteration}
            ),
            **({} if selection is None else {"selection": selection}),
            **(extra or {}),
        },
        history=history,
    )


def _registry():
    from experiments.methods import em, gradient, nuts, smc, svi, vb

    methods = (em.METHOD, gradient.METHOD, svi.METHOD, nuts.METHOD, smc.METHOD, vb.METHOD)
    return {m.name: m for m in methods}


METHODS = _registry()
