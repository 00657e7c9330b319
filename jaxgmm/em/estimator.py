"""`GaussianMixture`: scikit-learn's estimator contract on top of the functional EM."""

from __future__ import annotations

import logging
import math
import numbers
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from jaxgmm.em.fitter import em_fitter
from jaxgmm.em.steps import e_step
from jaxgmm.fit.driver import run_fitter
from jaxgmm.fit.validation import (
    check_data,
    check_int,
    check_means,
    check_positive,
    check_precisions,
    check_weights,
)
from jaxgmm.model.covariance import get_family
from jaxgmm.model.density import log_prob, weighted_log_prob
from jaxgmm.model.init import get_initializer, initial_params
from jaxgmm.model.params import (
    GMMParams,
    aic,
    bic,
    covariances,
    params_from_precisions,
    precisions,
)
from jaxgmm.model.sampling import sample
from jaxgmm.model.spec import GMMSpec

logger = logging.getLogger("jaxgmm")


class ConvergenceWarning(UserWarning):
    """EM stopped at ``max_iter`` before its convergence test passed."""


class DegeneracyWarning(UserWarning):
    """A component collapsed or emptied during the fit (see ``degeneracies_``)."""


_e_step = jax.jit(e_step, static_argnums=2)
_log_prob = jax.jit(log_prob, static_argnums=2)
_weighted_log_prob = jax.jit(weighted_log_prob, static_argnums=2)


def _key_from(random_state):
    if random_state is None:
        return jax.random.key(int(np.random.SeedSequence().generate_state(1)[0]))
    if isinstance(random_state, numbers.Integral) and not isinstance(random_state, bool):
        return jax.random.key(int(random_state))
    if isinstance(random_state, np.random.RandomState):
        return jax.random.key(int(random_state.randint(np.iinfo(np.int32).max)))
    if isinstance(random_state, jax.Array):
        return random_state
    raise ValueError(
        f"random_state must be None, an int, a numpy RandomState or a JAX key, got {random_state!r}"
    )


class _VerboseLog:
    """scikit-learn's verbose messages (`BaseMixture._print_verbose_msg_*`), logged at
    INFO level to the ``"jaxgmm"`` logger, fed by the driver's per-chunk callback."""

    def __init__(self, verbose, interval):
        self.verbose, self.interval = verbose, interval
        self.done = 0  # iterations already seen
        self.previous = None  # (n_restarts,) log-likelihood at the last seen iteration

    def begin(self, n_restarts):
        if self.verbose:
            logger.info("Initialization: %d restart(s), run together", n_restarts)
        self.start = self.last_message = self.last_chunk = time.perf_counter()

    def chunk_done(self, iterations_done, infos):
        now = time.perf_counter()
        new = iterations_done - self.done
        if new <= 0:
            return
        # infos are (n_restarts, chunk_size); the first `new` columns are this chunk's
        # iterations (the rest ran after every restart was done and were discarded).
        log_likelihood = np.asarray(infos.log_likelihood)
        per_iteration = (now - self.last_chunk) / new
        for column in range(new):
            iteration = self.done + column + 1
            current = log_likelihood[:, column]
            change = current - (-np.inf if self.previous is None else self.previous)
            self.previous = current
            if iteration % self.interval:
                continue
            if self.verbose == 1:
                logger.info("  Iteration %d", iteration)
            else:
                at = self.last_chunk + per_iteration * (column + 1)
                logger.info(
                    "  Iteration %d\t time lapse %.5fs\t ll change %s",
                    iteration,
                    at - self.last_message,
                    " ".join(f"{c:.5f}" for c in change),
                )
                self.last_message = at
        self.done, self.last_chunk = iterations_done, now

    def end(self, converged, lower_bound):
        outcome = "converged" if converged else "did not converge"
        if self.verbose == 1:
            logger.info("Initialization %s.", outcome)
        elif self.verbose >= 2:
            logger.info(
                "Initialization %s. time lapse %.5fs\t lower bound %.5f.",
                outcome,
                time.perf_counter() - self.start,
                lower_bound,
            )


class GaussianMixture:
    """Gaussian mixture fitted by EM, with scikit-learn's parameters and attributes.

    Parameters have scikit-learn's names and meanings (``n_components``,
    ``covariance_type``, ``tol``, ``reg_covar``, ``max_iter``, ``n_init``,
    ``init_params``, ``weights_init``, ``means_init``, ``precisions_init``,
    ``random_state``, ``warm_start``, ``verbose``, ``verbose_interval``). Restarts
    (``n_init``) run vectorised; the best by final log-likelihood is kept.

    Data are used in float64 when JAX's x64 mode is enabled and the input is float64,
    otherwise in float32. ``verbose`` and ``verbose_interval`` work as in scikit-learn
    but log to the ``"jaxgmm"`` logger at INFO level instead of printing: with
    ``verbose >= 1``, every ``verbose_interval`` iterations ``"  Iteration t"`` and the
    outcome at the end; with ``verbose >= 2`` also the time since the previous message
    and the change of the log-likelihood per sample (one value per restart: restarts
    run together). Time is measured per jitted chunk of iterations and shared evenly
    among them (the driver's convention), compilation included.

    Attributes (after ``fit``):
        weights_: (n_components,).
        means_: (n_components, n_features).
        covariances_, precisions_, precisions_cholesky_: shapes per covariance_type,
            as in scikit-learn: full (K, D, D), tied (D, D), diag (K, D), spherical (K,).
        converged_: bool. n_iter_: int.
        lower_bounds_: (n_iter_,) the EM bound L(q_t, theta_t) per sample right after
            each E-step, i.e. the log-likelihood per sample of the parameters each
            iteration started from (scikit-learn's ``lower_bounds_``).
        lower_bound_: ``lower_bounds_[-1]``: the log-likelihood per sample of the
            parameters *before* the last M-step, as in scikit-learn. It is a lower bound
            on ``log_likelihood_`` (EM never decreases the likelihood).
        log_likelihood_: log-likelihood per sample of the final parameters.
        em_bounds_: (n_iter_,) the bound L(q_t, theta_{t+1}) right after each M-step.
        degeneracies_: tuple of `jaxgmm.Degeneracy` (collapsed or empty components).
        fit_result_: the full `jaxgmm.FitResult` (trace, timings, every restart).
    """

    def __init__(
        self,
        n_components=1,
        *,
        covariance_type="full",
        tol=1e-3,
        reg_covar=1e-6,
        max_iter=100,
        n_init=1,
        init_params="kmeans",
        weights_init=None,
        means_init=None,
        precisions_init=None,
        random_state=None,
        warm_start=False,
        verbose=0,
        verbose_interval=10,
    ):
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.tol = tol
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.weights_init = weights_init
        self.means_init = means_init
        self.precisions_init = precisions_init
        self.random_state = random_state
        self.warm_start = warm_start
        self.verbose = verbose
        self.verbose_interval = verbose_interval

    # -- fitting -------------------------------------------------------------------

    def _spec(self):
        check_int(self.n_components, "n_components", 1)
        return GMMSpec(
            n_components=int(self.n_components),
            covariance_type=self.covariance_type,
            reg_covar=check_positive(self.reg_covar, "reg_covar"),
        )

    def _check_parameters(self):
        get_family(self.covariance_type)
        get_initializer(self.init_params)
        check_int(self.n_init, "n_init", 1)
        check_int(self.verbose_interval, "verbose_interval", 1)
        if not isinstance(self.verbose, numbers.Integral) or self.verbose < 0:
            raise ValueError(f"verbose must be an int >= 0 (or a bool), got {self.verbose!r}")
        check_int(self.max_iter, "max_iter", 0)
        check_positive(self.tol, "tol", allow_zero=True)

    def _initial_params(self, key, x, spec):
        if self.warm_start and hasattr(self, "means_"):
            return self._params(x.dtype)
        k, d = spec.n_components, x.shape[1]
        w = None if self.weights_init is None else check_weights(self.weights_init, k)
        m = None if self.means_init is None else check_means(self.means_init, k, d)
        p = None
        if self.precisions_init is not None:
            p = check_precisions(self.precisions_init, spec.covariance_type, k, d)
        if w is not None and m is not None and p is not None:
            return params_from_precisions(w, jnp.asarray(m, x.dtype), p, spec.covariance_type)
        params = initial_params(key, x, spec, self.init_params, int(self.n_init))
        n = params.means.shape[0]
        if w is not None:
            params = params._replace(weights=jnp.broadcast_to(jnp.asarray(w, x.dtype), (n, k)))
        if m is not None:
            params = params._replace(means=jnp.broadcast_to(jnp.asarray(m, x.dtype), (n, k, d)))
        if p is not None:
            prec_chol = get_family(spec.covariance_type).prec_chol_from_precision(jnp.asarray(p))
            params = params._replace(
                prec_chol=jnp.broadcast_to(prec_chol.astype(x.dtype), params.prec_chol.shape)
            )
        return params

    def fit(self, X, y=None):
        """Estimate parameters with EM. X: array-like of shape (n_samples, n_features)."""
        self.fit_predict(X, y)
        return self

    def fit_predict(self, X, y=None):
        """Fit, then return labels of shape (n_samples,) from a final E-step."""
        self._check_parameters()
        spec = self._spec()
        x = check_data(X, "X", n_components=spec.n_components)
        if self.warm_start and hasattr(self, "means_") and x.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X has {x.shape[1]} features, but the warm-started model has {self.n_features_in_}"
            )
        key_init, key_run = jax.random.split(_key_from(self.random_state))
        params = self._initial_params(key_init, x, spec)

        log = _VerboseLog(int(self.verbose), int(self.verbose_interval))
        log.begin(params.means.shape[0] if params.means.ndim == 3 else 1)
        result = run_fitter(
            em_fitter(spec, float(self.tol)),
            key_run,
            x,
            params,
            spec,
            max_iter=int(self.max_iter),
            callback=log.chunk_done if log.verbose else None,
        )
        self._set_fitted(result, spec, x)
        log.end(result.converged, self.lower_bound_)
        return self.predict(x)

    def _set_fitted(self, result, spec, x):
        params = jax.device_get(result.params)
        self.spec_ = spec
        self.fit_result_ = result
        self.n_features_in_ = x.shape[1]
        self.weights_ = np.asarray(params.weights)
        self.means_ = np.asarray(params.means)
        self.precisions_cholesky_ = np.asarray(params.prec_chol)
        self.covariances_ = np.asarray(covariances(result.params, spec.covariance_type))
        self.precisions_ = np.asarray(precisions(result.params, spec.covariance_type))
        self.converged_ = result.converged
        self.n_iter_ = result.n_iter
        self.lower_bounds_ = np.asarray(result.trace.log_likelihood)
        self.em_bounds_ = np.asarray(result.trace.bound)
        self.log_likelihood_ = result.log_likelihood
        self.lower_bound_ = float(self.lower_bounds_[-1]) if self.lower_bounds_.size else -math.inf
        self.degeneracies_ = result.degeneracies
        if result.nonfinite_iteration is not None:
            warnings.warn(
                f"EM produced non-finite values at iteration {result.nonfinite_iteration}; "
                "the fit stopped there and kept the last finite parameters",
                DegeneracyWarning,
                stacklevel=3,
            )
        if result.degeneracies:
            details = "; ".join(
                f"component {d.component}: {d.kind} from iteration {d.first_iteration}"
                for d in result.degeneracies
            )
            warnings.warn(f"degenerate components: {details}", DegeneracyWarning, stacklevel=3)
        if not result.converged and self.max_iter > 0 and result.nonfinite_iteration is None:
            warnings.warn(
                f"EM did not converge within max_iter={self.max_iter} iterations (tol={self.tol}); "
                "increase max_iter or tol, or check for degenerate data",
                ConvergenceWarning,
                stacklevel=3,
            )

    # -- using a fitted model --------------------------------------------------------

    def _check_fitted(self):
        if not hasattr(self, "means_"):
            raise ValueError("This GaussianMixture instance is not fitted yet; call fit(X) first")

    def _params(self, dtype):
        return jax.tree_util.tree_map(
            lambda a: jnp.asarray(a, dtype),
            GMMParams(self.weights_, self.means_, self.precisions_cholesky_),
        )

    def _x(self, X):
        self._check_fitted()
        x = check_data(X, "X")
        if x.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X has {x.shape[1]} features, but GaussianMixture was fitted with "
                f"{self.n_features_in_} features"
            )
        return x

    def score_samples(self, X):
        """Per-sample log-density log p(x_n), shape (n_samples,)."""
        x = self._x(X)
        return np.asarray(_log_prob(x, self._params(x.dtype), self.spec_))

    def score(self, X, y=None):
        """Mean log-likelihood per sample of X."""
        return float(np.mean(self.score_samples(X)))

    def predict_proba(self, X):
        """Responsibilities, shape (n_samples, n_components), rows summing to 1."""
        x = self._x(X)
        _, log_resp = _e_step(x, self._params(x.dtype), self.spec_)
        return np.exp(np.asarray(log_resp))

    def predict(self, X):
        """Most probable component per sample, shape (n_samples,)."""
        x = self._x(X)
        wlp = _weighted_log_prob(x, self._params(x.dtype), self.spec_)
        return np.asarray(jnp.argmax(wlp, axis=1))

    def sample(self, n_samples=1):
        """Draw samples: returns (X of shape (n_samples, n_features), y of shape
        (n_samples,)), in random order (scikit-learn sorts them by component)."""
        self._check_fitted()
        check_int(n_samples, "n_samples", 1)
        params = self._params(self.means_.dtype)
        x, labels = sample(_key_from(self.random_state), params, self.spec_, int(n_samples))
        return np.asarray(x), np.asarray(labels)

    def bic(self, X):
        """Bayesian information criterion: -2 log L + n_parameters * log(n_samples)."""
        x = self._x(X)
        return bic(self.score(x), x.shape[0], self.n_features_in_, self.spec_)

    def aic(self, X):
        """Akaike information criterion: -2 log L + 2 n_parameters."""
        x = self._x(X)
        return aic(self.score(x), x.shape[0], self.n_features_in_, self.spec_)

    def get_params(self, deep=True):
        names = (
            "n_components",
            "covariance_type",
            "tol",
            "reg_covar",
            "max_iter",
            "n_init",
            "init_params",
            "weights_init",
            "means_init",
            "precisions_init",
            "random_state",
            "warm_start",
            "verbose",
            "verbose_interval",
        )
        return {name: getattr(self, name) for name in names}

    def set_params(self, **params):
        for name, value in params.items():
            if name not in self.get_params():
                raise ValueError(f"invalid parameter {name!r} for GaussianMixture")
            setattr(self, name, value)
        return self
