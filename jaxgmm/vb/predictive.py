"""What a variational posterior predicts: the posterior predictive density (a mixture of
Student-t distributions, Bishop 2006 eq. 10.81) for held-out scoring, and the expected
number of active components."""

from __future__ import annotations

import jax.numpy as jnp
from jax.scipy.special import logsumexp

from jaxgmm.vb.families import get_vb_family
from jaxgmm.vb.steps import expected_weights


def posterior_predictive_log_prob(posterior, x, spec):
    """log p(x_n | X) under q, shape (n_samples,): sum_k E_q[pi_k] St(x_n | ...), the
    Student-t predictive of each component (Bishop 2006, eqs. 10.81-10.82; diag: a product
    of one-dimensional t's, one per feature; spherical: a D-dimensional t with an isotropic
    scale). E_q[pi] are the plug-in weights (for Dirichlet-process weights normalised over
    the K components, as scikit-learn's ``weights_``).

    Args:
        posterior: `VBPosterior`.
        x: array of shape (n_samples, n_features).
        spec: the `GMMSpec` it was fitted with (covariance and weight prior types).
    """
    vb_family = get_vb_family(spec.covariance_type)
    x = jnp.asarray(x, posterior.means.dtype)
    log_t = vb_family.predictive_log_prob_fm(
        x.T,
        posterior.means,
        posterior.prec_chol,
        posterior.degrees_of_freedom,
        posterior.mean_precision,
    )
    log_w = jnp.log(expected_weights(posterior.weight_concentration, spec))
    return logsumexp(log_t + log_w[:, None], axis=0)


def mean_posterior_predictive_log_prob(posterior, x, spec):
    """The mean of `posterior_predictive_log_prob` (nats per sample), a scalar."""
    return jnp.mean(posterior_predictive_log_prob(posterior, x, spec))


def n_active_components(posterior, spec, threshold=1e-2):
    """Number of components whose expected weight E_q[pi_k] (the plug-in weights) exceeds
    ``threshold`` (default 1e-2), as an int."""
    if not 0 <= threshold < 1:
        raise ValueError(f"threshold must be in [0, 1), got {threshold!r}")
    weights = expected_weights(jnp.asarray(posterior.weight_concentration), spec)
    return int(jnp.sum(weights > threshold))
