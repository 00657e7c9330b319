"""EM as pure functions: the E-step, the M-step (maximum likelihood or a prior's
closed-form MAP step) and the EM lower bound (Bishop 2006, eq. 9.74)."""

from __future__ import annotations

import jax.numpy as jnp
from jax.scipy.special import logsumexp

from jaxgmm.model.density import weighted_log_prob
from jaxgmm.model.stats import (
    expected_complete_log_likelihood,
    in_data_coordinates,
    ml_params_from_stats,
    sufficient_statistics,
)
from jaxgmm.priors import hyper_sites


def e_step(x, params, spec):
    """Expectation step.

    Args:
        x: array of shape (n_samples, n_features).
        params: current `GMMParams`.
        spec: `GMMSpec`.

    Returns:
        ``(log_likelihood, log_resp)``: the log-likelihood per sample of ``params``
        (scalar) and log-responsibilities of shape (n_samples, n_components).
    """
    wlp = weighted_log_prob(x, params, spec)
    log_norm = logsumexp(wlp, axis=1)
    return jnp.mean(log_norm), wlp - log_norm[:, None]


def params_from_stats(stats, spec):
    """The M-step for ``spec``: maximum likelihood, or the prior's closed-form MAP step."""
    if spec.prior is None:
        return ml_params_from_stats(stats, spec)
    check_em_prior(spec)
    return spec.prior.em_m_step(in_data_coordinates(stats, spec), spec)


def check_em_prior(spec):
    """ValueError, naming the prior and the fitters that can use it, unless EM has a
    closed-form M-step for ``spec.prior`` (none, or one with ``em_m_step``)."""
    prior = spec.prior
    if prior is None or getattr(prior, "em_m_step", None) is not None:
        return
    name = getattr(prior, "name", type(prior).__name__)
    hyper = hyper_sites(prior)
    why = f": it is hierarchical (hyper-sites {list(hyper)})" if hyper else ""
    raise ValueError(
        f"EM has no closed-form M-step for the prior {name!r}{why}; fit it with a fitter "
        "that uses the prior's density instead (gradient MAP, SVI or NUTS)"
    )


def m_step(x, log_resp, spec):
    """Maximisation step.

    Args:
        x: array of shape (n_samples, n_features).
        log_resp: array of shape (n_samples, n_components).
        spec: `GMMSpec`.

    Returns:
        The new `GMMParams` (``reg_covar`` added to the covariance diagonal).
    """
    return params_from_stats(sufficient_statistics(x, log_resp, spec), spec)


def em_bound(x, log_resp, params, spec):
    """EM lower bound per sample, Bishop (2006) eq. 9.74, evaluated directly:

    L(q, theta) = 1/N sum_n sum_k r_nk [log pi_k + log N(x_n | mu_k, Sigma_k) - log r_nk].

    Equals the log-likelihood per sample when q is the posterior under ``params``.
    """
    wlp = weighted_log_prob(x, params, spec)
    resp = jnp.exp(log_resp)
    terms = jnp.where(resp > 0, resp * (wlp - log_resp), 0.0)
    return jnp.sum(terms) / x.shape[0]


def em_bound_from_stats(stats, params, spec):
    """The same bound as `em_bound`, from sufficient statistics in O(K D^3), so EM can
    record L(q_t, theta_{t+1}) without a second pass over the data."""
    expected = expected_complete_log_likelihood(stats, params, spec)
    return (expected - stats.sum_resp_log_resp) / stats.n_samples


