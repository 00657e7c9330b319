"""``sparse_dirichlet``: the conjugate prior with a small symmetric Dirichlet
concentration on the weights (a "sparse finite mixture", Malsiner-Walli,
Fruhwirth-Schnatter and Grun 2016, Stat. Comput. 26:303; Rousseau and Mengersen 2011 show
that alpha < d/2, d the parameters per component, makes surplus components empty out in
the posterior). Fit K larger than needed and read off the occupied components.

Same sites and hyperparameters as ``conjugate``; only the default weight_concentration
differs (0.01). For alpha < 1 the posterior density is unbounded as a weight goes to 0,
so there is no MAP: EM and AutoDelta are refused/meaningless; use SVI with a stochastic
guide (auto_normal, auto_multivariate_normal) or NUTS.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from jaxgmm.priors.conjugate import ConjugatePrior


@dataclasses.dataclass(frozen=True)
class SparseDirichletPrior(ConjugatePrior):
    """`ConjugatePrior` with weight_concentration defaulting to 0.01."""

    name: ClassVar[str] = "sparse_dirichlet"

    weight_concentration: float = 0.01
