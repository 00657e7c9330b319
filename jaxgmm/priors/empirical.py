"""Empirical-Bayes scales for prior defaults: the pooled within-cluster covariance of the
data under a deterministic k-means partition.

A prior on the component covariances centred on the covariance of the *whole* data (as
mclust's regularisation default, data covariance / K^(2/D)) mixes the between-cluster
scatter into every component's prior scale: on iris the petal variances come out 7-9
times the within-species ones and a correlation changes sign. That is harmless for a MAP
estimate (the prior's weight kappa = 0.01, nu = D + 2 is small beside 50 observations per
component) but it reshapes the posterior NUTS explores (see docs/priors.md). The pooled
within-cluster covariance is the scale of one component, estimated from the data: an
empirical-Bayes choice (the data are used twice), in the spirit of Richardson and Green
(1997, JRSS B 59:731), who set their hyperprior's scale from the data range.

The partition is k-means (Lloyd's algorithm) on the standardised data from a fixed set of
deterministic starts (quantiles of the first principal component, and k-means++ from a
fixed NumPy seed), keeping the lowest within-cluster sum of squares: the same data always
give the same scale, and rescaling a feature rescales its variance and nothing else.
"""

from __future__ import annotations

import numpy as np

from jaxgmm.priors._base import DATA_DEFAULT_FLOOR, data_mean_std_cov

#: Rows the k-means partition is computed from (every n // MAX_ROWS-th row beyond it);
#: the covariance is then pooled over all rows.
MAX_ROWS = 20_000
_SEEDED_STARTS = 4
_MAX_LLOYD_ITERATIONS = 200


def within_cluster_covariance(x, n_components):
    """Pooled within-cluster covariance (D, D) of ``x`` (array of shape (n_samples,
    n_features)) under a deterministic k-means partition into ``n_components`` clusters:
    sum_k sum_{n in k} (x_n - c_k)(x_n - c_k)^T / n_samples, in float64 NumPy.

    Eigenvalues are floored as `jaxgmm.priors.data_mean_std_cov` floors the data
    covariance (``DATA_DEFAULT_FLOOR`` times the data's mean variance), so the result is
    positive definite whenever some feature varies; ValueError when none does.
    """
    _, std, cov = data_mean_std_cov(x)  # checks the shape and the spread
    x = np.asarray(x, dtype=np.float64)
    k = int(n_components)
    if k < 1:
        raise ValueError(f"n_components must be >= 1, got {n_components!r}")
    if k == 1:
        return cov
    labels = kmeans_labels(x, k)
    centres = np.stack(
        [x[labels == j].mean(axis=0) if np.any(labels == j) else x.mean(axis=0) for j in range(k)]
    )
    resid = x - centres[labels]
    within = resid.T @ resid / x.shape[0]
    floor = DATA_DEFAULT_FLOOR * float(np.mean(std**2))
    eigenvalues, vectors = np.linalg.eigh((within + within.T) / 2)
    if eigenvalues[0] >= floor:
        return (within + within.T) / 2
    floored = (vectors * np.maximum(eigenvalues, floor)) @ vectors.T
    return (floored + floored.T) / 2


def kmeans_labels(x, n_components):
    """Cluster labels (n_samples,) of a deterministic k-means of ``x`` (n_samples,
    n_features) after standardising each feature; see the module docstring."""
    x = np.asarray(x, dtype=np.float64)
    std = x.std(axis=0)
    z = (x - x.mean(axis=0)) / np.where(std > 0, std, 1.0)
    stride = max(1, -(-z.shape[0] // MAX_ROWS))
    fit_rows = z[::stride]
    best_inertia, best_centres = np.inf, None
    for centres in _starts(fit_rows, n_components):
        centres, inertia = _lloyd(fit_rows, centres)
        if inertia < best_inertia:
            best_inertia, best_centres = inertia, centres
    return _assign(z, best_centres)[0]


def _starts(z, k):
    # Quantiles of the first principal component: a start that needs no randomness and
    # finds the elongated splits k-means++ can miss; then k-means++ (Arthur and
    # Vassilvitskii 2007) from a fixed seed.
    _, _, vt = np.linalg.svd(z - z.mean(axis=0), full_matrices=False)
    order = np.argsort(z @ vt[0], kind="stable")
    groups = np.array_split(order, k)
    yield np.stack([z[g].mean(axis=0) for g in groups])
    rng = np.random.default_rng(0)
    for _ in range(_SEEDED_STARTS):
        centres = [z[rng.integers(z.shape[0])]]
        for _ in range(1, k):
            d2 = np.min(((z[:, None, :] - np.asarray(centres)[None]) ** 2).sum(-1), axis=1)
            total = d2.sum()
            if not total > 0:  # fewer distinct points than clusters
                centres.append(z[rng.integers(z.shape[0])])
                continue
            centres.append(z[rng.choice(z.shape[0], p=d2 / total)])
        yield np.stack(centres)


def _assign(z, centres):
    d2 = ((z[:, None, :] - centres[None]) ** 2).sum(-1)
    labels = np.argmin(d2, axis=1)
    return labels, float(d2[np.arange(z.shape[0]), labels].sum())


def _lloyd(z, centres):
    centres = np.array(centres, dtype=np.float64)
    labels, inertia = _assign(z, centres)
    for _ in range(_MAX_LLOYD_ITERATIONS):
        for j in range(centres.shape[0]):
            members = labels == j
            if np.any(members):  # an empty cluster keeps its centre
                centres[j] = z[members].mean(axis=0)
        new_labels, inertia = _assign(z, centres)
        if np.array_equal(new_labels, labels):
            break
        labels = new_labels
    return centres, inertia
