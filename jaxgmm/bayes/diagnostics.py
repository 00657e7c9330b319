"""MCMC convergence diagnostics of Vehtari, Gelman, Simpson, Carpenter and Buerkner (2021),
"Rank-normalization, folding, and localization: an improved R-hat": rank-normalised split
r-hat (the larger of the bulk and the folded, tail, r-hat), bulk ESS and tail ESS (the
smaller of the ESS of the 5% and 95% quantile indicators), as ArviZ computes them
(``az.rhat(method="rank")``, ``az.ess(method="bulk" | "tail")``).

Every function takes draws of shape (n_chains, n_draws, ...) and returns an array of the
trailing shape (...), one value per scalar quantity. NumPy only (no jit): these run once
per fit on a few thousand draws.
"""

from __future__ import annotations

import numpy as np
from scipy.special import ndtri

#: Default thresholds of `converged` (Vehtari et al. 2021, section 4: r-hat below 1.01 and
#: bulk and tail ESS above 100 per chain for 4 chains, i.e. 400).
R_HAT_MAX = 1.01
ESS_MIN = 400.0


def _as_draws(values):
    values = np.asarray(values, dtype=np.float64)
    if values.ndim < 2:
        raise ValueError(f"draws must have shape (n_chains, n_draws, ...), got {values.shape}")
    return values


def _per_scalar(fn, values, min_chains):
    """Apply ``fn`` to each (n_chains, n_draws) slice; NaN when there are fewer than
    ``min_chains`` chains or 4 draws, or the slice is not finite (ArviZ's rules)."""
    values = _as_draws(values)
    n_chains, n_draws = values.shape[:2]
    trailing = values.shape[2:]
    flat = values.reshape(n_chains, n_draws, -1)
    out = np.full(flat.shape[2], np.nan)
    if n_chains >= min_chains and n_draws >= 4:
        for i in range(flat.shape[2]):
            slice_ = flat[:, :, i]
            if np.all(np.isfinite(slice_)):
                out[i] = fn(slice_)
    return out.reshape(trailing)


def _split_chains(draws):
    """(C, S) -> (2C, S // 2): first and last halves as separate chains (the middle draw
    of an odd S is dropped)."""
    half = draws.shape[1] // 2
    return np.concatenate([draws[:, :half], draws[:, draws.shape[1] - half :]], axis=0)


def _average_ranks(values):
    """Ranks 1..n of the flattened values, ties given their average rank."""
    flat = values.ravel()
    order = np.argsort(flat, kind="mergesort")
    sorted_ = flat[order]
    # Runs of equal values share the mean of the ranks they span.
    starts = np.flatnonzero(np.r_[True, sorted_[1:] != sorted_[:-1]])
    ends = np.r_[starts[1:], flat.size]
    run_rank = (starts + ends + 1) / 2.0
    ranks = np.empty(flat.size)
    ranks[order] = np.repeat(run_rank, ends - starts)
    return ranks.reshape(values.shape)


def _z_scale(draws):
    """Rank-normalised draws: Phi^-1((r - 3/8) / (n + 1/4)) (Blom 1958), pooled ranks."""
    return ndtri((_average_ranks(draws) - 0.375) / (draws.size + 0.25))


def _rhat(draws):
    """Classic potential scale reduction of (C, S) draws (Gelman et al. BDA3, 11.4)."""
    n = draws.shape[1]
    within = np.mean(np.var(draws, axis=1, ddof=1))
    between = n * np.var(np.mean(draws, axis=1), ddof=1)
    return float(np.sqrt((between / within + n - 1) / n))


def _autocovariance(draws):
    """(C, S) biased autocovariances at every lag, by FFT."""
    n = draws.shape[1]
    centred = draws - draws.mean(axis=1, keepdims=True)
    m = 1 << (2 * n - 1).bit_length()
    spectrum = np.fft.rfft(centred, n=m, axis=1)
    return np.fft.irfft(spectrum * np.conjugate(spectrum), n=m, axis=1)[:, :n] / n


def _ess(draws):
    """ESS of (C, S) draws by Geyer's initial monotone sequence on the multi-chain
    autocorrelation (Stan's estimator, as ArviZ's ``_ess``)."""
    n_chains, n = draws.shape
    if np.max(draws) - np.min(draws) < np.finfo(np.float64).resolution:
        return float(draws.size)
    acov = _autocovariance(draws)
    mean_var = np.mean(acov[:, 0]) * n / (n - 1.0)
    var_plus = mean_var * (n - 1.0) / n
    if n_chains > 1:
        var_plus += np.var(draws.mean(axis=1), ddof=1)
    rho = np.zeros(n)
    rho_even, rho_odd = 1.0, 1.0 - (mean_var - np.mean(acov[:, 1])) / var_plus
    rho[0], rho[1] = rho_even, rho_odd
    t = 1
    while t < n - 3 and rho_even + rho_odd > 0.0:
        rho_even = 1.0 - (mean_var - np.mean(acov[:, t + 1])) / var_plus
        rho_odd = 1.0 - (mean_var - np.mean(acov[:, t + 2])) / var_plus
        if rho_even + rho_odd >= 0:
            rho[t + 1], rho[t + 2] = rho_even, rho_odd
        t += 2
    max_t = t - 2
    if rho_even > 0:
        rho[max_t + 1] = rho_even
    t = 1
    while t <= max_t - 2:
        if rho[t + 1] + rho[t + 2] > rho[t - 1] + rho[t]:
            rho[t + 1] = rho[t + 2] = (rho[t - 1] + rho[t]) / 2.0
        t += 2
    total = n_chains * n
    tau = -1.0 + 2.0 * np.sum(rho[: max_t + 1]) + np.sum(rho[max_t + 1 : max_t + 2])
    # Antithetic chains can give tau near 0; Stan and ArviZ cap ESS at S log10(S).
    tau = max(tau, 1.0 / np.log10(total))
    return float(total / tau)


def _rhat_rank(draws):
    split = _split_chains(draws)
    bulk = _rhat(_z_scale(split))
    tail = _rhat(_z_scale(np.abs(split - np.median(split))))
    return max(bulk, tail)


def _ess_bulk(draws):
    return _ess(_z_scale(_split_chains(draws)))


def _ess_tail(draws):
    low, high = np.quantile(draws, [0.05, 0.95])
    return min(
        _ess(_split_chains((draws <= low).astype(np.float64))),
        _ess(_split_chains((draws <= high).astype(np.float64))),
    )


def rank_rhat(values):
    """Rank-normalised split r-hat: max of the bulk (rank-normalised) and tail (folded
    about the median, then rank-normalised) split r-hats.

    Args:
        values: draws of shape (n_chains, n_draws, ...), n_chains >= 2.

    Returns:
        array of shape (...); NaN where a quantity has fewer than 4 draws, fewer than 2
        chains or a non-finite draw.
    """
    return _per_scalar(_rhat_rank, values, min_chains=2)


def ess_bulk(values):
    """Bulk ESS: the ESS of the rank-normalised split chains. Shape (n_chains, n_draws,
    ...) -> (...)."""
    return _per_scalar(_ess_bulk, values, min_chains=1)


def ess_tail(values):
    """Tail ESS: min of the ESS of the indicators draw <= q05 and draw <= q95 (pooled
    quantiles), on split chains. Shape (n_chains, n_draws, ...) -> (...)."""
    return _per_scalar(_ess_tail, values, min_chains=1)


def diagnose(values):
    """``{"r_hat", "ess_bulk", "ess_tail"}`` of draws (n_chains, n_draws, ...), each of
    shape (...)."""
    return {"r_hat": rank_rhat(values), "ess_bulk": ess_bulk(values), "ess_tail": ess_tail(values)}


def is_converged(r_hat, ess_bulk_, ess_tail_, *, r_hat_max=R_HAT_MAX, ess_min=ESS_MIN):
    """True when every value passes: r-hat < ``r_hat_max`` and both ESS
    > ``ess_min``. A NaN anywhere (too few chains/draws, non-finite draws) fails."""
    r_hat, bulk, tail = (np.asarray(a, dtype=np.float64) for a in (r_hat, ess_bulk_, ess_tail_))
    with np.errstate(invalid="ignore"):
        return bool(np.all(r_hat < r_hat_max) & np.all(bulk > ess_min) & np.all(tail > ess_min))
