"""``exact``: the exact log evidence of the conjugate prior (Dirichlet weights,
Normal-inverse-Wishart / Normal-inverse-Gamma components) on data small enough to
enumerate every allocation.

log p(X) = log sum_z p(z) prod_k m(X_k), z over all K^N allocations, with p(z) the
Dirichlet-multinomial probability of the allocation and m(X_k) the conjugate marginal
likelihood of the points allocated to component k (1 for an empty component). At K = 1
there is one allocation: the closed form. Host-side NumPy in float64 (it is a reference,
not a fit).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import gammaln, logsumexp, multigammaln

from jaxgmm.bayes.evidence._common import LogEvidence, prepare

#: Most allocations (K^N) the enumeration accepts.
MAX_ALLOCATIONS = 2_000_000
_CHUNK = 1 << 15


def log_marginal_niw(count, total, outer, m0, kappa, nu, psi):
    """log m(X) of points under mean | Sigma ~ N(m0, Sigma / kappa), Sigma ~ IW(nu, psi).

    Args:
        count: (...,) number of points n; ``total``: (..., D) their sum; ``outer``: (..., D, D)
            the sum of x x^T. ``m0`` (D,), ``psi`` (D, D), scalars ``kappa``, ``nu``.

    Returns:
        (...,) log marginal likelihood (Murphy 2007, "Conjugate Bayesian analysis of the
        Gaussian distribution", eq. 266); 0 where count == 0.
    """
    d = m0.shape[0]
    n = np.asarray(count, dtype=np.float64)
    safe = np.maximum(n, 1.0)
    xbar = total / safe[..., None]
    scatter = outer - safe[..., None, None] * xbar[..., :, None] * xbar[..., None, :]
    diff = xbar - m0
    shrink = (kappa * n / (kappa + n))[..., None, None]
    psi_n = psi + scatter + shrink * diff[..., :, None] * diff[..., None, :]
    psi_n = np.where((n > 0)[..., None, None], psi_n, psi)
    _, logdet_n = np.linalg.slogdet(psi_n)
    _, logdet_0 = np.linalg.slogdet(psi)
    nu_n = nu + n
    return (
        -0.5 * n * d * math.log(math.pi)
        + multigammaln_array(nu_n / 2, d)
        - multigammaln(nu / 2, d)
        + 0.5 * nu * logdet_0
        - 0.5 * nu_n * logdet_n
        + 0.5 * d * (math.log(kappa) - np.log(kappa + n))
    )


def log_marginal_nig(count, total, sum_sq, m0, kappa, a, b):
    """log m(X) of points whose D coordinates share one variance s ~ InverseGamma(a, b),
    with means mu_d | s ~ N(m0_d, s / kappa) (D = 1 is `log_marginal_niw` at D = 1).

    Args:
        count: (...,) n; ``total``: (..., D) sums; ``sum_sq``: (..., D) sums of squares;
            ``m0``: (D,); scalars kappa, a, b.
    """
    d = m0.shape[0]
    n = np.asarray(count, dtype=np.float64)
    safe = np.maximum(n, 1.0)
    xbar = total / safe[..., None]
    scatter = np.sum(sum_sq - safe[..., None] * xbar**2, axis=-1)
    shrink = kappa * n / (kappa + n)
    s = np.where(n > 0, scatter + shrink * np.sum((xbar - m0) ** 2, axis=-1), 0.0)
    a_n = a + n * d / 2
    return (
        -0.5 * n * d * math.log(2 * math.pi)
        + 0.5 * d * (math.log(kappa) - np.log(kappa + n))
        + a * math.log(b)
        - gammaln(a)
        + gammaln(a_n)
        - a_n * np.log(b + s / 2)
    )


def multigammaln_array(a, d):
    """log Gamma_d(a) elementwise for an array ``a`` (SciPy's takes a scalar dimension)."""
    a = np.asarray(a, dtype=np.float64)
    j = np.arange(d, dtype=np.float64)
    return 0.25 * d * (d - 1) * math.log(math.pi) + np.sum(gammaln(a[..., None] - j / 2), axis=-1)


def _component_log_marginals(onehot, x, spec, prior):
    """(A, K) log m(X_k) for allocations ``onehot`` (A, N, K) of x (N, D)."""
    d = x.shape[1]
    m0 = np.asarray(prior.mean_prior, dtype=np.float64).reshape(-1)
    m0 = np.broadcast_to(m0, (d,)) if m0.size == 1 else m0
    psi = np.asarray(prior.covariance_prior, dtype=np.float64)
    psi = psi * np.eye(d) if psi.ndim == 0 else (np.diag(psi) if psi.ndim == 1 else psi)
    nu = prior.dof(spec, d)
    kappa = prior.mean_precision
    count = onehot.sum(axis=1)
    total = np.einsum("ank,nd->akd", onehot, x)
    cov_type = spec.covariance_type
    if cov_type in ("full", "tied"):
        outer = np.einsum("ank,nd,ne->akde", onehot, x, x)
        return log_marginal_niw(count, total, outer, m0, kappa, nu, psi)
    sum_sq = np.einsum("ank,nd->akd", onehot, x**2)
    if cov_type == "diag":
        per_dim = [
            log_marginal_nig(
                count,
                total[..., j : j + 1],
                sum_sq[..., j : j + 1],
                m0[j : j + 1],
                kappa,
                nu / 2,
                psi[j, j] / 2,
            )  # fmt: skip
            for j in range(d)
        ]
        return np.sum(per_dim, axis=0)
    return log_marginal_nig(count, total, sum_sq, m0, kappa, nu / 2, np.trace(psi) / (2 * d))


def _log_allocation_probability(counts, weight_prior_type, alpha):
    """(A,) log p(z) of allocation sequences with component counts ``counts`` (A, K), the
    weights integrated out: Dirichlet-multinomial for Dirichlet(alpha) weights; for
    stick-breaking (sticks v_k ~ Beta(1, alpha), k < K) the product over k < K of
    B(1 + n_k, alpha + n_{>k}) / B(1, alpha), n_{>k} the count of later components."""
    n = counts.sum(axis=1)
    k = counts.shape[1]
    if weight_prior_type == "dirichlet_distribution":
        return (
            gammaln(k * alpha)
            - gammaln(k * alpha + n)
            + np.sum(gammaln(alpha + counts) - gammaln(alpha), axis=1)
        )
    later = n[:, None] - np.cumsum(counts, axis=1)  # n_{>k}
    a, b = 1.0 + counts[:, :-1], alpha + later[:, :-1]
    log_beta = gammaln(a) + gammaln(b) - gammaln(a + b)
    return np.sum(log_beta - (gammaln(1.0) + gammaln(alpha) - gammaln(1.0 + alpha)), axis=1)


def check_exact_supported(spec, n_samples):
    """ValueError unless ``spec`` has a conjugate prior (Dirichlet or stick-breaking
    weights) whose components are independent given the allocation, and K^N is at most
    `MAX_ALLOCATIONS`."""
    from jaxgmm.priors.conjugate import ConjugatePrior

    prior, k = spec.prior, spec.n_components
    if type(prior) is not ConjugatePrior:
        raise ValueError(
            "method 'exact' needs the conjugate prior (jaxgmm.priors.ConjugatePrior), got "
            f"prior {getattr(prior, 'name', prior)!r}; use method 'smc' or 'bridge'"
        )
    if spec.covariance_type == "tied" and k > 1:
        raise ValueError(
            "method 'exact' does not support covariance_type='tied' with n_components > 1 "
            "(the shared covariance couples the components); use 'full', 'diag' or "
            "'spherical', or method 'smc' or 'bridge'"
        )
    if k**n_samples > MAX_ALLOCATIONS:
        raise ValueError(
            f"method 'exact' enumerates K^N = {k}^{n_samples} allocations, more than "
            f"{MAX_ALLOCATIONS}; use fewer samples or components, or method 'smc' or 'bridge'"
        )


def log_evidence_exact(key, x, spec) -> LogEvidence:
    """Exact log p(X) (a total, in nats) of a conjugate-prior spec by enumeration.

    Args:
        key: unused (the value is exact); kept for the common signature.
        x: array of shape (n_samples, n_features).
        spec: `GMMSpec` whose prior is a `ConjugatePrior` with Dirichlet or stick-breaking
            weights (``full``, ``diag``, ``spherical``; ``tied`` only at K = 1), K^N at most
            `MAX_ALLOCATIONS`.

    Returns:
        `LogEvidence` with stderr 0; diagnostics: ``n_allocations``.
    """
    del key
    checked, spec = prepare(x, spec)
    check_exact_supported(spec, checked.shape[0])
    # The reference is computed in float64 whatever JAX's precision.
    x = np.asarray(x if np.asarray(x).dtype == np.float64 else checked, dtype=np.float64)
    n, _ = x.shape
    k = spec.n_components
    alpha = spec.prior.weight_concentration
    n_alloc = k**n
    powers = k ** np.arange(n)
    parts = []
    for start in range(0, n_alloc, _CHUNK):
        index = np.arange(start, min(start + _CHUNK, n_alloc))
        z = (index[:, None] // powers) % k  # (A, N) base-K digits
        onehot = (z[:, :, None] == np.arange(k)).astype(np.float64)
        counts = onehot.sum(axis=1)
        log_pz = _log_allocation_probability(counts, spec.prior.weight_prior_type, alpha)
        log_m = _component_log_marginals(onehot, x, spec, spec.prior).sum(axis=1)
        parts.append(logsumexp(log_pz + log_m))
    return LogEvidence(
        estimate=float(logsumexp(parts)), stderr=0.0, method="exact",
        diagnostics={"n_allocations": int(n_alloc)},
    )  # fmt: skip
