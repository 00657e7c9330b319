"""`GaussianMixture`: scikit-learn's estimator contract on top of the functional EM; and
`MixtureEstimator`, what every scikit-learn-style estimator of jaxgmm shares (parameter
checks, ``random_state``, verbose logging, get/set_params, scoring and sampling at the
fitted parameters, and the refusal to keep non-finite fitted attributes)."""

from __future__ import annotations

import logging
import math
import numbers
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from jaxgmm._registry import lookup
from jaxgmm.em.fitter import fit_em
from jaxgmm.em.steps import e_step
from jaxgmm.fit.results import SELECTIONS, all_finite
from jaxgmm.fit.validation import (
    check_data,
    check_init_params,
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


def key_from_random_state(random_state):
    """A JAX key from scikit-learn's ``random_state`` (None, an int, a numpy RandomState)
    or a JAX key itself."""
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


class VerboseLog:
    """scikit-learn's verbose messages (`BaseMixture._print_verbose_msg_*`), logged at
    INFO level to the ``"jaxgmm"`` logger, fed by the driver's per-chunk callback.
    ``field``: the Info field whose change is reported (EM: the log-likelihood per
    sample; VB: the ELBO, as scikit-learn reports its lower bound)."""

    def __init__(self, verbose, interval, field="log_likelihood"):
        self.verbose, self.interval, self.field = verbose, interval, field
        self.done = 0  # iterations already seen
        self.previous = None  # (n_restarts,) log-likelihood at the last seen iteration

    def begin(self, n_restarts):
        if self.verbose:
            logger.info("Initialization: %d restart(s), run together", n_restarts)
        self.start = self.last_message = self.last_chunk = time.perf_counter()

    def chunk_done(self, iterations_done, infos):
        now = time.perf_counter()
        if iterations_done < self.done:  # a new restart run after the previous one
            self.done, self.previous = 0, None
            if self.verbose:
                logger.info("Initialization: next restart")
        new = iterations_done - self.done
        if new <= 0:
            return
        # infos are (n_restarts, chunk_size); the first `new` columns are this chunk's
        # iterations (the rest ran after every restart was done and were discarded).
        log_likelihood = np.asarray(getattr(infos, self.field))
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


def _nonfinite_error(estimator, x, what):
    """The ValueError for a fit with no finite state: why (the data's scale against its
    dtype, when that explains it) and what to do."""
    values = np.asarray(x, dtype=np.float64)
    spread = float(np.max(np.abs(values - values.mean(axis=0))))
    dtype = np.dtype(x.dtype)
    largest = float(np.finfo(dtype).max)
    # Covariances are sums of squared deviations over samples: that is what overflows.
    # Compared in log space: spread**2 itself overflows a Python float beyond ~1e154.
    if spread > 0 and 2 * np.log(spread) + np.log(values.shape[0]) > np.log(largest):
        reason = (
            f"X ({dtype}) has values {spread:.3g} away from the feature means, so the "
            f"summed squared deviations in the covariance estimates overflow {dtype} "
            f"(largest finite value {largest:.3g})"
        )
    else:
        reason = "X is badly scaled for its dtype, or the starting parameters are"
    remedy = "standardise X (subtract each feature's mean and divide by its standard deviation)"
    if dtype != np.float64:
        remedy += (
            ", or fit in float64 (float64 X with JAX's x64 mode on: "
            "jax.config.update('jax_enable_x64', True))"
        )
    return ValueError(f"{type(estimator).__name__} {what}: {reason}; {remedy}")


class MixtureEstimator:
    """What jaxgmm's scikit-learn-style estimators share. A subclass defines
    ``_param_names`` (its constructor arguments), ``fit_predict`` and
    ``_weighted_log_prob(x)`` (the unnormalised log-responsibilities that ``predict`` and
    ``predict_proba`` use), and sets the fitted attributes ``weights_``, ``means_``,
    ``precisions_cholesky_``, ``spec_`` and ``n_features_in_`` through `_set_parameters`,
    which refuses non-finite values."""

    _param_names: tuple = ()

    # -- parameters ----------------------------------------------------------------

    def _check_common_parameters(self):
        """The checks of the arguments every estimator has; returns the `GMMSpec`."""
        get_family(self.covariance_type)
        get_initializer(self.init_params)
        check_int(self.n_init, "n_init", 1)
        check_int(self.verbose_interval, "verbose_interval", 1)
        if not isinstance(self.verbose, numbers.Integral) or self.verbose < 0:
            raise ValueError(f"verbose must be an int >= 0 (or a bool), got {self.verbose!r}")
        check_int(self.max_iter, "max_iter", 0)
        check_positive(self.tol, "tol", allow_zero=True)
        check_int(self.n_components, "n_components", 1)
        return GMMSpec(
            n_components=int(self.n_components),
            covariance_type=self.covariance_type,
            reg_covar=check_positive(self.reg_covar, "reg_covar"),
        )

    def _fit_data(self, X, spec):
        """X validated for fitting (and against the warm-started width)."""
        x = check_data(X, "X", n_components=spec.n_components)
        if self.warm_start and hasattr(self, "means_"):
            # From means_, not n_features_in_: the fitted attributes may have been set
            # by hand (e.g. copied from scikit-learn).
            width = np.shape(self.means_)[-1]
            if x.shape[1] != width:
                raise ValueError(f"X has {x.shape[1]} features, but the warm-started model has {width}")
        return x

    def _warm_start_params(self, x, spec):
        """The fitted attributes as starting `GMMParams`, checked (whoever set them)."""
        return check_init_params(
            self._params(x.dtype),
            spec,
            x.shape[1],
            name="the fitted weights_ / means_ / precisions_cholesky_ (warm_start=True)",
            dtype=x.dtype,
        )

    def _named_initial_params(self, key, x, spec):
        """``n_init`` restarts from the ``init_params`` initialiser, refused when they
        are not finite (the first thing data too large for their dtype break)."""
        params = initial_params(key, x, spec, self.init_params, int(self.n_init))
        if not bool(all_finite(params)):
            raise _nonfinite_error(
                self,
                x,
                f"cannot start: the initial parameters from init_params={self.init_params!r} "
                "are not finite",
            )
        return params

    def _set_parameters(self, params, spec, x, **more):
        """Set ``weights_``, ``means_``, the covariance attributes, ``spec_`` and
        ``n_features_in_`` from plug-in `GMMParams` (and the attributes in ``more``, by
        name); a ValueError (and nothing set) when any of them is not finite, so a fitted
        estimator never holds NaN."""
        params = jax.device_get(params)
        fitted = {
            "weights_": np.asarray(params.weights),
            "means_": np.asarray(params.means),
            "precisions_cholesky_": np.asarray(params.prec_chol),
            "covariances_": np.asarray(covariances(params, spec.covariance_type)),
            "precisions_": np.asarray(precisions(params, spec.covariance_type)),
        }
        fitted.update(jax.device_get(more))
        bad = [name for name, value in fitted.items() if not np.all(np.isfinite(value))]
        if bad:
            raise _nonfinite_error(self, x, f"found no finite parameters ({', '.join(bad)})")
        for name, value in fitted.items():
            setattr(self, name, value)
        self.spec_ = spec
        self.n_features_in_ = x.shape[1]

    def _verbose_log(self, field="log_likelihood"):
        return VerboseLog(int(self.verbose), int(self.verbose_interval), field)

    # -- using a fitted model --------------------------------------------------------

    def fit(self, X, y=None):
        """Estimate the parameters. X: array-like of shape (n_samples, n_features)."""
        self.fit_predict(X, y)
        return self

    def _check_fitted(self):
        if not hasattr(self, "means_"):
            raise ValueError(
                f"This {type(self).__name__} instance is not fitted yet; call fit(X) first"
            )

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
                f"X has {x.shape[1]} features, but {type(self).__name__} was fitted with "
                f"{self.n_features_in_} features"
            )
        return x

    def score_samples(self, X):
        """Per-sample log-density log p(x_n) at the fitted ``weights_``, ``means_`` and
        ``precisions_cholesky_``, shape (n_samples,)."""
        x = self._x(X)
        return np.asarray(_log_prob(x, self._params(x.dtype), self.spec_))

    def score(self, X, y=None):
        """Mean of ``score_samples(X)``: the log-likelihood per sample."""
        return float(np.mean(self.score_samples(X)))

    def predict(self, X):
        """Most probable component per sample, shape (n_samples,)."""
        x = self._x(X)
        return np.asarray(jnp.argmax(self._weighted_log_prob(x), axis=1))

    def sample(self, n_samples=1):
        """Draw samples: returns (X of shape (n_samples, n_features), y of shape
        (n_samples,)), in random order (scikit-learn sorts them by component)."""
        self._check_fitted()
        check_int(n_samples, "n_samples", 1)
        params = self._params(self.means_.dtype)
        key = key_from_random_state(self.random_state)
        x, labels = sample(key, params, self.spec_, int(n_samples))
        return np.asarray(x), np.asarray(labels)

    def get_params(self, deep=True):
        return {name: getattr(self, name) for name in self._param_names}

    def set_params(self, **params):
        for name, value in params.items():
            if name not in self._param_names:
                raise ValueError(f"invalid parameter {name!r} for {type(self).__name__}")
            setattr(self, name, value)
        return self


class GaussianMixture(MixtureEstimator):
    """Gaussian mixture fitted by EM, with scikit-learn's parameters and attributes.

    Parameters have scikit-learn's names and meanings (``n_components``,
    ``covariance_type``, ``tol``, ``reg_covar``, ``max_iter``, ``n_init``,
    ``init_params``, ``weights_init``, ``means_init``, ``precisions_init``,
    ``random_state``, ``warm_start``, ``verbose``, ``verbose_interval``). Restarts
    (``n_init``) run vectorised. ``select`` (not in scikit-learn) is how the kept restart
    is chosen: ``"non_degenerate"`` (default), the highest final log-likelihood among
    restarts with no collapsed or empty component, falling back to the highest overall
    when every restart is degenerate; ``"likelihood"``, the highest final log-likelihood.

    Data are used in float64 when JAX's x64 mode is enabled and the input is float64,
    otherwise in float32. ``verbose`` and ``verbose_interval`` work as in scikit-learn
    but log to the ``"jaxgmm"`` logger at INFO level instead of printing: with
    ``verbose >= 1``, every ``verbose_interval`` iterations ``"  Iteration t"`` and the
    outcome at the end; with ``verbose >= 2`` also the time since the previous message
    and the change of the log-likelihood per sample (one value per restart: restarts
    run together). Time is measured per jitted chunk of iterations and shared evenly
    among them (the driver's convention), compilation included.

    ``fit`` raises a ValueError, and leaves the estimator as it was, when no finite
    parameters exist (e.g. float32 data so large that their covariances overflow): a
    fitted estimator never holds NaN or infinity.

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
        restarts_: `jaxgmm.RestartSummary` of every restart (arrays of shape (n_init,)):
            final ``log_likelihood``, ``converged``, ``n_iter``, ``degenerate`` and the
            ``degeneracies`` of each.
        best_restart_: index of the kept restart; best_overall_restart_: index of the
            restart with the highest final log-likelihood, degenerate or not.
        fit_result_: the full `jaxgmm.FitResult` (trace, timings, every restart).
    """

    _param_names = (
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
        "select",
    )

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
        select="non_degenerate",
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
        self.select = select

    # -- fitting -------------------------------------------------------------------

    def _initial_params(self, key, x, spec):
        if self.warm_start and hasattr(self, "means_"):
            return self._warm_start_params(x, spec)
        k, d = spec.n_components, x.shape[1]
        w = None if self.weights_init is None else check_weights(self.weights_init, k)
        m = None if self.means_init is None else check_means(self.means_init, k, d)
        p = None
        if self.precisions_init is not None:
            p = check_precisions(self.precisions_init, spec.covariance_type, k, d)
        if w is not None and m is not None and p is not None:
            return params_from_precisions(w, jnp.asarray(m, x.dtype), p, spec.covariance_type)
        params = self._named_initial_params(key, x, spec)
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

    def fit_predict(self, X, y=None):
        """Fit, then return labels of shape (n_samples,) from a final E-step."""
        spec = self._check_common_parameters()
        lookup(dict.fromkeys(SELECTIONS), self.select, "select")
        x = self._fit_data(X, spec)
        key_init, key_run = jax.random.split(key_from_random_state(self.random_state))
        params = self._initial_params(key_init, x, spec)

        log = self._verbose_log()
        log.begin(params.means.shape[0] if params.means.ndim == 3 else 1)
        try:
            result = fit_em(
                key_run,
                x,
                spec,
                init=params,
                max_iter=int(self.max_iter),
                tol=float(self.tol),
                callback=log.chunk_done if log.verbose else None,
                select=self.select,
            )
        except ValueError as error:
            # Everything else fit_em checks was checked above under this estimator's
            # names; what is left is what only running shows: no finite state exists.
            raise _nonfinite_error(self, x, "found no finite parameters from any start") from error
        self._set_fitted(result, spec, x)
        log.end(result.converged, self.lower_bound_)
        return self.predict(x)

    def _set_fitted(self, result, spec, x):
        if not math.isfinite(result.log_likelihood):
            raise _nonfinite_error(self, x, "found no finite log-likelihood")
        self._set_parameters(result.params, spec, x)
        self.fit_result_ = result
        self.converged_ = result.converged
        self.n_iter_ = result.n_iter
        self.lower_bounds_ = np.asarray(result.trace.log_likelihood)
        self.em_bounds_ = np.asarray(result.trace.bound)
        self.log_likelihood_ = result.log_likelihood
        self.lower_bound_ = float(self.lower_bounds_[-1]) if self.lower_bounds_.size else -math.inf
        self.degeneracies_ = result.degeneracies
        self.restarts_ = result.restarts
        self.best_restart_ = result.best_restart
        self.best_overall_restart_ = result.best_overall_restart
        if result.nonfinite_iteration is not None:
            kept = (
                "the initial parameters"
                if result.n_iter == 0
                else f"the finite parameters after iteration {result.n_iter}"
            )
            warnings.warn(
                f"EM produced non-finite values at iteration {result.nonfinite_iteration}; "
                f"the fit stopped there and kept {kept}",
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

    def _weighted_log_prob(self, x):
        return _weighted_log_prob(x, self._params(x.dtype), self.spec_)

    def predict_proba(self, X):
        """Responsibilities, shape (n_samples, n_components), rows summing to 1."""
        x = self._x(X)
        _, log_resp = _e_step(x, self._params(x.dtype), self.spec_)
        return np.exp(np.asarray(log_resp))

    def bic(self, X):
        """Bayesian information criterion: -2 log L + n_parameters * log(n_samples)."""
        x = self._x(X)
        return bic(self.score(x), x.shape[0], self.n_features_in_, self.spec_)

    def aic(self, X):
        """Akaike information criterion: -2 log L + 2 n_parameters."""
        x = self._x(X)
        return aic(self.score(x), x.shape[0], self.n_features_in_, self.spec_)
