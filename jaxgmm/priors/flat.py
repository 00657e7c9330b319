"""``flat``: the improper uniform prior (log density 0) on every parameter, for
maximum-likelihood equivalence checks: MAP under it is the maximum-likelihood estimate,
so EM (its M-step is the ML one), gradient MAP and SVI with AutoDelta all find the ML fit.
The posterior it implies for NUTS or a stochastic SVI guide is improper (a component can
collapse onto one point); use a proper prior there.

Sites: ``weights`` (K,) on the simplex; ``means`` (K, D); ``precision_cholesky``: the
transposed precision Cholesky (lower triangular, positive diagonal) for full (K, D, D) and
tied (D, D), the precision square roots (prec_chol itself) for diag (K, D) and spherical (K,).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax.numpy as jnp
import numpyro
from numpyro.distributions import ImproperUniform, constraints

from jaxgmm.model.covariance import get_family
from jaxgmm.model.params import GMMParams
from jaxgmm.model.stats import ml_params_from_stats
from jaxgmm.priors._base import ALL_COVARIANCE_TYPES, Prior


@dataclasses.dataclass(frozen=True)
class FlatPrior(Prior):
    """Improper flat prior; no hyperparameters."""

    name: ClassVar[str] = "flat"
    covariance_types: ClassVar[tuple] = ALL_COVARIANCE_TYPES

    def sample(self, spec, n_features, dtype):
        self.check(spec, n_features)
        k, cov_type = spec.n_components, spec.covariance_type
        weights = numpyro.sample("weights", ImproperUniform(constraints.simplex, (), (k,)))
        means = numpyro.sample("means", ImproperUniform(constraints.real, (), (k, n_features)))
        shape = get_family(cov_type).prec_chol_shape(k, n_features)
        if cov_type == "full":
            fn = ImproperUniform(constraints.lower_cholesky, shape[:1], shape[1:]).to_event(1)
        elif cov_type == "tied":
            fn = ImproperUniform(constraints.lower_cholesky, (), shape)
        else:
            fn = ImproperUniform(constraints.positive, (), shape)
        site = numpyro.sample("precision_cholesky", fn)
        prec_chol = jnp.swapaxes(site, -1, -2) if cov_type in ("full", "tied") else site
        return GMMParams(weights=weights, means=means, prec_chol=prec_chol)

    def site_values(self, params, spec):
        site = params.prec_chol
        if spec.covariance_type in ("full", "tied"):
            site = jnp.swapaxes(site, -1, -2)
        return {"weights": params.weights, "means": params.means, "precision_cholesky": site}

    def log_density(self, params, spec):
        self.check(spec, params.means.shape[-1])
        return jnp.zeros((), params.means.dtype)

    def em_m_step(self, stats, spec):
        """MAP under a flat density is maximum likelihood: the ML M-step."""
        return ml_params_from_stats(stats, spec)
