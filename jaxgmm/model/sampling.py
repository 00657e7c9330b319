"""Drawing samples from a fitted mixture."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxgmm.model.covariance import get_family


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
    noise = get_family(spec.covariance_type).sample_noise(z, params.prec_chol, labels)
    return params.means[labels] + noise, labels
