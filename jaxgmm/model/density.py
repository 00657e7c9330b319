"""The one log-likelihood. Every log p(x | params) in jaxgmm (EM, the gradient
objective, the NumPyro model, scoring, BIC, held-out evaluation) comes from here."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.scipy.special import logsumexp

from jaxgmm.model.covariance import get_family, mahalanobis_fm


def weighted_log_prob_fm(xt, params, spec, expanded=None):
    """log pi_k + log N(x_n | mu_k, Sigma_k) from feature-major data ``xt`` of shape
    (n_features, n_samples); returns shape (n_components, n_samples).

    ``expanded``: None chooses the Mahalanobis form by `use_expansion` (a `lax.cond`);
    True / False force it (for a caller that has made that choice once, outside)."""
    family = get_family(spec.covariance_type)
    if expanded is None:
        maha = mahalanobis_fm(family, xt, params.means, params.prec_chol)
    else:
        maha = family.mahalanobis_fm(xt, params.means, params.prec_chol, expanded=expanded)
    return weighted_log_prob_from_mahalanobis(maha, params, spec, xt.shape[0])


def weighted_log_prob_from_mahalanobis(maha, params, spec, n_features):
    """log pi_k + log N(x_n | mu_k, Sigma_k), shape (K, n), from the squared Mahalanobis
    distances ``maha`` (K, n) (for a caller that has formed them itself)."""
    family = get_family(spec.covariance_type)
    log_det = family.log_det_prec_chol(params.prec_chol, n_features)
    const = log_det + jnp.log(params.weights) - 0.5 * n_features * math.log(2 * math.pi)
    return const[:, None] - 0.5 * maha


def weighted_log_prob(x, params, spec):
    """log pi_k + log N(x_n | mu_k, Sigma_k), shape (n_samples, n_components).

    Args:
        x: array of shape (n_samples, n_features) (or (..., n_features)).
        params: `GMMParams`.
        spec: `GMMSpec` (only ``covariance_type`` is used; static under jit).
    """
    flat = x.reshape(-1, x.shape[-1])
    wlp = weighted_log_prob_fm(flat.T, params, spec).T
    return wlp.reshape(x.shape[:-1] + (spec.n_components,))


# Above this many (sample, component, feature) elements, `log_prob` works in blocks so
# that no (n_samples, K, D) array is formed (and, under jax.grad, none is stored).
_BLOCK_ELEMENTS = 2**24


def log_prob(x, params, spec):
    """Per-sample log-density log p(x_n | params), shape (n_samples,).

    Large inputs are scored in blocks of rows (`lax.map`, rematerialised under
    differentiation), so memory stays O(block * K * D) beyond the data."""
    n_samples, n_features = x.shape[0], x.shape[-1]
    per_row = spec.n_components * (n_features + 1)
    block = max(1, _BLOCK_ELEMENTS // per_row)
    if x.ndim != 2 or n_samples <= block:
        return logsumexp(weighted_log_prob(x, params, spec), axis=1)
    score = jax.checkpoint(lambda xb: logsumexp(weighted_log_prob(xb, params, spec), axis=1))
    n_blocks, tail = divmod(n_samples, block)
    main = lax.map(score, x[: n_blocks * block].reshape(n_blocks, block, n_features))
    parts = [main.reshape(-1)] + ([score(x[n_blocks * block :])] if tail else [])
    return jnp.concatenate(parts)


def mean_log_likelihood(x, params, spec):
    """Log-likelihood per sample (the mean of `log_prob`), a scalar."""
    return jnp.mean(log_prob(x, params, spec))
