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
        ({"n_components": 2, "reg_covar": 0.0}, "reg_covar"),
        ({"n_components": 2, "reg_covar": -1.0}, "reg_covar"),
        ({"n_components": 2, "reg_covar": "x"}, "reg_covar"),
        ({"n_components": 2, "prior": {"name": "x"}}, "prior.*hashable"),
    ],
)
def test_spec_validation_names_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GMMSpec(**kwargs)


def test_every_registered_family_is_a_valid_spec():
    for name in COVARIANCE_FAMILIES:
        assert GMMSpec(2, name).covariance_type == name
