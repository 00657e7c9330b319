"""``conjugate``: Dirichlet weights and a Normal-inverse-Wishart prior on each component's
(mean, covariance), with a closed-form MAP M-step for EM (Fraley and Raftery 2007, J.
Classification 24:155, "Bayesian regularization for normal mixture estimation").

Sites (the variables the density is over):
  ``weights`` (K,) ~ Dirichlet(weight_concentration)
  full:      ``covariances`` (K, D, D) ~ InverseWishart(dof, Psi);
             ``means`` (K, D) | cov ~ N(m0, cov / kappa)
  tied:      ``covariance`` (D, D) ~ InverseWishart(dof, Psi);
             ``means`` (K, D) | cov ~ N(m0, cov / kappa)
  diag:      ``variances`` (K, D) ~ InverseGamma(dof / 2, diag(Psi) / 2);
             ``means`` ~ N(m0, var / kappa)
  spherical: ``variances`` (K,) ~ InverseGamma(dof / 2, tr(Psi) / (2 D));
             ``means`` ~ N(m0, var / kappa I)
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from jax import lax

from jaxgmm.model.covariance import get_family, regularize_covariance
from jaxgmm.model.linalg import cholesky, upper_inverse_transpose
from jaxgmm.model.params import GMMParams
from jaxgmm.priors._base import (
    ALL_COVARIANCE_TYPES,
    Prior,
    data_mean_std_cov,
    freeze,
    matrix_hyperparameter,
    vector_hyperparameter,
)


@dataclasses.dataclass(frozen=True)
class ConjugatePrior(Prior):
    """Dirichlet x Normal-inverse-Wishart (inverse-Gamma for diag/spherical).

    Attributes:
        weight_concentration: Dirichlet concentration alpha (symmetric), > 0; EM's MAP
            step needs alpha >= 1 (for alpha < 1 the posterior density is unbounded at
            empty components). Default 1 (uniform on the simplex).
        mean_prior: m0, shape (n_features,); default (data): the data mean.
        mean_precision: kappa > 0, the prior's weight in pseudo-observations. Default 0.01.
        degrees_of_freedom: nu; default (``None``): D + 2 for full/tied (IW mean = Psi),
            3 for diag/spherical (inverse-Gamma mean = Psi's diagonal / its average).
            Must be > D - 1 (full/tied), > 0 (diag/spherical).
        covariance_prior: Psi: scalar, (D,) diagonal or (D, D); default (data): the data
            covariance / K^(2/D) (Fraley and Raftery's choice: the covariance of one of K
            equal-volume pieces of the data).
    """

    name: ClassVar[str] = "conjugate"
    covariance_types: ClassVar[tuple] = ALL_COVARIANCE_TYPES

    weight_concentration: float = 1.0
    mean_prior: tuple | None = None
    mean_precision: float = 0.01
    degrees_of_freedom: float | None = None
    covariance_prior: tuple | None = None

    def __post_init__(self):
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, freeze(getattr(self, f.name)))
        self._check_positive("weight_concentration", "mean_precision", "degrees_of_freedom")

    # hyperparameters that ``with_data_defaults`` fills; degrees_of_freedom's default
    # depends only on (D, covariance type) and is resolved at use time.
    _data_defaults: ClassVar[tuple] = ("mean_prior", "covariance_prior")

    def check(self, spec, n_features):
        if spec.covariance_type not in self.covariance_types:
            super().check(spec, n_features)
        missing = [n for n in self._data_defaults if getattr(self, n) is None]
        if missing:
            raise ValueError(
                f"prior {self.name!r} has data-dependent hyperparameters {missing} still unset; "
                "call prior.with_data_defaults(x, n_components) (or "
                "jaxgmm.priors.resolve_prior(spec, x)) first, or give them explicitly"
            )
        nu = self.dof(spec, n_features)
        if spec.covariance_type in ("full", "tied") and not nu > n_features - 1:
            raise ValueError(
                f"prior {self.name!r}: degrees_of_freedom must be > n_features - 1 = "
                f"{n_features - 1} for covariance_type={spec.covariance_type!r}, got {nu}"
            )

    def with_data_defaults(self, x, n_components=None):
        """Fill ``mean_prior`` (data mean) and ``covariance_prior`` (data covariance /
        K^(2/D), K = ``n_components``, required when covariance_prior is unset)."""
        mean, _, cov = data_mean_std_cov(x)
        updates = {}
        if self.mean_prior is None:
            updates["mean_prior"] = freeze(mean)
        if self.covariance_prior is None:
            if n_components is None:
                raise ValueError(
                    f"prior {self.name!r}: the default covariance_prior needs n_components "
                    "(with_data_defaults(x, n_components))"
                )
            updates["covariance_prior"] = freeze(cov / n_components ** (2.0 / cov.shape[0]))
        return dataclasses.replace(self, **updates) if updates else self

    def dof(self, spec, n_features):
        if self.degrees_of_freedom is not None:
            return self.degrees_of_freedom
        return float(n_features + 2) if spec.covariance_type in ("full", "tied") else 3.0

    def _hyper(self, spec, n_features, dtype):
        m0 = vector_hyperparameter(self, "mean_prior", n_features, dtype)
        psi = matrix_hyperparameter(self, "covariance_prior", n_features, dtype)
        return m0, psi, self.dof(spec, n_features), self.mean_precision

    # -- the density --------------------------------------------------------------------
    def sample(self, spec, n_features, dtype):
        self.check(spec, n_features)
        k, cov_type = spec.n_components, spec.covariance_type
        m0, psi, nu, kappa = self._hyper(spec, n_features, dtype)
        weights = numpyro.sample(
            "weights", dist.Dirichlet(jnp.full((k,), self.weight_concentration, dtype))
        )
        if cov_type in ("full", "tied"):
            batch = (k,) if cov_type == "full" else ()
            site = "covariances" if cov_type == "full" else "covariance"
            cov = numpyro.sample(
                site,
                dist.InverseWishart(
                    jnp.asarray(nu, dtype), scale_matrix=jnp.broadcast_to(psi, batch + psi.shape)
                ).to_event(len(batch)),
            )
            chol = cholesky(cov)
            means = numpyro.sample(
                "means",
                dist.MultivariateNormal(
                    m0, scale_tril=jnp.broadcast_to(chol / math.sqrt(kappa), (k,) + psi.shape)
                ).to_event(1),
            )
            prec_chol = upper_inverse_transpose(chol)
        else:
            if cov_type == "diag":
                rate, shape = jnp.diagonal(psi) / 2, (k, n_features)
            else:
                rate, shape = jnp.trace(psi) / (2 * n_features), (k,)
            variances = numpyro.sample(
                "variances",
                dist.InverseGamma(jnp.asarray(nu / 2, dtype), rate)
                .expand(shape)
                .to_event(len(shape)),
            )
            scale = jnp.sqrt(variances / kappa)
            if cov_type == "spherical":
                scale = scale[:, None]
            means = numpyro.sample(
                "means", dist.Normal(m0, jnp.broadcast_to(scale, (k, n_features))).to_event(2)
            )
            prec_chol = lax.rsqrt(variances)
        return GMMParams(weights=weights, means=means, prec_chol=prec_chol)

    def site_values(self, params, spec):
        family = get_family(spec.covariance_type)
        cov = family.covariance_from_prec_chol(params.prec_chol)
        site = {"full": "covariances", "tied": "covariance"}.get(spec.covariance_type, "variances")
        return {"weights": params.weights, "means": params.means, site: cov}

    # -- closed-form MAP M-step ---------------------------------------------------------
    def em_m_step(self, stats, spec):
        """argmax of E_q[log p(X, Z | params)] + log_density(params): the exact MAP
        M-step in the site variables (weights, means, covariances / variances), plus
        spec.reg_covar on the covariance diagonal as every M-step adds."""
        if self.weight_concentration < 1:
            raise ValueError(
                f"EM's MAP M-step for prior {self.name!r} needs weight_concentration >= 1 "
                f"(got {self.weight_concentration}): below 1 the posterior density is "
                "unbounded as a weight goes to 0, so there is no MAP. Fit it with SVI "
                "(auto_normal / auto_multivariate_normal) or NUTS instead."
            )
        n_features = stats.means.shape[-1]
        dtype = stats.means.dtype
        self.check(spec, n_features)
        m0, psi, nu, kappa = self._hyper(spec, n_features, dtype)
        cov_type = spec.covariance_type
        nk = stats.nk
        k = nk.shape[0]
        alpha = self.weight_concentration
        tiny = 10 * jnp.finfo(dtype).eps
        weights = (nk + (alpha - 1) + tiny) / (jnp.sum(nk) + k * (alpha - 1) + k * tiny)
        means = (nk[:, None] * stats.means + kappa * m0) / (nk + kappa)[:, None]
        diff = stats.means - m0
        shrink = nk * kappa / (nk + kappa)
        if cov_type == "full":
            b = psi + stats.scatter + shrink[:, None, None] * diff[:, :, None] * diff[:, None, :]
            cov = b / (nk + nu + n_features + 2)[:, None, None]
        elif cov_type == "tied":
            b = psi + stats.scatter + jnp.einsum("k,kd,ke->de", shrink, diff, diff)
            cov = b / (jnp.sum(nk) + k + nu + n_features + 1)
        elif cov_type == "diag":
            b = jnp.diagonal(psi) + stats.scatter + shrink[:, None] * diff**2
            cov = b / (nk + nu + 3)[:, None]
        else:
            b = (
                jnp.trace(psi) / n_features
                + jnp.sum(stats.scatter, axis=-1)
                + shrink * jnp.sum(diff**2, axis=-1)
            )
            cov = b / (n_features * (nk + 1) + nu + 2)
        cov = regularize_covariance(cov, spec.reg_covar, cov_type)
        return GMMParams(
            weights=weights,
            means=means,
            prec_chol=get_family(cov_type).prec_chol_from_covariance(cov),
        )
