import numpy as np
import pytest

from jaxgmm import GMMSpec
from jaxgmm.model import COVARIANCE_FAMILIES


def test_spec_is_frozen_and_hashable():
    spec = GMMSpec(3, "diag", 1e-4)
    assert hash(spec) == hash(GMMSpec(3, "diag", 1e-4))
    with pytest.raises(AttributeError):
        spec.n_components = 2


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n_components": 0}, "n_components"),
        ({"n_components": 2.5}, "n_components"),
        ({"n_components": True}, "n_components"),
        ({"n_components": 2, "covariance_type": "ful"}, "covariance_type.*'full'"),
        ({"n_components": 2, "reg_covar": -1e-12}, "reg_covar"),
        ({"n_components": 2, "reg_covar": float("nan")}, "reg_covar"),
        ({"n_components": 2, "reg_covar": -1.0}, "reg_covar"),
        ({"n_components": 2, "reg_covar": "x"}, "reg_covar"),
        ({"n_components": 2, "reg_covar": True}, "reg_covar"),
        ({"n_components": np.bool_(True)}, "n_components"),
        ({"n_components": 2, "reg_covar": float("inf")}, "reg_covar"),
        ({"n_components": 2, "prior": {"name": "x"}}, "prior.*hashable"),
    ],
)
def test_spec_validation_names_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GMMSpec(**kwargs)


def test_every_registered_family_is_a_valid_spec():
    for name in COVARIANCE_FAMILIES:
        assert GMMSpec(2, name).covariance_type == name


@pytest.mark.parametrize("n", [np.int64(3), np.int32(3), np.uint8(3)])
def test_numpy_integers_are_accepted_as_plain_ints(n):
    """Issue 16 defect 14: GMMSpec rejected np.int64(3), which the estimator accepts."""
    spec = GMMSpec(n, "diag")
    assert type(spec.n_components) is int
    assert spec == GMMSpec(3, "diag") and hash(spec) == hash(GMMSpec(3, "diag"))
