"""Initialisers, all in JAX from a key: each returns initial `GMMParams` by turning
initial responsibilities into parameters with the same M-step EM uses."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from jax import lax

from jaxgmm._cache import BoundedCache
from jaxgmm._registry import lookup
from jaxgmm.model.blocked import scatter_about
from jaxgmm.model.params import GMMParams
from jaxgmm.model.stats import SufficientStats, ml_params_from_stats, safe_counts


def _sq_distances(x, centers):
    """(N, K) squared Euclidean distances as ||x||^2 - 2 x.c + ||c||^2 (as scikit-learn's
    k-means does): one matrix product and no (N, K, D) array, so vmapped restarts stay
    O(N K) in memory. Rounding only matters for near-ties, which k-means does not care
    about; callers pass data centred on its mean to keep the terms small."""
    sq = (
        jnp.sum(jnp.square(x), axis=1)[:, None]
        - 2.0 * (x @ centers.T)
        + jnp.sum(jnp.square(centers), axis=1)[None, :]
    )
    return jnp.maximum(sq, 0.0)


def kmeans_plusplus_indices(key, x, n_clusters):
    """Greedy k-means++ seeding (Arthur and Vassilvitskii 2007; 2 + log K local trials,
    as in scikit-learn). Returns (n_clusters,) indices into x."""
    x = x - jnp.mean(x, axis=0)  # distances are shift-invariant; small terms round better
    n_samples = x.shape[0]
    n_trials = 2 + int(math.log(n_clusters))
    key_first, key_rest = jax.random.split(key)
    first = jax.random.randint(key_first, (), 0, n_samples, dtype=jnp.int32)
    closest = jnp.sum(jnp.square(x - x[first]), axis=-1)
    indices = jnp.zeros((n_clusters,), jnp.int32).at[0].set(first)

    def add_center(i, carry):
        indices, closest = carry
        tiny = jnp.finfo(x.dtype).tiny
        # Sample candidates proportional to squared distance; all-zero distances
        # (duplicated points) fall back to uniform.
        logits = jnp.where(jnp.sum(closest) > 0, jnp.log(jnp.maximum(closest, tiny)), 0.0)
        candidates = jax.random.categorical(
            jax.random.fold_in(key_rest, i), logits, shape=(n_trials,)
        )
        cand_dist = jnp.minimum(closest[None, :], _sq_distances(x, x[candidates]).T)
        best = jnp.argmin(jnp.sum(cand_dist, axis=1))
        return indices.at[i].set(candidates[best].astype(jnp.int32)), cand_dist[best]

    indices, _ = lax.fori_loop(1, n_clusters, add_center, (indices, closest))
    return indices


def kmeans_labels(key, x, n_clusters, max_iter=300, tol=1e-4):
    """Lloyd's k-means from k-means++ seeds. Returns (n_samples,) labels.

    ``tol`` is relative to the mean feature variance (scikit-learn's convention).
    Empty clusters are moved to the points farthest from their centres.
    """
    x = x - jnp.mean(x, axis=0)  # distances are shift-invariant; small terms round better
    centers = x[kmeans_plusplus_indices(key, x, n_clusters)]
    abs_tol = tol * jnp.mean(jnp.var(x, axis=0))

    def lloyd(carry):
        centers, _, it = carry
        dist = _sq_distances(x, centers)
        labels = jnp.argmin(dist, axis=1)
        one_hot = jax.nn.one_hot(labels, n_clusters, dtype=x.dtype)
        counts = jnp.sum(one_hot, axis=0)
        sums = one_hot.T @ x
        # Relocate empty clusters to distinct far-away points.
        _, far = lax.top_k(jnp.min(dist, axis=1), n_clusters)
        empty_rank = jnp.cumsum(counts == 0) - 1
        new = jnp.where(
            (counts > 0)[:, None],
            sums / jnp.maximum(counts, 1)[:, None],
            x[far[jnp.clip(empty_rank, 0, n_clusters - 1)]],
        )
        shift = jnp.sum(jnp.square(new - centers))
        return new, shift, it + 1

    def not_done(carry):
        _, shift, it = carry
        return (shift > abs_tol) & (it < max_iter)

    init = (centers, jnp.asarray(jnp.inf, x.dtype), 0)
    centers, _, _ = lax.while_loop(not_done, lloyd, init)
    return jnp.argmin(_sq_distances(x, centers), axis=1)


def _params_from_resp(x, resp, spec):
    """The maximum-likelihood M-step for given responsibilities, block by block (no
    (N, K, D) array, so vmapped restarts stay small)."""
    nk = jnp.sum(resp, axis=0)
    means = (resp.T @ x) / safe_counts(nk)[:, None]
    stats = SufficientStats(
        nk=nk,
        means=means,
        scatter=scatter_about(x, resp, means, spec),
        sum_resp_log_resp=jnp.zeros((), x.dtype),  # not used by the M-step
        n_samples=jnp.asarray(x.shape[0], x.dtype),
    )
    return ml_params_from_stats(stats, spec)


def init_kmeans(key, x, spec):
    """Hard responsibilities from k-means (k-means++ seeding, then Lloyd)."""
    labels = kmeans_labels(key, x, spec.n_components)
    return _params_from_resp(x, jax.nn.one_hot(labels, spec.n_components, dtype=x.dtype), spec)


def _one_point_per_component(x, indices, spec):
    resp = jnp.zeros((x.shape[0], spec.n_components), x.dtype)
    return _params_from_resp(x, resp.at[indices, jnp.arange(spec.n_components)].set(1.0), spec)


def init_kmeans_plusplus(key, x, spec):
    """Means at k-means++ seeds (scikit-learn's 'k-means++': one point per component,
    so covariances start at the reg_covar floor)."""
    return _one_point_per_component(x, kmeans_plusplus_indices(key, x, spec.n_components), spec)


def init_random(key, x, spec):
    """Uniform random responsibilities, normalised per sample."""
    resp = jax.random.uniform(key, (x.shape[0], spec.n_components), x.dtype)
    return _params_from_resp(x, resp / jnp.sum(resp, axis=1, keepdims=True), spec)


def init_random_from_data(key, x, spec):
    """Means at distinct data points chosen uniformly at random."""
    indices = jax.random.choice(key, x.shape[0], (spec.n_components,), replace=False)
    return _one_point_per_component(x, indices, spec)


INITIALIZERS = {
    "kmeans": init_kmeans,
    "k-means++": init_kmeans_plusplus,
    "random": init_random,
    "random_from_data": init_random_from_data,
}


def get_initializer(name):
    return lookup(INITIALIZERS, name, "init_params")


def initial_params(key, x, spec, method="kmeans", n_init=1):
    """Initial parameters for ``n_init`` restarts, vmapped over split keys.

    Args:
        key: PRNG key.
        x: array of shape (n_samples, n_features).
        spec: `GMMSpec`.
        method: a key of `INITIALIZERS`.
        n_init: number of restarts (>= 1).

    Returns:
        `GMMParams` with a leading (n_init,) axis on every field.
    """
    init = get_initializer(method)
    keys = jax.random.split(key, n_init)
    return _vmapped_init(init, spec)(keys, x)


def resolve_init(key, x, spec, init, n_init=1, *, dtype=None):
    """The initial parameters every ``fit_*`` starts from.

    Args:
        key: PRNG key (used for a named initialiser only).
        x: array of shape (n_samples, n_features) the initialiser runs on (for given
            parameters only its dtype is read; None is allowed with ``dtype``).
        spec: `GMMSpec`.
        init: a key of `INITIALIZERS`, or `GMMParams` (a tuple of its three fields),
            unbatched or with a leading restart axis.
        n_init: restarts for a named initialiser.
        dtype: the dtype given parameters are cast to (default ``x.dtype``).

    Returns:
        `GMMParams`: ``initial_params(key, x, spec, init, n_init)`` (leading (n_init,)
        axis) for a name, else ``init`` cast to ``dtype`` (its own batching kept).
    """
    if isinstance(init, str):
        return initial_params(key, x, spec, init, n_init)
    dtype = x.dtype if dtype is None else dtype
    return jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), GMMParams(*init))


# The jitted, vmapped initialiser per (initialiser, spec); bounded like every cache of
# compiled functions (see `jaxgmm._cache`).
_VMAPPED = BoundedCache(32)
_BUILT_IN = frozenset(INITIALIZERS.values())


def _vmapped_init(init, spec):
    if init in _BUILT_IN:
        # They never read the prior: one compile serves a spec under every prior (EM, MAP,
        # VB and SVI fits of one model, each prior resolved from other data).
        spec = dataclasses.replace(spec, prior=None)
    if (init, spec) not in _VMAPPED:
        _VMAPPED[(init, spec)] = jax.jit(jax.vmap(lambda k, x: init(k, x, spec), in_axes=(0, None)))
    return _VMAPPED[(init, spec)]
