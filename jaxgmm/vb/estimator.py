"""`BayesianGaussianMixture`: scikit-learn's variational estimator contract on top of
`fit_vb` (closed-form mean-field variational Bayes), sharing `GaussianMixture`'s
scikit-learn protocol (`jaxgmm.em.estimator.MixtureEstimator`: params, repr, tags,
input conversion, `NotFittedError`), checks, ``random_state``, verbose logging, plug-in
scoring and sampling in shape buckets."""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from jaxgmm._registry import lookup
from jaxgmm.em.estimator import (
    ConvergenceWarning,
    DegeneracyWarning,
    MixtureEstimator,
    _nonfinite_error,
    key_from_random_state,
    map_row_buckets,
)
from jaxgmm.fit.driver import RunState, run_fitter
from jaxgmm.fit.validation import check_positive
from jaxgmm.model.covariance import get_family
from jaxgmm.priors import ConjugatePrior
from jaxgmm.priors.conjugate import WEIGHT_PRIOR_TYPES
from jaxgmm.vb.fitter import _as_posterior, fit_vb, vb_fitter
from jaxgmm.vb.fitter import vb_spec as resolved_vb_spec
from jaxgmm.vb.predictive import n_active_components, posterior_predictive_log_prob
from jaxgmm.vb.steps import UPDATES, VBPosterior, estep_log_prob

_estep_log_prob = jax.jit(estep_log_prob, static_argnums=(2, 3))
_predictive = jax.jit(posterior_predictive_log_prob, static_argnums=2)


@functools.partial(jax.jit, static_argnums=(2, 3))
def _estep_log_resp(x, posterior, spec, exact):
    return jax.nn.log_softmax(estep_log_prob(x, posterior, spec, exact), axis=1)

_POSTERIOR_ATTRIBUTES = {
    "weight_concentration": "weight_concentration_",
    "mean_precision": "mean_precision_",
    "means": "means_",
    "degrees_of_freedom": "degrees_of_freedom_",
    "covariances": "covariances_",
    "prec_chol": "precisions_cholesky_",
}


class BayesianGaussianMixture(MixtureEstimator):
    """Variational Bayesian Gaussian mixture, with scikit-learn's parameters and attributes.

    Constructor arguments, defaults and meanings are those of
    `sklearn.mixture.BayesianGaussianMixture`; ``update`` is ours. The prior is the
    ``conjugate`` prior (`jaxgmm.priors.ConjugatePrior`) with scikit-learn's
    hyperparameters and data defaults: ``weight_concentration_prior`` (None: 1 /
    n_components), ``mean_precision_prior`` (None: 1), ``mean_prior`` (None: the mean of
    X), ``degrees_of_freedom_prior`` (None: n_features; must be > n_features - 1),
    ``covariance_prior`` (None: the covariance of X with ddof=1; for diag its diagonal,
    for spherical the mean of that diagonal; given: (D, D) for full and tied, (D,) for
    diag, a float for spherical). ``tol`` is scikit-learn's: on the change of its lower
    bound, a total over samples (which changes exactly as our ELBO total does).

    ``update``: "exact" (default) is coordinate ascent for the conjugate model: the ELBO
    never decreases. "sklearn" reproduces scikit-learn's updates, which differ for tied,
    diag and spherical covariances (see docs/vb.md); for full covariances the two are
    the same, so the defaults fit what scikit-learn's defaults fit.

    ``warm_start=True``: ``fit`` continues from the current fitted attributes
    (``weight_concentration_``, ``mean_precision_``, ``means_``, ``degrees_of_freedom_``,
    ``covariances_``, ``precisions_cholesky_``), whoever set them (one may copy
    scikit-learn's onto this estimator), with one restart.

    Scoring: ``score_samples`` is the plug-in log-density at the posterior mean
    (``weights_``, ``means_``, ``covariances_``: a normalised density, comparable with
    `jaxgmm.GaussianMixture`); scikit-learn's ``score_samples`` for this estimator is
    instead logsumexp_k E_q[log pi_k + log N(x | mu_k, Lambda_k^-1)], which is not a
    normalised density. ``score_samples_predictive`` is the posterior predictive density
    (a mixture of Student-t). ``predict`` and ``predict_proba`` are the variational
    responsibilities q(z), as scikit-learn's.

    Attributes (after ``fit``), as scikit-learn's:
        weights_: (K,) E_q[pi]. weight_concentration_: (K,) Dirichlet, or a tuple of two
            (K,) arrays (the sticks' Beta parameters) for "dirichlet_process".
        mean_precision_: (K,). means_: (K, D). degrees_of_freedom_: (K,), () for tied.
        covariances_, precisions_, precisions_cholesky_: per covariance_type (full
            (K, D, D), tied (D, D), diag (K, D), spherical (K,)).
        converged_: bool. n_iter_: int.
        lower_bound_: scikit-learn's lower bound (a total; it drops K-, N- and
            prior-dependent constants) of the last iteration; lower_bounds_: (n_iter_,).
        weight_concentration_prior_, mean_precision_prior_, mean_prior_,
        degrees_of_freedom_prior_, covariance_prior_: the prior used.
    And ours:
        elbo_: the complete ELBO of the last iteration in nats per sample (a lower bound
            on log p(X) / n_samples); elbos_: (n_iter_,).
        log_likelihood_: plug-in log-likelihood per sample (``score`` on the fitted X).
        n_active_components_: components with E_q[pi_k] > 1e-2.
        posterior_: the `jaxgmm.vb.VBPosterior`. restarts_, best_restart_: every
            restart's summary (`jaxgmm.RestartSummary`) and the kept one (highest ELBO).
        fit_result_: the full `jaxgmm.FitResult` of `jaxgmm.fit_vb`.
    """

    _param_names = (
        "n_components",
        "covariance_type",
        "tol",
        "reg_covar",
        "max_iter",
        "n_init",
        "init_params",
        "weight_concentration_prior_type",
        "weight_concentration_prior",
        "mean_precision_prior",
        "mean_prior",
        "degrees_of_freedom_prior",
        "covariance_prior",
        "random_state",
        "warm_start",
        "verbose",
        "verbose_interval",
        "update",
    )

    def __init__(
        self,
        *,
        n_components=1,
        covariance_type="full",
        tol=1e-3,
        reg_covar=1e-6,
        max_iter=100,
        n_init=1,
        init_params="kmeans",
        weight_concentration_prior_type="dirichlet_process",
        weight_concentration_prior=None,
        mean_precision_prior=None,
        mean_prior=None,
        degrees_of_freedom_prior=None,
        covariance_prior=None,
        random_state=None,
        warm_start=False,
        verbose=0,
        verbose_interval=10,
        update="exact",
    ):
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.tol = tol
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.weight_concentration_prior_type = weight_concentration_prior_type
        self.weight_concentration_prior = weight_concentration_prior
        self.mean_precision_prior = mean_precision_prior
        self.mean_prior = mean_prior
        self.degrees_of_freedom_prior = degrees_of_freedom_prior
        self.covariance_prior = covariance_prior
        self.random_state = random_state
        self.warm_start = warm_start
        self.verbose = verbose
        self.verbose_interval = verbose_interval
        self.update = update

    # -- the prior -------------------------------------------------------------------

    def _prior(self, x, spec):
        """The `ConjugatePrior` of scikit-learn's hyperparameters (defaults from X),
        each checked under its scikit-learn name; sets the ``*_prior_`` attributes' values
        (returned, set only after a successful fit)."""
        lookup(WEIGHT_PRIOR_TYPES, self.weight_concentration_prior_type,
               "weight_concentration_prior_type")
        n_features, cov_type = x.shape[1], spec.covariance_type
        data = np.asarray(x, dtype=np.float64)
        k = spec.n_components
        alpha = (1.0 / k if self.weight_concentration_prior is None
                 else check_positive(self.weight_concentration_prior,
                                     "weight_concentration_prior"))
        kappa = (1.0 if self.mean_precision_prior is None
                 else check_positive(self.mean_precision_prior, "mean_precision_prior"))
        if self.mean_prior is None:
            m0 = data.mean(axis=0)
        else:
            m0 = np.asarray(self.mean_prior, dtype=np.float64)
            if m0.shape != (n_features,) or not np.all(np.isfinite(m0)):
                raise ValueError(
                    f"mean_prior must be a finite array of shape ({n_features},), "
                    f"got shape {m0.shape}"
                )
        if self.degrees_of_freedom_prior is None:
            nu = float(n_features)
        else:
            nu = check_positive(self.degrees_of_freedom_prior, "degrees_of_freedom_prior")
            if not nu > n_features - 1:
                raise ValueError(
                    f"degrees_of_freedom_prior must be > n_features - 1 = {n_features - 1}, "
                    f"got {nu!r}"
                )
        psi = self._covariance_prior(data, cov_type)
        prior = ConjugatePrior(
            weight_concentration=alpha,
            mean_prior=m0,
            mean_precision=kappa,
            degrees_of_freedom=nu,
            covariance_prior=psi,
            weight_prior_type=self.weight_concentration_prior_type,
        )
        attributes = {
            "weight_concentration_prior_": alpha,
            "mean_precision_prior_": kappa,
            "mean_prior_": m0,
            "degrees_of_freedom_prior_": nu,
            "covariance_prior_": psi,
        }
        return prior, attributes

    def _covariance_prior(self, data, cov_type):
        n_features = data.shape[1]
        if self.covariance_prior is None:
            if data.shape[0] < 2:
                raise ValueError(
                    f"X has n_samples={data.shape[0]}: the default covariance_prior is the "
                    "covariance of X, which needs at least 2 samples; pass covariance_prior"
                )
            variances = np.var(data, axis=0, ddof=1)
            return {
                "full": np.atleast_2d(np.cov(data.T)),
                "tied": np.atleast_2d(np.cov(data.T)),
                "diag": variances,
                "spherical": float(variances.mean()),
            }[cov_type]
        psi = np.asarray(self.covariance_prior, dtype=np.float64)
        expected = {"full": (n_features, n_features), "tied": (n_features, n_features),
                    "diag": (n_features,), "spherical": ()}[cov_type]
        if psi.shape != expected:
            raise ValueError(
                f"covariance_prior for covariance_type={cov_type!r} must have shape "
                f"{expected}, got {psi.shape}"
            )
        if not np.all(np.isfinite(psi)):
            raise ValueError("covariance_prior must be finite")
        if psi.ndim == 2:
            if not np.allclose(psi, psi.T) or np.linalg.eigvalsh(psi).min() <= 0:
                raise ValueError(
                    f"covariance_prior for covariance_type={cov_type!r} must be symmetric "
                    "positive-definite"
                )
        elif np.any(psi <= 0):
            raise ValueError(f"covariance_prior for covariance_type={cov_type!r} must be > 0")
        return float(psi) if psi.ndim == 0 else psi

    # -- fitting -------------------------------------------------------------------

    def _warm_posterior(self, x, spec):
        """The fitted attributes as a `VBPosterior`, checked (whoever set them)."""
        try:
            fields = [np.asarray(getattr(self, a)) for a in _POSTERIOR_ATTRIBUTES.values()]
        except AttributeError as error:
            raise ValueError(
                "warm_start=True continues from the fitted attributes "
                f"{list(_POSTERIOR_ATTRIBUTES.values())}; {error}"
            ) from None
        try:
            return _as_posterior(VBPosterior(*fields), spec, x.shape[1], x.dtype)
        except ValueError as error:
            message = str(error)
            for field, attribute in _POSTERIOR_ATTRIBUTES.items():
                message = message.replace(f"init_posterior.{field} ", f"{attribute} ")
            message = message.replace("init_posterior", "the fitted attributes")
            raise ValueError(f"warm_start=True: {message}") from None

    def fit_predict(self, X, y=None):
        """Fit, then return labels of shape (n_samples,) (the argmax of q(z))."""
        spec = self._check_common_parameters()
        lookup(dict.fromkeys(UPDATES), self.update, "update")
        x = self._fit_data(X, spec)
        prior, prior_attributes = self._prior(x, spec)
        vb_spec = dataclasses.replace(spec, prior=prior)
        key_init, key_run = jax.random.split(key_from_random_state(self.random_state))
        warm = self.warm_start and hasattr(self, "means_")
        n_restarts = 1 if warm else int(self.n_init)
        log = self._verbose_log("sklearn_lower_bound_total")
        log.begin(n_restarts)
        # scikit-learn's tol is on its total lower bound; fit_vb's on the ELBO per
        # sample, which changes by the same amount over n_samples.
        tol = float(self.tol) / x.shape[0]
        callback = log.chunk_done if log.verbose else None
        if warm:
            # fit_vb's init_posterior, but continuing the tolerance test as scikit-learn
            # does: the first iteration compares with the previous fit's ELBO, so that
            # repeated max_iter=1 fits converge.
            vb_spec = resolved_vb_spec(vb_spec, x)
            state = RunState(
                fitter_state=self._warm_posterior(x, vb_spec),
                previous=jnp.asarray(np.asarray(self._previous_elbo(), x.dtype)),
                n_iter=jnp.zeros((), jnp.int32),
            )
            result = run_fitter(
                vb_fitter(vb_spec, tol, self.update), key_run, x, None, vb_spec,
                max_iter=int(self.max_iter), callback=callback, init_state=state,
            )
        else:
            result = fit_vb(
                key_run,
                x,
                vb_spec,
                max_iter=int(self.max_iter),
                tol=tol,
                update=self.update,
                callback=callback,
                init=self._named_initial_params(key_init, x, spec),
            )
        self._set_fitted(result, vb_spec, x, prior_attributes)
        log.end(result.converged, self.lower_bound_)
        return self._labels(np.asarray(x))

    def _previous_elbo(self):
        """The previous fit's ELBO per sample, what the first tolerance test of a warm
        start compares with; -inf when the attributes were set by hand."""
        previous = getattr(self, "elbo_", -math.inf)
        return float(previous) if np.isfinite(previous) else -math.inf

    def _set_fitted(self, result, spec, x, prior_attributes):
        if not math.isfinite(result.log_likelihood):
            raise _nonfinite_error(self, x, "found no finite log-likelihood")
        posterior = jax.device_get(result.state.fitter_state)
        concentration = np.asarray(posterior.weight_concentration)
        if concentration.ndim == 2:  # scikit-learn's tuple of the sticks' Beta parameters
            concentration = (concentration[0], concentration[1])
        self._set_parameters(
            result.params,
            spec,
            x,
            covariances_=np.asarray(posterior.covariances),
            weight_concentration_=concentration,
            mean_precision_=np.asarray(posterior.mean_precision),
            degrees_of_freedom_=np.asarray(posterior.degrees_of_freedom),
        )
        if np.ndim(self.degrees_of_freedom_) == 0:
            self.degrees_of_freedom_ = float(self.degrees_of_freedom_)
        for name, value in prior_attributes.items():
            setattr(self, name, value)
        self.posterior_ = posterior
        self.fit_result_ = result
        self.converged_ = result.converged
        self.n_iter_ = result.n_iter
        self.lower_bounds_ = np.asarray(result.trace.extras["sklearn_lower_bound_total"])
        self.elbos_ = np.asarray(result.trace.bound)
        self.lower_bound_ = float(self.lower_bounds_[-1]) if self.n_iter_ else -math.inf
        self.elbo_ = float(self.elbos_[-1]) if self.n_iter_ else -math.inf
        self.log_likelihood_ = result.log_likelihood
        self.n_active_components_ = n_active_components(posterior, spec)
        self.restarts_ = result.restarts
        self.best_restart_ = result.best_restart
        if result.nonfinite_iteration is not None:
            kept = (
                "the starting posterior"
                if result.n_iter == 0
                else f"the finite posterior after iteration {result.n_iter}"
            )
            warnings.warn(
                f"variational Bayes produced non-finite values at iteration "
                f"{result.nonfinite_iteration}; the fit stopped there and kept {kept}",
                DegeneracyWarning,
                stacklevel=3,
            )
        elif not result.converged and self.max_iter > 0:
            warnings.warn(
                f"variational Bayes did not converge within max_iter={self.max_iter} "
                f"iterations (tol={self.tol}); increase max_iter or tol",
                ConvergenceWarning,
                stacklevel=3,
            )

    # -- using a fitted model --------------------------------------------------------

    def _check_fitted(self):
        super()._check_fitted()
        if not hasattr(self, "spec_"):
            # Attributes set by hand (e.g. copied from scikit-learn) without a fit: the
            # prior is not needed to score, only the family and the weights' type.
            self.spec_ = self._check_common_parameters()
            self.spec_ = dataclasses.replace(
                self.spec_,
                prior=ConjugatePrior(weight_prior_type=self.weight_concentration_prior_type),
            )
            self.n_features_in_ = np.shape(self.means_)[-1]
        get_family(self.spec_.covariance_type)

    def _posterior(self, dtype):
        # Cast on the host: a cast by JAX would compile for every new dtype and shape.
        fields = [np.asarray(getattr(self, a), dtype) for a in _POSTERIOR_ATTRIBUTES.values()]
        return VBPosterior(*(jnp.asarray(f) for f in fields))

    def _weighted_log_prob(self, x):
        exact = self.update == "exact"
        return _estep_log_prob(x, self._posterior(x.dtype), self.spec_, exact)

    def _log_resp(self, x):
        exact = self.update == "exact"
        return _estep_log_resp(x, self._posterior(x.dtype), self.spec_, exact)

    def predict_proba(self, X):
        """q(z): responsibilities of shape (n_samples, n_components), rows summing to 1."""
        return super().predict_proba(X)

    def score_samples_predictive(self, X):
        """log p(x_n | training data) under q, the posterior predictive (a mixture of
        Student-t, `jaxgmm.vb.posterior_predictive_log_prob`), shape (n_samples,)."""
        return self._score_predictive(self._x(X))

    def _score_predictive(self, x):
        posterior = self._posterior(x.dtype)
        return map_row_buckets(lambda block: _predictive(posterior, block, self.spec_), x)

    def score_predictive(self, X, y=None):
        """Mean of ``score_samples_predictive(X)``: held-out log predictive per sample."""
        return float(np.mean(self._score_predictive(self._x(X))))
