"""The one log-likelihood. Every log p(x | params) in jaxgmm (EM, the gradient
objective, the NumPyro model, scoring, BIC, held-out evaluation) comes from here."""

from __future__ import annotations

import math

import jax.numpy as jnp
from jax.scipy.special import logsumexp

from jaxgmm._covariance import get_family


def weighted_log_prob(x, params, spec):
    """log pi_k + log N(x_n | mu_k, Sigma_k), shape (n_samples, n_components).

    Args:
        x: array of shape (n_samples, n_features).
        params: `GMMParams`.
        spec: `GMMSpec` (only ``covariance_type`` is used; static under jit).
    """
    family = get_family(spec.covariance_type)
    n_features = x.shape[-1]
    log_det = family.log_det_prec_chol(params.prec_chol, n_features)
    maha = family.mahalanobis(x, params.means, params.prec_chol)
    log_gauss = -0.5 * (n_features * math.log(2 * math.pi) + maha) + log_det
    return log_gauss + jnp.log(params.weights)


def log_prob(x, params, spec):
    """Per-sample log-density log p(x_n | params), shape (n_samples,)."""
    return logsumexp(weighted_log_prob(x, params, spec), axis=1)


def mean_log_likelihood(x, params, spec):
    """Log-likelihood per sample (the mean of `log_prob`), a scalar."""
    return jnp.mean(log_prob(x, params, spec))
