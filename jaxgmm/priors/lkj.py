"""``lkj``: Dirichlet weights, Normal means, and covariances built as
diag(scales) @ LKJ-correlation-Cholesky (Lewandowski, Kurowicka and Joe 2009; the
separation strategy of Barnard, McCulloch and Meng 2000). Not conjugate: MAP by gradient
or SVI (AutoDelta), posterior by SVI or NUTS; EM refuses it.

Sites (the variables the density is over):
  ``weights`` (K,) ~ Dirichlet(weight_concentration)
  ``means`` (K, D) ~ Normal(mean_prior, mean_scale)
  ``scales``: standard deviations, HalfNormal(scale_scale) or HalfCauchy(scale_scale);
      full (K, D), tied (D,), diag (K, D), spherical (K,)
  ``corr_cholesky``: Cholesky factor of the correlation matrix ~ LKJCholesky(D, eta);
      full (K, D, D), tied (D, D); absent for diag / spherical and when D = 1.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

from jaxgmm._registry import lookup
from jaxgmm.model.covariance import get_family
from jaxgmm.model.linalg import cholesky, upper_inverse_transpose
from jaxgmm.model.params import GMMParams
from jaxgmm.priors._base import (
    ALL_COVARIANCE_TYPES,
    Prior,
    data_mean_std_cov,
    freeze,
    vector_hyperparameter,
)

SCALE_DISTRIBUTIONS = {"half_normal": dist.HalfNormal, "half_cauchy": dist.HalfCauchy}


@dataclasses.dataclass(frozen=True)
class LKJPrior(Prior):
    """Dirichlet x Normal x (half-Normal or half-Cauchy scales) x LKJ correlations.

    Attributes:
        weight_concentration: Dirichlet concentration alpha > 0. Default 1.
        eta: LKJ concentration > 0 (1: uniform over correlation matrices; > 1 favours
            weak correlations). Default 2.
        scale_distribution: ``"half_normal"`` (default) or ``"half_cauchy"``.
        mean_prior: (D,) prior mean of the component means; default (data): data mean.
        mean_scale: scalar or (D,) prior standard deviation of the component means;
            default (data): the data's standard deviation per feature.
        scale_scale: scalar or (D,) scale of the half-Normal/half-Cauchy prior on the
            component standard deviations; default (data): data standard deviation per
            feature (spherical: its mean).
    """

    name: ClassVar[str] = "lkj"
    covariance_types: ClassVar[tuple] = ALL_COVARIANCE_TYPES

    weight_concentration: float = 1.0
    eta: float = 2.0
    scale_distribution: str = "half_normal"
    mean_prior: tuple | None = None
    mean_scale: tuple | None = None
    scale_scale: tuple | None = None

    def __post_init__(self):
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, freeze(getattr(self, f.name)))
        self._check_positive("weight_concentration", "eta")
        for name in ("mean_scale", "scale_scale"):
            value = getattr(self, name)
            if value is not None and not np.all(np.isfinite(value) & (np.asarray(value) > 0)):
                raise ValueError(
                    f"prior 'lkj': {name} must be finite and > 0 (a scalar or one per feature), "
                    f"got {value!r}"
                )
        lookup(SCALE_DISTRIBUTIONS, self.scale_distribution, "prior 'lkj': scale_distribution")

    def with_data_defaults(self, x, n_components=None):
        """Fill mean_prior (data mean), mean_scale and scale_scale (data std per feature)."""
        mean, std, _ = data_mean_std_cov(x)
        updates = {
            name: freeze(value)
            for name, value in (("mean_prior", mean), ("mean_scale", std), ("scale_scale", std))
            if getattr(self, name) is None
        }
        return dataclasses.replace(self, **updates) if updates else self

    def sample(self, spec, n_features, dtype):
        self.check(spec, n_features)
        k, cov_type = spec.n_components, spec.covariance_type
        m0 = vector_hyperparameter(self, "mean_prior", n_features, dtype)
        mean_scale = vector_hyperparameter(self, "mean_scale", n_features, dtype)
        scale_scale = vector_hyperparameter(self, "scale_scale", n_features, dtype)
        weights = numpyro.sample(
            "weights", dist.Dirichlet(jnp.full((k,), self.weight_concentration, dtype))
        )
        means = numpyro.sample(
            "means", dist.Normal(m0, jnp.broadcast_to(mean_scale, (k, n_features))).to_event(2)
        )
        scale_shape = {"full": (k, n_features), "tied": (n_features,), "diag": (k, n_features)}
        shape = scale_shape.get(cov_type, (k,))
        if cov_type == "spherical":
            scale_scale = jnp.mean(scale_scale)
        scale_dist = SCALE_DISTRIBUTIONS[self.scale_distribution]
        scales = numpyro.sample(
            "scales", scale_dist(jnp.broadcast_to(scale_scale, shape)).to_event(len(shape))
        )
        if cov_type in ("diag", "spherical"):
            return GMMParams(weights=weights, means=means, prec_chol=1.0 / scales)
        batch = (k,) if cov_type == "full" else ()
        if n_features > 1:
            corr_chol = numpyro.sample(
                "corr_cholesky",
                dist.LKJCholesky(n_features, jnp.asarray(self.eta, dtype))
                .expand(batch)
                .to_event(len(batch)),
            )
        else:
            corr_chol = jnp.ones(batch + (1, 1), dtype)
        chol = scales[..., :, None] * corr_chol
        return GMMParams(weights=weights, means=means, prec_chol=upper_inverse_transpose(chol))

    def site_values(self, params, spec):
        cov_type = spec.covariance_type
        values = {"weights": params.weights, "means": params.means}
        if cov_type in ("diag", "spherical"):
            values["scales"] = 1.0 / params.prec_chol
            return values
        cov = get_family(cov_type).covariance_from_prec_chol(params.prec_chol)
        scales = jnp.sqrt(jnp.diagonal(cov, axis1=-2, axis2=-1))
        values["scales"] = scales
        if params.means.shape[-1] > 1:
            values["corr_cholesky"] = cholesky(cov) / scales[..., :, None]
        return values

