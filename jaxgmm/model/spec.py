"""The one model description: `GMMSpec`, shared by every fitter."""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any

import numpy as np

from jaxgmm.model.covariance import COVARIANCE_FAMILIES

# The four built-in families (`COVARIANCE_FAMILIES` may hold more: a registered family
# is a valid ``covariance_type``).
COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")


@dataclasses.dataclass(frozen=True)
class GMMSpec:
    """A Gaussian mixture model, independent of how it is fitted.

    Frozen and hashable, so it can be a static argument of jitted functions.

    Attributes:
        n_components: number of mixture components K (>= 1).
        covariance_type: a key of `jaxgmm.model.COVARIANCE_FAMILIES`: ``"full"``,
            ``"tied"``, ``"diag"``, ``"spherical"`` (scikit-learn's meanings), or a
            registered family.
        reg_covar: non-negative floor added to the diagonal of every covariance estimate,
            as in scikit-learn; must be >= 0 (0: none, as scikit-learn allows; a
            collapsing component then makes the fit non-finite, reported by the fitters).
        prior: ``None`` for maximum likelihood, otherwise a hashable prior object
            (see the prior registry).
    """

    n_components: int
    covariance_type: str = "full"
    reg_covar: float = 1e-6
    prior: Any = None

    def __post_init__(self):
        # Any integer type (np.int64 from a config or a NumPy computation) as the
        # estimator accepts it; bools are not counts.
        if isinstance(self.n_components, (bool, np.bool_)) or not isinstance(
            self.n_components, numbers.Integral
        ):
            raise ValueError(
                f"GMMSpec.n_components must be an int >= 1, got {self.n_components!r}"
            )
        if self.n_components < 1:
            raise ValueError(f"GMMSpec.n_components must be >= 1, got {self.n_components}")
        # A plain int keeps the spec's hash and equality independent of the integer type.
        object.__setattr__(self, "n_components", int(self.n_components))
        if not isinstance(self.covariance_type, str) or (
            self.covariance_type not in COVARIANCE_FAMILIES
        ):
            raise ValueError(
                f"GMMSpec.covariance_type must be one of {list(COVARIANCE_FAMILIES)}, "
                f"got {self.covariance_type!r}"
            )
        if isinstance(self.reg_covar, (bool, np.bool_)):
            raise ValueError(
                f"GMMSpec.reg_covar must be a non-negative float, got {self.reg_covar!r}"
            )
        try:
            reg = float(self.reg_covar)
        except (TypeError, ValueError):
            raise ValueError(
                f"GMMSpec.reg_covar must be a non-negative float, got {self.reg_covar!r}"
            ) from None
        if not reg >= 0 or reg == float("inf"):
            raise ValueError(f"GMMSpec.reg_covar must be a non-negative finite float, got {reg}")
        object.__setattr__(self, "reg_covar", reg)
        try:
            hash(self.prior)
        except TypeError:
            raise ValueError(
                "GMMSpec.prior must be hashable (a frozen prior object or None), "
                f"got {type(self.prior).__name__}"
            ) from None
