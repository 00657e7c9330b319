"""The fitting methods the runner can compare, one registry entry per method.

Each method lives in its own small module and registers a `Method` in ``METHODS``:
``run(context) -> MethodResult``. The runner builds one `MethodContext` per method (the
shared data, spec and initial parameters), so every method starts from the same
`GMMParams`, and it computes every metric that only needs the final parameters (train
and held-out log-likelihood from the shared density, BIC/AIC, ARI, recovery error)
itself, uniformly; a method reports only what it alone knows (its trace, timings, bound,
diagnostics, posterior draws).

Entries: ``em``, ``gradient``, ``svi``, ``nuts``. Adding one is a module with a ``run``
function and its config block (``Method.config``, a dict of
`experiments.config_engine.Field`; `experiments.config` registers every entry's block),
plus a line in ``_registry`` below.

Priors: a method whose `Method.needs_prior` is set (SVI, NUTS: a posterior needs a
prior) gets ``DEFAULT_PRIOR`` (conjugate, data defaults) when ``model.prior`` is null;
the runner records which prior every method used. A method may refuse a spec up front
with ``Method.check(spec, settings, x)`` raising ValueError (EM without a closed-form
M-step for the prior); the runner reports that as a config error before fitting.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np


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
        degeneracies: list of dicts (component, kind, first_iteration, value).
        extra: further scalar metrics (e.g. r_hat_max, is_log_marginal), JSON-able.
        posterior: None or a dict of draws, e.g. ``weights`` (S, K), ``means`` (S, K, D),
            ``log_likelihood`` (S,) per sample.
        history: None or a dict with ``weights`` (T+1, K), ``means`` (T+1, K, D),
            ``covariances`` (T+1, ...) of every iterate, when record_history is set.
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
    degeneracies: list = dataclasses.field(default_factory=list)
    extra: dict = dataclasses.field(default_factory=dict)
    posterior: dict | None = None
    history: dict | None = None


@dataclasses.dataclass(frozen=True)
class Method:
    """A registry entry.

    Attributes:
        name: the method's name in ``methods`` and its config block.
        run: ``run(context) -> MethodResult``.
        doc: one line.
        needs_prior: whether the method needs a prior (it gets `DEFAULT_PRIOR` when the
            config has none).
        check: optional ``check(spec, settings, x)`` raising ValueError when the method
            cannot fit ``spec`` (``settings``: its resolved config block; ``x``: the
            training data, for shapes); run before anything is fitted.
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


# The prior of methods that need one when ``model.prior`` is null: the conjugate
# Dirichlet x Normal-inverse-Wishart prior with its data-derived defaults (alpha = 1,
# m0 = data mean, kappa = 0.01, Psi = data covariance / K^(2/D), nu = D + 2).
DEFAULT_PRIOR = {"name": "conjugate"}


def result_from_fit(fit, point_estimate=True, extra=None, history=None):
    """`MethodResult` from a `jaxgmm.FitResult` of the driver (any fitter)."""
    import jax

    trace = fit.trace
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
        converged=bool(fit.converged),
        degeneracies=[d._asdict() for d in fit.degeneracies],
        extra={
            **(
                {}
                if fit.nonfinite_iteration is None
                else {"nonfinite_iteration": fit.nonfinite_iteration}
            ),
            **(extra or {}),
        },
        history=history,
    )


def _registry():
    from experiments.methods import em, gradient, nuts, svi, vb

    return {m.name: m for m in (em.METHOD, gradient.METHOD, svi.METHOD, nuts.METHOD, vb.METHOD)}


METHODS = _registry()
