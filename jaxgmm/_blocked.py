"""Blocked EM statistics: one pass over the samples, block by block, accumulating what
the M-step needs, so that peak memory beyond the data is O(block * K * D + K * D^2).

A block contributes `Moments`: responsibility-weighted counts and first and second
moments *about the current means* mu_k (the E-step's parameters). Centring on mu_k, which
is close to the new means, keeps float32 second moments accurate (an uncentred scatter
loses ~1e-4 nats per sample at 1e6 points); the matrix products run on data shifted by
one reference point c (the mean of the means) and the shift is undone exactly:

    sum_n r_nk (x_n - mu_k)(x_n - mu_k)^T = Z_k^T (x - c) - S1_k (mu_k - c)^T,
    Z_nk = r_nk (x_n - mu_k),   S1_k = sum_n Z_nk.

Moments add over blocks, devices and hosts; `stats_from_moments` turns their sum into the
`SufficientStats` (means and scatter about the new means) that `params_from_stats` takes.
The log-density is the shared `weighted_log_prob`, applied per block.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.scipy.special import logsumexp

from jaxgmm._density import weighted_log_prob
from jaxgmm._em import SufficientStats, _safe_counts


class Moments(NamedTuple):
    """Additive statistics of a set of samples under fixed parameters (sums, not means).

    Attributes:
        log_likelihood: scalar, sum_n log p(x_n | params) (a total).
        nk: (n_components,) sum_n r_nk.
        first: (n_components, n_features) sum_n r_nk (x_n - mu_k).
        second: sum_n r_nk (x_n - mu_k)(x_n - mu_k)^T in the family's scatter shape:
            full (K, D, D), tied (D, D), diag and spherical (K, D) (per-feature squares).
        sum_resp_log_resp: scalar, sum_nk r_nk log r_nk.
        n_samples: scalar, number (or total weight) of samples, in the data's dtype.
    """

    log_likelihood: jax.Array
    nk: jax.Array
    first: jax.Array
    second: jax.Array
    sum_resp_log_resp: jax.Array
    n_samples: jax.Array


def _second_full(resp, x, means):
    center = jnp.mean(means, axis=0)
    xs, ms = x - center, means - center
    first = resp.T @ xs - jnp.sum(resp, axis=0)[:, None] * ms
    # Z (K, D, B) = r_nk (x_n - mu_k): the one block-sized operand, laid out so the
    # scatter is a plain (K*D, B) @ (B, D) product (about 2x faster on XLA:CPU than
    # contracting the leading axis of a (B, K*D) array).
    z = resp.T[:, None, :] * (xs.T[None, :, :] - ms[:, :, None])
    cross = (z.reshape(-1, x.shape[0]) @ xs).reshape(means.shape + means.shape[-1:])
    return first, cross - first[:, :, None] * ms[:, None, :]


def _second_tied(resp, x, means):
    center = jnp.mean(means, axis=0)
    xs, ms = x - center, means - center
    first = resp.T @ xs - jnp.sum(resp, axis=0)[:, None] * ms
    z = xs * jnp.sum(resp, axis=1, keepdims=True) - resp @ ms  # sum_k r_nk (x_n - mu_k)
    return first, z.T @ xs - first.T @ ms


def _second_diag(resp, x, means):
    # Direct differences (fused by XLA into one pass over the block): the expansion
    # r^T x^2 - 2 mu r^T x + nk mu^2 cancels catastrophically for tiny variances.
    diff = x[:, None, :] - means
    first = jnp.einsum("nk,nkd->kd", resp, diff)
    return first, jnp.einsum("nk,nkd->kd", resp, jnp.square(diff))


_SECOND_MOMENTS = {
    "full": _second_full,
    "tied": _second_tied,
    "diag": _second_diag,
    "spherical": _second_diag,
}


def block_moments(x, params, spec, sample_weight=None):
    """`Moments` of one block of samples under ``params``.

    Args:
        x: array of shape (n_samples, n_features).
        params: `GMMParams` (the E-step's parameters; moments are about their means).
        spec: `GMMSpec`.
        sample_weight: optional (n_samples,) non-negative weights (0 masks padding rows).
    """
    wlp = weighted_log_prob(x, params, spec)
    log_norm = logsumexp(wlp, axis=1)
    log_resp = wlp - log_norm[:, None]
    resp = jnp.exp(log_resp)
    resp_log_resp = jnp.where(resp > 0, resp * log_resp, 0.0)
    if sample_weight is None:
        n_samples = jnp.asarray(x.shape[0], x.dtype)
    else:
        sample_weight = sample_weight.astype(x.dtype)
        resp = resp * sample_weight[:, None]
        resp_log_resp = resp_log_resp * sample_weight[:, None]
        log_norm = log_norm * sample_weight
        n_samples = jnp.sum(sample_weight)
    first, second = _SECOND_MOMENTS[spec.covariance_type](resp, x, params.means)
    return Moments(
        log_likelihood=jnp.sum(log_norm),
        nk=jnp.sum(resp, axis=0),
        first=first,
        second=second,
        sum_resp_log_resp=jnp.sum(resp_log_resp),
        n_samples=n_samples,
    )


def add_moments(a, b):
    """Sum of two `Moments` (of disjoint sets of samples, same parameters)."""
    return jax.tree_util.tree_map(jnp.add, a, b)


def default_block_size(n_samples, n_components, n_features):
    """Samples per block: about 2^20 elements of (block, K, D + 1) work arrays (4 MiB
    in float32, within a CPU's L2/L3 cache), a power of two in [256, 65536], and never
    more than n_samples."""
    target = 2**20 / (n_components * (n_features + 1))
    size = 2 ** int(round(math.log2(max(target, 1.0))))
    return int(max(1, min(n_samples, max(256, min(65536, size)))))


def sum_over_blocks(block_fn, arrays, block_size):
    """Sum (a pytree sum) of ``block_fn(*row_blocks)`` over consecutive row blocks of
    ``arrays`` (all with the same leading length), under `lax.fori_loop`."""
    n_samples = arrays[0].shape[0]
    block_size = int(min(block_size, n_samples))
    n_blocks, tail = divmod(n_samples, block_size)

    def body(i, total):
        blocks = [lax.dynamic_slice_in_dim(a, i * block_size, block_size, axis=0) for a in arrays]
        return add_moments(total, block_fn(*blocks))

    total = block_fn(*[a[:block_size] for a in arrays])
    if n_blocks > 1:
        total = lax.fori_loop(1, n_blocks, body, total)
    if tail:
        total = add_moments(total, block_fn(*[a[n_blocks * block_size :] for a in arrays]))
    return total


def accumulate_moments(x, params, spec, block_size: int | None = None):
    """`Moments` of all of ``x`` (in memory), computed block by block under
    `lax.fori_loop`, so no (n_samples, K, D) array is ever formed.

    Args:
        x: array of shape (n_samples, n_features).
        params: `GMMParams`.
        spec: `GMMSpec`.
        block_size: samples per block (default `default_block_size`).
    """
    n_samples, n_features = x.shape
    if block_size is None:
        block_size = default_block_size(n_samples, spec.n_components, n_features)
    return sum_over_blocks(lambda xb: block_moments(xb, params, spec), [x], block_size)


def scatter_about(x, resp, means, spec, block_size: int | None = None):
    """Family-shaped scatter sum_n r_nk (x_n - m_k)(x_n - m_k)^T about given ``means``
    for given responsibilities ``resp`` (n_samples, n_components), block by block."""
    if block_size is None:
        block_size = default_block_size(x.shape[0], spec.n_components, x.shape[1])
    second = _SECOND_MOMENTS[spec.covariance_type]
    scatter = sum_over_blocks(lambda xb, rb: second(rb, xb, means)[1], [x, resp], block_size)
    if spec.covariance_type in ("full", "tied"):
        scatter = 0.5 * (scatter + jnp.swapaxes(scatter, -1, -2))
    return scatter


def stats_from_moments(moments, params, spec):
    """``(log_likelihood per sample, SufficientStats)`` from summed `Moments`.

    The new means are sum_n r_nk x_n / (nk + 10 eps) (scikit-learn's estimate, written as
    mu_k + correction); the scatter is re-centred on them exactly.
    """
    nk = moments.nk
    mu = params.means
    new_means = (nk[:, None] * mu + moments.first) / _safe_counts(nk)[:, None]
    delta = new_means - mu
    first = moments.first
    if spec.covariance_type in ("full", "tied"):
        second = 0.5 * (moments.second + jnp.swapaxes(moments.second, -1, -2))
        # sum r (x - m)(x - m)^T = S2 - S1 d^T - d S1^T + nk d d^T with d = m - mu.
        cross = first[:, :, None] * delta[:, None, :]
        correction = (
            cross + jnp.swapaxes(cross, -1, -2) - nk[:, None, None] * delta[:, :, None] * delta[:, None, :]
        )
        if spec.covariance_type == "tied":
            correction = jnp.sum(correction, axis=0)
        scatter = second - correction
    else:
        scatter = moments.second - 2.0 * first * delta + nk[:, None] * jnp.square(delta)
        scatter = jnp.maximum(scatter, 0.0)  # rounding only; it is a sum of squares
    stats = SufficientStats(
        nk=nk,
        means=new_means,
        scatter=scatter,
        sum_resp_log_resp=moments.sum_resp_log_resp,
        n_samples=moments.n_samples,
    )
    return moments.log_likelihood / moments.n_samples, stats
