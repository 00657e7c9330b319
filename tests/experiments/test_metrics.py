"""Metrics against the truth (experiments/metrics.py), with scikit-learn and SciPy as oracles."""

import itertools

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score

from experiments.datasets import make_synthetic
from experiments.metrics import adjusted_rand_index, parameter_recovery_error
from jaxgmm.bayes import linear_assignment


def test_ari_matches_sklearn_on_random_labelings():
    rng = np.random.default_rng(0)
    for _ in range(300):
        n = int(rng.integers(1, 40))
        a = rng.integers(0, rng.integers(1, 6), n)
        b = rng.integers(0, rng.integers(1, 6), n)
        assert adjusted_rand_index(a, b) == pytest.approx(adjusted_rand_score(a, b), abs=1e-12)


def test_ari_is_one_for_relabelled_partition():
    labels = np.random.default_rng(1).integers(0, 4, 50)
    renamed = np.array(["d", "a", "c", "b"])[labels]
    assert adjusted_rand_index(labels, renamed) == 1.0


def test_ari_rejects_mismatched_lengths():
    with pytest.raises(ValueError):
        adjusted_rand_index([0, 1], [0, 1, 1])


@pytest.mark.parametrize("n_samples", [0, 1, 2, 3, 10, 57])
def test_ari_matches_sklearn_including_degenerate_labelings(n_samples):
    # Degenerate partitions are the special cases of the pair-counting formula (a zero
    # denominator): all in one cluster, all distinct, and the two against each other.
    rng = np.random.default_rng(n_samples)
    one = np.zeros(n_samples, dtype=int)
    distinct = np.arange(n_samples)
    labelings = [one, distinct, rng.permutation(n_samples)]
    labelings += [rng.integers(0, k, n_samples) for k in (1, 2, 3, max(1, n_samples // 2))]
    for a in labelings:
        for b in labelings:
            assert adjusted_rand_index(a, b) == pytest.approx(
                adjusted_rand_score(a, b), abs=1e-12
            ), (a, b)


def _brute_force_assignment(cost):
    n = cost.shape[0]
    perms = np.array(list(itertools.permutations(range(n))))
    return perms[cost[np.arange(n), perms].sum(axis=1).argmin()]


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 12, 30])
def test_linear_assignment_is_optimal(size):
    rng = np.random.default_rng(size)
    for _ in range(5):
        cost = rng.normal(size=(size, size))
        perm = linear_assignment(cost)
        assert sorted(perm.tolist()) == list(range(size))
        rows, cols = linear_sum_assignment(cost)
        assert cost[np.arange(size), perm].sum() == pytest.approx(cost[rows, cols].sum())
        if size <= 7:
            best = _brute_force_assignment(cost)
            assert cost[np.arange(size), perm].sum() == pytest.approx(
                cost[np.arange(size), best].sum()
            )


def test_linear_assignment_handles_ties():
    perm = linear_assignment(np.zeros((4, 4)))
    assert sorted(perm.tolist()) == [0, 1, 2, 3]


def test_recovery_error_zero_for_permuted_truth():
    truth = make_synthetic(0, n_components=5, n_features=3).true_params
    perm = np.array([3, 0, 4, 1, 2])
    errors = parameter_recovery_error(
        truth, truth["weights"][perm], truth["means"][perm], truth["covariances"][perm]
    )
    assert set(errors) == {"means_rmse", "weights_abs_error", "covariances_frobenius"}
    assert all(value == pytest.approx(0.0, abs=1e-12) for value in errors.values())


def test_recovery_error_values():
    truth = {
        "weights": np.array([0.5, 0.5]),
        "means": np.array([[0.0, 0.0], [10.0, 0.0]]),
        "covariances": np.stack([np.eye(2), np.eye(2)]),
    }
    # Swapped order, means off by 1 in one coordinate, weights off by 0.1, one cov scaled.
    errors = parameter_recovery_error(
        truth,
        np.array([0.4, 0.6]),
        np.array([[11.0, 0.0], [0.0, 1.0]]),
        np.stack([np.eye(2), 2 * np.eye(2)]),
    )
    assert errors["means_rmse"] == pytest.approx(np.sqrt(2 / 4))
    assert errors["weights_abs_error"] == pytest.approx(0.1)
    assert errors["covariances_frobenius"] == pytest.approx(np.sqrt(2) / 2)


@pytest.mark.parametrize(
    "covariance_type, make",
    [
        ("tied", lambda c: c[0]),
        ("diag", lambda c: np.diagonal(c, axis1=1, axis2=2)),
        ("spherical", lambda c: c[:, 0, 0]),
    ],
)
def test_recovery_error_expands_covariance_types(covariance_type, make):
    truth = {
        "weights": np.array([0.3, 0.7]),
        "means": np.array([[0.0, 0.0], [5.0, 5.0]]),
        "covariances": np.stack([2 * np.eye(2), 2 * np.eye(2)]),
    }
    errors = parameter_recovery_error(
        truth, truth["weights"], truth["means"], make(truth["covariances"]), covariance_type
    )
    assert errors["covariances_frobenius"] == pytest.approx(0.0)


def test_recovery_error_rejects_other_component_count():
    truth = make_synthetic(0).true_params
    with pytest.raises(ValueError, match="n_components"):
        parameter_recovery_error(truth, np.ones(2) / 2, np.zeros((2, 2)), np.stack([np.eye(2)] * 2))
