"""Drawing samples from a fitted mixture."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxgmm.model.covariance import get_family
from jaxgmm.model.linalg import solve_upper_transposed


def sample(key, params, spec, n_samples):
    """Draw ``n_samples`` points.

    Args:
        key: PRNG key.
        params: `GMMParams`.
        spec: `GMMSpec`.
        n_samples: number of points (int >= 1).

    Returns:
        ``(x, labels)``: arrays of shape (n_samples, n_features) and (n_samples,).
    """
    key_comp, key_noise = jax.random.split(key)
    dtype = params.means.dtype
    labels = jax.random.categorical(key_comp, jnp.log(params.weights), shape=(n_samples,))
    z = jax.random.normal(key_noise, (n_samples, params.means.shape[1]), dtype)
    prec_chol = params.prec_chol
    if spec.covariance_type == "tied":
        prec_chol = jnp.broadcast_to(prec_chol, (spec.n_components,) + prec_chol.shape)
    if spec.covariance_type in ("full", "tied"):
        # precision = P P^T, so x = mu + P^{-T} z has covariance P^{-T} P^{-1} = Sigma.
        noise = solve_upper_transposed(prec_chol[labels], z)
    else:
        scale = get_family(spec.covariance_type).covariance_from_prec_chol(prec_chol) ** 0.5
        noise = z * (scale[labels] if scale.ndim == 2 else scale[labels][:, None])
    return params.means[labels] + noise, labels
