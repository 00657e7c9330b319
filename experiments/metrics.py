"""Metrics that compare a fit with the truth: the adjusted Rand index of two labelings,
component matching (Hungarian, on squared distances between means) and parameter recovery
errors. NumPy in, Python floats out; scikit-learn is the test oracle."""

from __future__ import annotations

import numpy as np

from jaxgmm.bayes import linear_assignment  # the one Hungarian solver (NUTS relabels with it)
from jaxgmm.model import dense_covariances


def adjusted_rand_index(labels_true, labels_pred):
    """Adjusted Rand index of two labelings (Hubert & Arabie 1985), as scikit-learn.

    1.0 for identical partitions (up to renaming), about 0 for independent ones, and
    possibly negative. Computed from the pair confusion matrix, like
    ``sklearn.metrics.adjusted_rand_score``, so the special cases agree.

    Args:
        labels_true, labels_pred: arrays of shape (n_samples,), any hashable labels.

    Returns:
        float.
    """
    labels_true = np.asarray(labels_true)
    labels_pred = np.asarray(labels_pred)
    if labels_true.ndim != 1 or labels_true.shape != labels_pred.shape:
        raise ValueError(
            f"labelings must be 1-D of equal length, got {labels_true.shape} and {labels_pred.shape}"
        )
    n_samples = labels_true.size
    _, true_idx = np.unique(labels_true, return_inverse=True)
    _, pred_idx = np.unique(labels_pred, return_inverse=True)
    contingency = np.zeros((true_idx.max(initial=-1) + 1, pred_idx.max(initial=-1) + 1))
    np.add.at(contingency, (true_idx, pred_idx), 1.0)
    # Ordered-pair counts (Hubert & Arabie; same algebra as sklearn's pair_confusion_matrix).
    sum_squares = (contingency**2).sum()
    together_both = sum_squares - n_samples
    together_pred_only = (contingency * contingency.sum(axis=0)).sum() - sum_squares
    together_true_only = (contingency.T * contingency.sum(axis=1)).sum() - sum_squares
    apart_both = n_samples**2 - together_pred_only - together_true_only - sum_squares
    if together_pred_only == 0 and together_true_only == 0:
        return 1.0
    numerator = 2.0 * (together_both * apart_both - together_true_only * together_pred_only)
    denominator = (together_both + together_true_only) * (together_true_only + apart_both) + (
        together_both + together_pred_only
    ) * (together_pred_only + apart_both)
    return float(numerator / denominator)


def match_components(true_means, means):
    """perm such that estimated component perm[k] is matched to true component k.

    Matching minimises the total squared distance between matched means.

    Args:
        true_means, means: arrays of shape (n_components, n_features).

    Returns:
        int array of shape (n_components,).
    """
    true_means = np.asarray(true_means, dtype=np.float64)
    means = np.asarray(means, dtype=np.float64)
    cost = ((true_means[:, None, :] - means[None, :, :]) ** 2).sum(-1)
    return linear_assignment(cost)


def parameter_recovery_error(true_params, weights, means, covariances, covariance_type="full"):
    """How far estimated mixture parameters are from the true ones.

    Estimated components are first matched to true ones (``match_components``: Hungarian
    algorithm on squared distances between means), since a mixture is only identified up
    to relabelling. Then, over matched pairs:

    - ``means_rmse``: root mean squared error over all n_components * n_features mean
      coordinates.
    - ``weights_abs_error``: mean over components of |weight - true weight|.
    - ``covariances_frobenius``: mean over components of the Frobenius norm of
      (covariance - true covariance), with covariances expanded to full matrices.

    Args:
        true_params: dict with ``weights`` (K,), ``means`` (K, D), ``covariances`` (K, D, D).
        weights: array of shape (K,).
        means: array of shape (K, D).
        covariances: shape by covariance_type as in scikit-learn: full (K, D, D),
            tied (D, D), diag (K, D), spherical (K,).
        covariance_type: "full", "tied", "diag" or "spherical".

    Returns:
        dict of float: means_rmse, weights_abs_error, covariances_frobenius.
    """
    true_weights = np.asarray(true_params["weights"], dtype=np.float64)
    true_means = np.asarray(true_params["means"], dtype=np.float64)
    true_covariances = np.asarray(true_params["covariances"], dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    means = np.asarray(means, dtype=np.float64)
    if means.shape != true_means.shape or weights.shape != true_weights.shape:
        raise ValueError(
            f"estimated means {means.shape} / weights {weights.shape} do not match the true "
            f"{true_means.shape} / {true_weights.shape}; recovery error needs the same "
            f"n_components and n_features"
        )
    n_components, n_features = true_means.shape
    covariances = dense_covariances(
        np.asarray(covariances, dtype=np.float64), covariance_type, n_components, n_features
    )
    if covariances.shape != true_covariances.shape:
        raise ValueError(
            f"covariances expand to shape {covariances.shape}, expected {true_covariances.shape}"
        )
    perm = match_components(true_means, means)
    return {
        "means_rmse": float(np.sqrt(np.mean((means[perm] - true_means) ** 2))),
        "weights_abs_error": float(np.mean(np.abs(weights[perm] - true_weights))),
        "covariances_frobenius": float(
            np.mean(np.linalg.norm(covariances[perm] - true_covariances, axis=(1, 2)))
        ),
    }
