"""Small shared test utilities (data and conversions to scikit-learn's formats)."""

import numpy as np
from sklearn.datasets import load_iris


def iris():
    return load_iris().data.astype(np.float64)


def blobs(seed, n_samples=120, n_features=2, n_components=3, spread=4.0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=spread, size=(n_components, n_features))
    labels = rng.integers(n_components, size=n_samples)
    return centers[labels] + rng.normal(size=(n_samples, n_features)), labels


def precisions_from_prec_chol(prec_chol, covariance_type):
    """Precision matrices from scikit-learn-style precision Cholesky factors (numpy)."""
    p = np.asarray(prec_chol)
    if covariance_type == "full":
        return np.einsum("kij,klj->kil", p, p)
    if covariance_type == "tied":
        return p @ p.T
    return p**2


def dense_covariances(cov, covariance_type, k, d):
    """Any family's covariances as (k, d, d) matrices (NumPy), for independent references."""
    cov = np.asarray(cov)
    if covariance_type == "full":
        return cov
    if covariance_type == "tied":
        return np.broadcast_to(cov, (k, d, d))
    if covariance_type == "diag":
        return np.stack([np.diag(c) for c in cov])
    return cov[:, None, None] * np.eye(d)
