"""Every registered covariance family's methods against NumPy / SciPy references
(the checks live in _family_checks.py, so a new family is covered by registering it)."""

import pytest
from _family_checks import FAMILY_CHECKS

from jaxgmm.model import COVARIANCE_FAMILIES

pytestmark = pytest.mark.numerics


@pytest.mark.parametrize("check", FAMILY_CHECKS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("covariance_type", sorted(COVARIANCE_FAMILIES))
def test_family(covariance_type, check, require_x64):
    check(covariance_type)
