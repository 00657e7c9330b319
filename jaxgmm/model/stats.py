"""Sufficient statistics of a Gaussian mixture and the maximum-likelihood estimate
from them: what the M-step, the initialisers and the priors' closed-form MAP steps share."""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxgmm.model.covariance import get_family, regularize_covariance
from jaxgmm.model.params import GMMParams


class SufficientStats(NamedTuple):
    """Responsibility-weighted statistics of the data, all an M-step needs.

    Attributes:
        nk: (n_components,) sum_n r_nk.
        means: (n_components, n_features) sum_n r_nk x_n / (nk + 10 eps).
        scatter: family-shaped scatter about ``means`` (see `jaxgmm.model.covariance`).
        sum_resp_log_resp: scalar, sum_nk r_nk log r_nk (minus the entropy of q).
        n_samples: scalar, number of samples (as the data's dtype).
        frame: None (the scatter is in data coordinates), or, for full covariances, the
            prec_chol P whose whitened frame the scatter is expressed in: ``scatter`` is
            then P^T S P. Blocked EM produces that form, because in float32 it keeps the
            narrow directions of an ill-conditioned covariance that an elementwise S
            loses. `in_data_coordinates` converts; a prior's ``em_m_step`` always receives
            data coordinates.
    """

    nk: jax.Array
    means: jax.Array
    scatter: jax.Array
    sum_resp_log_resp: jax.Array
    n_samples: jax.Array
    frame: jax.Array | None = None


def in_data_coordinates(stats, spec):
    """``stats`` with the scatter in data coordinates (``frame`` None)."""
    if stats.frame is None:
        return stats
    scatter = get_family(spec.covariance_type).from_frame(stats.scatter, stats.frame)
    return stats._replace(scatter=scatter, frame=None)


def safe_counts(nk):
    # scikit-learn adds 10 * eps so empty components give finite means and weights.
    return nk + 10 * jnp.finfo(nk.dtype).eps


def sufficient_statistics(x, log_resp, spec):
    """`SufficientStats` of ``x`` under responsibilities ``exp(log_resp)``."""
    family = get_family(spec.covariance_type)
    resp = jnp.exp(log_resp)
    nk = jnp.sum(resp, axis=0)
    means = (resp.T @ x) / safe_counts(nk)[:, None]
    return SufficientStats(
        nk=nk,
        means=means,
        scatter=family.scatter(x, resp, means),
        sum_resp_log_resp=jnp.sum(jnp.where(resp > 0, resp * log_resp, 0.0)),
        n_samples=jnp.asarray(x.shape[0], x.dtype),
    )


def ml_params_from_stats(stats, spec):
    """Maximum-likelihood M-step from sufficient statistics (scikit-learn's estimate)."""
    family = get_family(spec.covariance_type)
    nk = safe_counts(stats.nk)
    cov = family.covariance_from_scatter(stats.scatter, nk)
    cov = regularize_covariance(cov, spec.reg_covar, spec.covariance_type, stats.frame)
    if stats.frame is None:
        prec_chol = family.prec_chol_from_covariance(cov)
    else:
        prec_chol = family.prec_chol_from_whitened_covariance(cov, stats.frame)
    return GMMParams(weights=nk / jnp.sum(nk), means=stats.means, prec_chol=prec_chol)


def expected_complete_log_likelihood(stats, params, spec):
    """Q = sum_nk r_nk [log pi_k + log N(x_n | mu_k, Sigma_k)] (a total, not per sample)
    from sufficient statistics, exact because
    sum_n r_nk (x_n - mu)(x_n - mu)^T = S_k + n_k (xbar_k - mu)(xbar_k - mu)^T."""
    family = get_family(spec.covariance_type)
    n_features = params.means.shape[-1]
    log_det = family.log_det_prec_chol(params.prec_chol, n_features)
    offset = family.paired_mahalanobis(stats.means, params.means, params.prec_chol)
    per_component = stats.nk * (
        jnp.log(params.weights) + log_det - 0.5 * n_features * math.log(2 * math.pi) - 0.5 * offset
    )
    expected = jnp.sum(jnp.where(stats.nk > 0, per_component, 0.0))
    prec_chol = params.prec_chol
    if stats.frame is not None:
        prec_chol = family.relative_prec_chol(stats.frame, prec_chol)
    return expected - 0.5 * family.trace_term(stats.scatter, prec_chol)
