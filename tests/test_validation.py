"""Input checks of `jaxgmm.fit.validation`: bad data and bad initial parameters get a
ValueError naming the argument and what was expected."""

import numpy as np
import pytest

from jaxgmm import GMMSpec, params_from_covariances
from jaxgmm.fit.validation import check_data, check_init_params
from jaxgmm.model import COVARIANCE_TYPES

K, D = 3, 2


def _covariances(covariance_type, rng):
    a = rng.normal(size=(K, D, D))
    full = a @ np.swapaxes(a, -1, -2) + np.eye(D)
    return {
        "full": full,
        "tied": full[0],
        "diag": np.einsum("kdd->kd", full),
        "spherical": np.einsum("kdd->k", full) / D,
    }[covariance_type]


def _params(covariance_type, seed=0):
    rng = np.random.default_rng(seed)
    weights = np.array([0.2, 0.3, 0.5])
    means = rng.normal(size=(K, D))
    return params_from_covariances(
        weights, means, _covariances(covariance_type, rng), covariance_type
    )


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_valid_params_pass_unbatched_and_batched(covariance_type):
    spec = GMMSpec(K, covariance_type)
    params = _params(covariance_type)
    assert check_init_params(params, spec, D) is not None
    batched = type(params)(*(np.stack([np.asarray(a)] * 2) for a in params))
    check_init_params(batched, spec, D)
    check_init_params(tuple(params), spec, D)  # a plain tuple of the three fields


def _replace(params, **fields):
    return params._replace(**{k: np.asarray(v) for k, v in fields.items()})


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
@pytest.mark.parametrize(
    "change, match",
    [
        (lambda p: {"weights": [-0.2, 0.7, 0.5]}, r"init_params\.weights must be >= 0"),
        (lambda p: {"weights": [0.2, 0.3, 0.6]}, r"init_params\.weights must sum to 1"),
        (lambda p: {"weights": [np.nan, 0.5, 0.5]}, r"init_params\.weights must be finite"),
        (lambda p: {"weights": [0.5, 0.5]}, r"init_params\.weights .*shape \(3,\)"),
        (lambda p: {"means": np.zeros((K, D + 1))}, r"init_params\.means .*shape \(3, 2\)"),
        (lambda p: {"means": np.full((K, D), np.inf)}, r"init_params\.means must be finite"),
        (lambda p: {"prec_chol": np.zeros_like(p.prec_chol)}, r"prec_chol .*positive"),
        (lambda p: {"prec_chol": -np.asarray(p.prec_chol)}, r"prec_chol .*positive"),
        (
            lambda p: {"prec_chol": np.full_like(p.prec_chol, np.nan)},
            r"init_params\.prec_chol must be finite",
        ),
        (lambda p: {"prec_chol": np.ones((7,))}, r"init_params\.prec_chol .*must have shape"),
    ],
)
def test_invalid_params_name_the_field(covariance_type, change, match):
    spec = GMMSpec(K, covariance_type)
    params = _params(covariance_type)
    with pytest.raises(ValueError, match=match):
        check_init_params(_replace(params, **change(params)), spec, D)


def test_lower_triangular_factor_is_refused():
    params = _params("full")
    lower = np.swapaxes(np.asarray(params.prec_chol), -1, -2)  # positive diagonal, wrong side
    with pytest.raises(ValueError, match="upper triangular"):
        check_init_params(_replace(params, prec_chol=lower), GMMSpec(K, "full"), D)


def test_wrong_n_features_and_name_in_message():
    params = _params("diag")
    with pytest.raises(ValueError, match=r"^init\.means .*n_features=3"):
        check_init_params(params, GMMSpec(K, "diag"), 3, name="init")


@pytest.mark.parametrize("bad", [["kmeans"], "kmeans", {"weights": 1}, (1, 2)])
def test_not_params_at_all(bad):
    with pytest.raises(ValueError, match="init_params must be GMMParams"):
        check_init_params(bad, GMMSpec(K), D)


def test_params_that_overflow_the_dtype():
    params = _params("diag")
    big = _replace(params, means=np.full((K, D), 1e39))
    check_init_params(big, GMMSpec(K, "diag"), D)  # finite in float64
    with pytest.raises(ValueError, match=r"init_params\.means .*overflow float32"):
        check_init_params(big, GMMSpec(K, "diag"), D, dtype=np.float32)


def test_float64_data_that_overflow_float32_say_so():
    """Defect 4 of issue 16: finite float64 values beyond float32's range became infinite
    in the cast after the finiteness check; the check now runs after the cast."""
    x = np.ones((10, 2))
    x[4, 1] = 1e39
    with pytest.raises(ValueError, match=r"X has values that overflow float32.*row 4, column 1"):
        check_data(x, dtype=np.float32)
    with pytest.raises(ValueError, match="standardise"):
        check_data(x, dtype=np.float32)
    out = check_data(x * 1e-30, dtype=np.float32)  # in range: accepted
    assert np.all(np.isfinite(np.asarray(out)))
