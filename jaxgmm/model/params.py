"""`GMMParams`: the fitted quantities of a mixture, and conversions between
covariance, precision and precision-Cholesky representations."""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxgmm.model.covariance import get_family


class GMMParams(NamedTuple):
    """Parameters of a Gaussian mixture (a pytree; crosses jit boundaries).

    Attributes:
        weights: array of shape (n_components,), non-negative, summing to 1.
        means: array of shape (n_components, n_features).
        prec_chol: Cholesky factor of the precision matrices (scikit-learn's
            ``precisions_cholesky_``); its shape depends on the covariance type:
            full (n_components, n_features, n_features), tied (n_features, n_features),
            diag (n_components, n_features), spherical (n_components,).
    """

    weights: jax.Array
    means: jax.Array
    prec_chol: jax.Array

    @property
    def n_components(self):
        return self.means.shape[0]

    @property
    def n_features(self):
        return self.means.shape[1]


def covariances(params, covariance_type):
    """Covariances in the family's shape (see the table in `jaxgmm.model.covariance`)."""
    return get_family(covariance_type).covariance_from_prec_chol(params.prec_chol)


def precisions(params, covariance_type):
    """Precision matrices (inverse covariances) in the family's shape."""
    return get_family(covariance_type).precision_from_prec_chol(params.prec_chol)


def _params_from(weights, means, matrices, to_prec_chol):
    means = jnp.asarray(means)
    return GMMParams(
        weights=jnp.asarray(weights, means.dtype),
        means=means,
        prec_chol=to_prec_chol(jnp.asarray(matrices, means.dtype)),
    )


def params_from_covariances(weights, means, covariances, covariance_type):
    """Build `GMMParams` from covariances via a Cholesky factorisation (no inverse)."""
    family = get_family(covariance_type)
    return _params_from(weights, means, covariances, family.prec_chol_from_covariance)


def params_from_precisions(weights, means, precisions, covariance_type):
    """Build `GMMParams` from precision matrices (scikit-learn's ``precisions_init``)."""
    family = get_family(covariance_type)
    return _params_from(weights, means, precisions, family.prec_chol_from_precision)


def dense_covariances(covariances, covariance_type, n_components, n_features):
    """Covariances in ``covariance_type``'s shape expanded to (n_components, n_features,
    n_features); NumPy in, NumPy out (JAX in, JAX out)."""
    return get_family(covariance_type).dense(covariances, n_components, n_features)


def abstract_params(spec, n_features, dtype):
    """Shape-only `GMMParams` (``jax.ShapeDtypeStruct`` leaves) of ``spec`` for data with
    ``n_features`` features, e.g. for `jax.eval_shape` checks."""
    k = spec.n_components
    shape = get_family(spec.covariance_type).prec_chol_shape(k, n_features)
    return GMMParams(
        weights=jax.ShapeDtypeStruct((k,), dtype),
        means=jax.ShapeDtypeStruct((k, n_features), dtype),
        prec_chol=jax.ShapeDtypeStruct(shape, dtype),
    )


def n_parameters(spec, n_features):
    """Free parameters: (K - 1) weights, K * D means, plus the covariance family's count."""
    k = spec.n_components
    cov = get_family(spec.covariance_type).n_parameters(k, n_features)
    return (k - 1) + k * n_features + cov


def bic(log_likelihood, n_samples, n_features, spec):
    """Bayesian information criterion, -2 log L + n_parameters * log(n_samples), with
    ``log_likelihood`` the mean log-likelihood per sample (so log L is its total)."""
    total = float(log_likelihood) * n_samples
    return -2.0 * total + n_parameters(spec, n_features) * math.log(n_samples)


def aic(log_likelihood, n_samples, n_features, spec):
    """Akaike information criterion, -2 log L + 2 n_parameters, with ``log_likelihood``
    the mean log-likelihood per sample."""
    return -2.0 * float(log_likelihood) * n_samples + 2.0 * n_parameters(spec, n_features)
