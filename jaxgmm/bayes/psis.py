"""Pareto-smoothed importance sampling (PSIS) diagnostics for a set of log importance
weights: the Pareto shape estimate k-hat, the smoothed weights and the effective sample
size.

Following Vehtari, Simpson, Gelman, Yao and Gabry (2024), "Pareto smoothed importance
sampling", JMLR 25(72): a generalised Pareto distribution is fitted to the largest
M = ceil(min(N / 5, 3 sqrt(N))) weights (minus the cutoff, the (M + 1)-th largest) by the
empirical-Bayes estimate of Zhang and Stephens (2009), with the paper's weak prior pulling
k towards 0.5 (weight 10 pseudo-observations); the tail is then replaced by the fitted
distribution's expected order statistics, truncated at the largest raw weight. The
arithmetic follows ArviZ's ``psislw`` (the tests compare with it), in NumPy: these are
host-side post-processing of a few thousand numbers, not traced code.

Reading k-hat: below ``khat_threshold(N)`` (0.7 for N >= 2200; lower for fewer draws) the
importance-sampling estimate is usable and its error falls at the usual rate; above 0.7 the
variance of the weights is so large (infinite for k >= 0.5 in the limit, practically
unusable above 0.7) that the estimate, and any standard error computed from the same
weights, is unreliable.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import logsumexp

# The weak prior of Vehtari et al. (2024, section 3.1) on the GPD shape: 10 pseudo-samples at
# k = 0.5 (ArviZ's prior_k), and Zhang and Stephens' prior scale for the b grid (prior_bs).
_PRIOR_K_WEIGHT = 10
_PRIOR_K = 0.5
_PRIOR_BS = 3


def _check_log_weights(log_weights, name="log_weights"):
    lw = np.asarray(log_weights, dtype=np.float64)
    if lw.ndim != 1 or lw.size < 2:
        raise ValueError(f"{name} must be a 1-D array of at least 2 values, got shape {lw.shape}")
    if np.isnan(lw).any() or np.isposinf(lw).any():
        raise ValueError(f"{name} must not contain NaN or +inf (a weight of 0 is -inf)")
    if not np.isfinite(lw).any():
        raise ValueError(f"{name}: every weight is 0 (all -inf)")
    return lw


def tail_length(n_draws):
    """M = ceil(min(N / 5, 3 sqrt(N))): how many of the largest weights the Pareto fit uses."""
    return int(math.ceil(min(n_draws / 5.0, 3.0 * math.sqrt(n_draws))))


def khat_threshold(n_draws):
    """The k-hat above which an estimate from ``n_draws`` weights is unreliable:
    min(1 - 1 / log10(N), 0.7) (Vehtari et al. 2024, section 3.2.4)."""
    if n_draws <= 10:
        return 0.0
    return min(1.0 - 1.0 / math.log10(n_draws), 0.7)


def _gpd_fit(tail):
    """(k, sigma): Zhang and Stephens' (2009) estimate for the sorted, non-negative ``tail``,
    k shrunk towards 0.5 by the weak prior."""
    n = tail.size
    m_est = 30 + int(math.sqrt(n))
    b = 1.0 - np.sqrt(m_est / (np.arange(1, m_est + 1, dtype=np.float64) - 0.5))
    b /= _PRIOR_BS * tail[int(n / 4 + 0.5) - 1]
    b += 1.0 / tail[-1]
    k = np.log1p(-b[:, None] * tail).mean(axis=1)
    profile = n * (np.log(-(b / k)) - k - 1.0)
    weights = 1.0 / np.exp(profile - profile[:, None]).sum(axis=1)
    keep = weights >= 10 * np.finfo(np.float64).eps
    weights, b = weights[keep], b[keep]
    weights /= weights.sum()
    b_post = np.sum(b * weights)
    k_post = np.log1p(-b_post * tail).mean()
    sigma = -k_post / b_post
    k_post = (n * k_post + _PRIOR_K_WEIGHT * _PRIOR_K) / (n + _PRIOR_K_WEIGHT)
    return float(k_post), float(sigma)


def _gpd_quantile(probs, k, sigma):
    if abs(k) < np.finfo(np.float64).eps:
        return -sigma * np.log1p(-probs)
    return sigma * np.expm1(-k * np.log1p(-probs)) / k


def psis(log_weights):
    """Pareto-smooth ``log_weights``.

    Args:
        log_weights: array of shape (n_draws,), unnormalised log importance weights
            (-inf allowed for a zero weight; NaN and +inf refused).

    Returns:
        (smoothed, k): ``smoothed`` of shape (n_draws,), the smoothed log weights
        normalised to logsumexp 0; ``k`` the Pareto shape estimate (a float; +inf when the
        tail has 4 or fewer distinct positive values to fit, in which case no smoothing is
        done).
    """
    lw = _check_log_weights(log_weights)
    n = lw.size
    x = lw - lw.max()
    order = np.argsort(x)
    cutoff = max(x[order[-tail_length(n) - 1]], np.log(np.finfo(np.float64).tiny))
    (tail_index,) = np.nonzero(x > cutoff)
    k = math.inf
    if tail_index.size > 4:
        tail_order = np.argsort(x[tail_index])
        tail = np.exp(x[tail_index]) - math.exp(cutoff)
        k, sigma = _gpd_fit(tail[tail_order])
        if np.isfinite(k) and sigma > 0:
            probs = np.arange(0.5, tail_index.size) / tail_index.size
            smoothed_tail = np.log(_gpd_quantile(probs, k, sigma) + math.exp(cutoff))
            x[tail_index[tail_order]] = smoothed_tail
            x = np.minimum(x, 0.0)  # no smoothed weight above the largest raw one
    return x - logsumexp(x), k


def pareto_k(log_weights):
    """The Pareto shape estimate k-hat of ``log_weights`` (array of shape (n_draws,)),
    a float; see the module docstring for how to read it."""
    return psis(log_weights)[1]


def importance_ess(log_weights):
    """Effective sample size (sum w)^2 / sum w^2 of the (raw, unsmoothed) weights
    exp(``log_weights``), array of shape (n_draws,); a float in [1, n_draws]."""
    lw = _check_log_weights(log_weights)
    normalised = lw - logsumexp(lw)
    return float(math.exp(-logsumexp(2.0 * normalised)))


def summarize(log_weights):
    """Diagnostics of ``log_weights`` (array of shape (n_draws,)), as a JSON-able dict:
    ``n_draws``, ``ess`` (raw weights), ``pareto_k``, ``khat_threshold`` and ``reliable``
    (k-hat below the threshold)."""
    lw = _check_log_weights(log_weights)
    k = pareto_k(lw)
    threshold = khat_threshold(lw.size)
    return dict(
        n_draws=int(lw.size),
        ess=importance_ess(lw),
        pareto_k=float(k),
        khat_threshold=threshold,
        reliable=bool(k <= threshold),
    )
