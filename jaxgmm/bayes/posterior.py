"""Posterior draws of `GMMParams`: label switching (relabelling draws to a reference by
Stephens' KL algorithm on allocation probabilities, or by matching means), summaries with NumPyro's r-hat and ESS, plug-in and posterior
predictive log-likelihoods, WAIC.

Draws are `GMMParams` whose leaves carry leading draw axes: (n_chains, n_draws, ...) for
summaries (r-hat needs chains), any leading shape for predictive densities.
"""

from __future__ import annotations

import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp
from numpyro.diagnostics import effective_sample_size, split_gelman_rubin

from jaxgmm.model.covariance import get_family
from jaxgmm.model.density import log_prob, mean_log_likelihood, weighted_log_prob
from jaxgmm.model.params import GMMParams, covariances, params_from_covariances


def linear_assignment(cost):
    """Minimum-cost perfect matching of a square cost matrix (the Hungarian algorithm,
    Kuhn 1955, in the O(n^3) potentials form of Jonker and Volgenant 1987).

    Args:
        cost: array of shape (n, n).

    Returns:
        (n,) int array ``col`` such that row i is matched to column ``col[i]``.
    """
    cost = np.asarray(cost, dtype=np.float64)
    if cost.ndim != 2 or cost.shape[0] != cost.shape[1]:
        raise ValueError(f"cost must be a square matrix, got shape {cost.shape}")
    if not np.all(np.isfinite(cost)):
        raise ValueError("cost must be finite")
    n = cost.shape[0]
    u = np.zeros(n + 1)
    v = np.zeros(n + 1)
    row_of_col = np.zeros(n + 1, dtype=int)  # 1-based row matched to each column, 0 = none
    way = np.zeros(n + 1, dtype=int)
    for i in range(1, n + 1):
        row_of_col[0] = i
        j0 = 0
        minv = np.full(n + 1, np.inf)
        used = np.zeros(n + 1, dtype=bool)
        while True:
            used[j0] = True
            i0 = row_of_col[j0]
            free = ~used[1:]
            reduced = cost[i0 - 1] - u[i0] - v[1:]
            better = free & (reduced < minv[1:])
            minv[1:][better] = reduced[better]
            way[1:][better] = j0
            candidates = np.where(free, minv[1:], np.inf)
            j1 = int(np.argmin(candidates)) + 1
            delta = candidates[j1 - 1]
            u[row_of_col[used]] += delta
            v[used] -= delta
            minv[~used] -= delta
            j0 = j1
            if row_of_col[j0] == 0:
                break
        while j0:
            j1 = way[j0]
            row_of_col[j0] = row_of_col[j1]
            j0 = j1
    col = np.empty(n, dtype=int)
    col[row_of_col[1:] - 1] = np.arange(n)
    return col


#: Relabelling methods of `relabel`: ``"stephens"`` (Stephens 2000, all parameters through
#: the allocation probabilities; needs the data) and ``"means"`` (means only).
RELABEL_METHODS = ("stephens", "means")

# Stephens' relabelling uses at most this many data rows (evenly strided): the allocation
# probabilities of S draws take S * rows * K floats.
STEPHENS_MAX_ROWS = 2000


def relabel(draws, reference, spec, scale=None, *, method="means", x=None, max_iter=100):
    """Undo label switching: permute each draw's components to match ``reference``.

    ``method="means"``: the cost of matching draw component k to reference component j is
    the squared distance between their means, each feature divided by ``scale`` (default:
    the spread of the reference means per feature, or 1). Components with (nearly) equal
    means are then labelled at random whatever their covariances and weights.

    ``method="stephens"``: Stephens' (2000, JRSS B 62:795, algorithm 2) Kullback-Leibler
    relabelling on the allocation probabilities p_nk(draw) = P(z_n = k | x_n, draw), which
    depend on every parameter: starting from Q = the reference's allocation probabilities,
    repeat (a) give each draw the permutation minimising sum_n sum_k p log(p / Q) (an
    assignment problem per draw), (b) Q = the mean of the permuted p, until no permutation
    changes (each pass lowers the total KL, so it stops). Needs ``x``; at most
    `STEPHENS_MAX_ROWS` rows of it are used (evenly strided).

    ``prec_chol`` is permuted by the family's ``permute_components`` (``tied``'s is shared
    and stays as it is).

    Args:
        draws: `GMMParams` with leading draw axes (..., K, ...).
        reference: `GMMParams` (one solution, e.g. the EM fit).
        spec: `GMMSpec`.
        scale: optional (n_features,) feature scales (``"means"`` only).
        method: one of `RELABEL_METHODS`.
        x: array of shape (n_samples, n_features), the data (``"stephens"``).
        max_iter: most passes of Stephens' iteration.

    Returns:
        ``(relabelled_draws, permutations)``; permutations has shape (..., K) with
        ``relabelled.means[..., j, :] = draws.means[..., permutations[..., j], :]``.
    """
    if method not in RELABEL_METHODS:
        raise ValueError(f"relabel method must be one of {list(RELABEL_METHODS)}, got {method!r}")
    means = np.asarray(draws.means)
    lead = means.shape[:-2]
    k = means.shape[-2]
    if method == "means":
        perms = _means_permutations(means.reshape((-1,) + means.shape[-2:]), reference, scale)
    else:
        if x is None:
            raise ValueError("relabel(method='stephens') needs x, the data the draws fit")
        dtype = jax.dtypes.canonicalize_dtype(means.dtype)
        rows = _strided_rows(x, means.shape[-1], dtype, "relabel")
        flat = jax.tree_util.tree_map(
            lambda a: jnp.asarray(a).reshape((-1,) + np.shape(a)[len(lead) :]), draws
        )
        probs = np.asarray(_allocation_probabilities(rows, flat, spec), np.float64)
        ref = jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), reference)
        ref_probs = np.asarray(jax.nn.softmax(weighted_log_prob(rows, ref, spec), axis=-1))
        perms = _stephens_permutations(probs, ref_probs, max_iter)
    perms = perms.reshape(lead + (k,))

    def take(leaf):
        leaf = np.asarray(leaf)
        index = perms.reshape(perms.shape + (1,) * (leaf.ndim - perms.ndim))
        return np.take_along_axis(leaf, index, axis=len(lead))

    relabelled = GMMParams(
        weights=take(draws.weights),
        means=take(draws.means),
        prec_chol=get_family(spec.covariance_type).permute_components(draws.prec_chol, perms),
    )
    return relabelled, perms


def _means_permutations(flat_means, reference, scale):
    """(S, K) permutations matching (S, K, D) draw means to the reference means."""
    k = flat_means.shape[-2]
    ref = np.asarray(reference.means)
    if scale is None:
        scale = ref.std(axis=0) if k > 1 else np.ones(ref.shape[-1])
        scale = np.where(scale > 0, scale, 1.0)
    flat = flat_means / scale
    cost = np.sum(np.square(ref[None, :, None, :] / scale - flat[:, None, :, :]), axis=-1)
    return np.stack([linear_assignment(c) for c in cost])


@functools.partial(jax.jit, static_argnums=2)
def _allocation_probabilities(x, flat_draws, spec):
    """(S, n, K) P(z_n = k | x_n, draw s) of draws with one leading axis."""
    return jax.lax.map(lambda p: jax.nn.softmax(weighted_log_prob(x, p, spec), axis=-1), flat_draws)


def _strided_rows(x, n_features, dtype, caller):
    """At most `STEPHENS_MAX_ROWS` evenly strided rows of ``x`` (checked), as ``dtype``."""
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[1] != n_features:
        raise ValueError(f"{caller}: x must have shape (n_samples, {n_features}), got {x.shape}")
    stride = -(-x.shape[0] // STEPHENS_MAX_ROWS)
    return jnp.asarray(x[::stride], dtype=dtype)


def allocation_probabilities(x, draws, spec):
    """P(z_n = k | x_n, draw) of every draw: array of shape (..., n_samples, K) for draws
    with leading axes (...) and ``x`` of shape (n_samples, n_features)."""
    lead = np.shape(draws.means)[:-2]
    dtype = jax.dtypes.canonicalize_dtype(np.asarray(draws.means).dtype)
    flat = jax.tree_util.tree_map(
        lambda a: jnp.asarray(a, dtype).reshape((-1,) + np.shape(a)[len(lead) :]), draws
    )
    probs = np.asarray(_allocation_probabilities(jnp.asarray(x, dtype), flat, spec))
    return probs.reshape(lead + probs.shape[1:])


def allocation_distance(x, draws, reference, spec):
    """Label-invariant distance of each draw to ``reference``: the minimum over
    permutations of the draw's components of the mean over points of the total variation
    between its allocation probabilities and the reference's, i.e. the share of the data
    the two allocate differently, in [0, 1]. A component that holds no data (whose mean
    wanders with the prior) adds nothing, unlike a distance between means.

    Args:
        x: array of shape (n_samples, n_features) (at most `STEPHENS_MAX_ROWS` rows used,
            evenly strided).
        draws: `GMMParams` with leading axes (...); reference: one `GMMParams`.
        spec: `GMMSpec`.

    Returns:
        array of shape (...).
    """
    lead = np.shape(draws.means)[:-2]
    dtype = jax.dtypes.canonicalize_dtype(np.asarray(draws.means).dtype)
    rows = _strided_rows(x, np.shape(draws.means)[-1], dtype, "allocation_distance")
    probs = allocation_probabilities(rows, draws, spec)
    probs = probs.reshape((-1,) + probs.shape[-2:])
    ref = jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), reference)
    ref_probs = np.asarray(jax.nn.softmax(weighted_log_prob(rows, ref, spec), axis=-1))
    # TV = 1/2 sum_k |p_k - q_k| is separable over components: an assignment problem.
    cost = 0.5 * np.mean(
        np.abs(probs[:, :, None, :] - ref_probs[None, :, :, None]), axis=1
    )  # (S, j reference, l draw)
    perms = _best_permutations(cost)
    k = cost.shape[-1]
    return (
        cost[np.arange(cost.shape[0])[:, None], np.arange(k)[None, :], perms].sum(-1).reshape(lead)
    )


# Below this many components every permutation is scored at once (K! of them).
_ENUMERATE_MAX_K = 5


def _best_permutations(cost):
    """(S, K) permutations minimising sum_j cost[s, j, perm[j]] for (S, K, K) costs."""
    n_draws, k, _ = cost.shape
    if k <= _ENUMERATE_MAX_K:
        candidates = np.array(list(itertools.permutations(range(k))))  # (M, K)
        totals = cost[:, np.arange(k)[None, :], candidates].sum(axis=-1)  # (S, M)
        return candidates[np.argmin(totals, axis=1)]
    return np.stack([linear_assignment(c) for c in cost])


def _stephens_permutations(probs, ref_probs, max_iter):
    """Stephens' KL relabelling: (S, K) permutations of (S, n, K) allocation probabilities,
    started from Q = ``ref_probs`` (n, K)."""
    tiny = np.finfo(np.float64).tiny
    log_q = np.log(np.maximum(ref_probs, tiny))
    perms = None
    for _ in range(max(1, int(max_iter))):
        # KL(P_perm || Q) = sum P log P - sum_n P[n, perm[j]] log Q[n, j]; the first term
        # does not depend on the permutation.
        cost = -np.einsum("snl,nj->sjl", probs, log_q)
        new = _best_permutations(cost)
        if perms is not None and np.array_equal(new, perms):
            break
        perms = new
        permuted = np.take_along_axis(probs, perms[:, None, :], axis=2)
        log_q = np.log(np.maximum(permuted.mean(axis=0), tiny))
    return perms


def summarize(values):
    """Summary of draws of shape (n_chains, n_draws, ...): dict of arrays of shape (...)
    with ``mean``, ``sd``, ``q05``, ``q95``, ``r_hat`` (split Gelman-Rubin) and ``ess``
    (NumPyro's diagnostics)."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim < 2:
        raise ValueError(f"draws must have shape (n_chains, n_draws, ...), got {values.shape}")
    pooled = values.reshape((-1,) + values.shape[2:])
    return {
        "mean": pooled.mean(axis=0),
        "sd": pooled.std(axis=0, ddof=1),
        "q05": np.quantile(pooled, 0.05, axis=0),
        "q95": np.quantile(pooled, 0.95, axis=0),
        "r_hat": np.asarray(split_gelman_rubin(values)),
        "ess": np.asarray(effective_sample_size(values)),
    }


def summarize_params(draws, spec):
    """Summaries (see `summarize`) of ``weights``, ``means`` and ``covariances`` of
    relabelled draws with leading axes (n_chains, n_draws)."""
    cov = _covariances_of_draws(draws, spec)
    return {
        "weights": summarize(draws.weights),
        "means": summarize(draws.means),
        "covariances": summarize(cov),
    }


def _covariances_of_draws(draws, spec):
    lead = np.asarray(draws.means).shape[:-2]
    prec_chol = jnp.asarray(draws.prec_chol)
    flat = prec_chol.reshape((-1,) + prec_chol.shape[len(lead) :])
    cov = jax.vmap(lambda p: covariances(GMMParams(None, None, p), spec.covariance_type))(flat)
    return np.asarray(cov).reshape(lead + cov.shape[1:])


def posterior_mean_params(draws, spec):
    """`GMMParams` from posterior means of weights, means and covariances (relabelled)."""
    lead = np.asarray(draws.means).shape[:-2]
    axes = tuple(range(len(lead)))
    weights = np.asarray(draws.weights).mean(axis=axes)
    cov = _covariances_of_draws(draws, spec).mean(axis=axes)
    return params_from_covariances(
        weights / weights.sum(), np.asarray(draws.means).mean(axis=axes), cov, spec.covariance_type
    )


@functools.partial(jax.jit, static_argnums=2)
def pointwise_log_likelihood(x, draws, spec):
    """(n_draws_total, n_samples) log p(x_n | params_s), draws flattened."""
    lead = draws.means.ndim - 2
    flat = jax.tree_util.tree_map(lambda a: a.reshape((-1,) + a.shape[lead:]), draws)
    return jax.lax.map(lambda p: log_prob(x, p, spec), flat)


def log_predictive_density(x, draws, spec):
    """Log posterior predictive density per sample of (held-out) ``x``:
    1/N sum_n log (1/S sum_s p(x_n | params_s))."""
    ll = pointwise_log_likelihood(x, draws, spec)
    n_draws = ll.shape[0]
    return float(jnp.mean(logsumexp(ll, axis=0) - math.log(n_draws)))


def waic(x, draws, spec):
    """WAIC (Watanabe 2010; Gelman, Hwang and Vehtari 2014), per sample: returns
    ``(elpd_waic, p_waic)`` with elpd_waic = lppd - p_waic, p_waic = sum_n var_s log p(x_n|s),
    both divided by n_samples."""
    ll = pointwise_log_likelihood(x, draws, spec)
    n_draws, n = ll.shape
    lppd = jnp.sum(logsumexp(ll, axis=0) - math.log(n_draws))
    p_waic = jnp.sum(jnp.var(ll, axis=0, ddof=1))
    return float((lppd - p_waic) / n), float(p_waic / n)


@functools.partial(jax.jit, static_argnums=2)
def draws_mean_log_likelihood(x, draws, spec):
    """Log-likelihood per sample of each draw, shape = the draws' leading axes."""
    lead = draws.means.ndim - 2
    fn = lambda p: mean_log_likelihood(x, p, spec)  # noqa: E731
    for _ in range(lead):
        fn = jax.vmap(fn)
    return fn(draws)
