"""Truncated Dirichlet-process (stick-breaking) weights: the map between sticks and weights
and the NumPyro distribution of the weights it implies (Sethuraman 1994; truncated at K as
in Blei and Jordan 2006, Bayesian Analysis 1:121, and scikit-learn's
``weight_concentration_prior_type="dirichlet_process"``).

Sticks v_k ~ Beta(1, gamma), k = 1..K-1 (v_K = 1); weights w_k = v_k prod_{j<k} (1 - v_j).
The map v -> (w_1..w_{K-1}) is lower triangular with diagonal r_k = prod_{j<k} (1 - v_j)
= sum_{j>=k} w_j (the stick left before break k), so the density of the weights on the
simplex is the Beta densities of the sticks divided by prod_k r_k:

    log p(w) = (K-1) log gamma + (gamma-1) log w_K - sum_{k=2}^{K-1} log r_k

(the generalised Dirichlet of Connor and Mosimann 1969 with a_k = 1, b_k = gamma). It is
bounded on the simplex iff gamma >= K - 1: below that, emptying the last components
(w_k = eps for k >= 2) raises it as eps^(gamma - K + 1), so there is no MAP.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpyro.distributions as dist
from numpyro.distributions import constraints


def weights_from_sticks(sticks):
    """Weights (..., K) from sticks (..., K-1) in [0, 1]: w_k = v_k prod_{j<k} (1 - v_j),
    w_K = prod_{j<K} (1 - v_j)."""
    log_rest = jnp.cumsum(jnp.log1p(-sticks), axis=-1)  # log r_{k+1}, k = 1..K-1
    log_left = jnp.concatenate([jnp.zeros_like(log_rest[..., :1]), log_rest], axis=-1)
    ones = jnp.ones_like(sticks[..., :1])
    return jnp.concatenate([sticks, ones], axis=-1) * jnp.exp(log_left)


def remaining_stick(weights):
    """r_k = sum_{j>=k} w_j (..., K): the stick left before break k (r_1 = total mass).
    A reverse cumulative sum, so the small tail masses keep their relative precision."""
    return jnp.flip(jnp.cumsum(jnp.flip(weights, -1), axis=-1), -1)


def sticks_from_weights(weights):
    """Sticks (..., K-1) from weights (..., K), the inverse of `weights_from_sticks`:
    v_k = w_k / r_k (0 where no stick is left)."""
    rest = remaining_stick(weights)[..., :-1]
    tiny = jnp.finfo(weights.dtype).tiny
    return jnp.clip(weights[..., :-1] / jnp.maximum(rest, tiny), 0.0, 1.0)


def stick_breaking_log_density(weights, concentration):
    """log p(w) (...,) of weights (..., K) under sticks ~ Beta(1, concentration): the
    sticks' Beta log-densities minus log|d w_{1..K-1} / d v| = sum_{k=2}^{K-1} log r_k."""
    k = weights.shape[-1]
    if k == 1:
        return jnp.zeros(weights.shape[:-1], weights.dtype)
    gamma = jnp.asarray(concentration, weights.dtype)
    rest = remaining_stick(weights)
    log_jacobian = jnp.sum(jnp.log(rest[..., 1:-1]), axis=-1)
    # (gamma - 1) log w_K: sum_k log(1 - v_k) telescopes to log w_K; written with xlogy so
    # that gamma = 1 gives 0 at w_K = 0, as Beta(1, 1) does.
    log_last = jax.scipy.special.xlogy(gamma - 1, weights[..., -1])
    return (k - 1) * jnp.log(gamma) + log_last - log_jacobian


class StickBreakingWeights(dist.Distribution):
    """Weights (K,) on the simplex from truncated stick-breaking with Beta(1, concentration)
    sticks. ``sample`` draws the sticks and builds the weights; ``log_prob`` is the density
    of the weights (Jacobian included), so MAP, SVI and NUTS on the ``weights`` site all
    target the same density."""

    arg_constraints = {"concentration": constraints.positive}
    support = constraints.simplex
    reparametrized_params = ["concentration"]
    pytree_data_fields = ("concentration",)
    pytree_aux_fields = ("n_components",)

    def __init__(self, concentration, n_components, *, validate_args=None):
        if jnp.ndim(concentration) != 0:
            raise ValueError("StickBreakingWeights takes a scalar concentration")
        self.concentration = concentration
        self.n_components = int(n_components)
        super().__init__(
            batch_shape=(), event_shape=(self.n_components,), validate_args=validate_args
        )

    def sample(self, key, sample_shape=()):
        gamma = jnp.asarray(self.concentration)
        dtype = gamma.dtype if jnp.issubdtype(gamma.dtype, jnp.floating) else jnp.float32
        shape = tuple(sample_shape) + (self.n_components - 1,)
        sticks = jax.random.beta(key, jnp.ones((), dtype), gamma.astype(dtype), shape, dtype)
        return weights_from_sticks(sticks)

    def log_prob(self, value):
        return stick_breaking_log_density(value, self.concentration)

    @property
    def mean(self):
        # E[v] = 1 / (1 + gamma) and independent sticks: E[w_k] = gamma^(k-1) / (1+gamma)^k.
        gamma = jnp.asarray(self.concentration)
        sticks = jnp.full((self.n_components - 1,), 1.0 / (1.0 + gamma))
        return weights_from_sticks(sticks)
