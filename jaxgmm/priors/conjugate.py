"""``conjugate``: Dirichlet weights and a Normal-inverse-Wishart prior on each component's
(mean, covariance), with a closed-form MAP M-step for EM (Fraley and Raftery 2007, J.
Classification 24:155, "Bayesian regularization for normal mixture estimation").

Sites (the variables the density is over):
  ``weights`` (K,) ~ Dirichlet(weight_concentration) (``weight_prior_type``
             "dirichlet_distribution"), or truncated stick-breaking with sticks
             ~ Beta(1, weight_concentration) ("dirichlet_process"; the density of the weights,
             see `jaxgmm.priors.stick_breaking`)
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
import numpy as np
import numpyro
import numpyro.distributions as dist
from jax import lax

from jaxgmm._registry import lookup
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
from jaxgmm.priors.empirical import within_cluster_covariance
from jaxgmm.priors.stick_breaking import StickBreakingWeights, weights_from_sticks

#: ``weight_prior_type`` values (scikit-learn's ``weight_concentration_prior_type`` names).
WEIGHT_PRIOR_TYPES = {
    "dirichlet_distribution": "finite symmetric Dirichlet(alpha)",
    "dirichlet_process": "truncated stick-breaking, sticks ~ Beta(1, gamma)",
}


@dataclasses.dataclass(frozen=True)
class ConjugatePrior(Prior):
    """Dirichlet x Normal-inverse-Wishart (inverse-Gamma for diag/spherical).

    Attributes:
        weight_prior_type: ``"dirichlet_distribution"`` (default): weights ~ symmetric
            Dirichlet(alpha); ``"dirichlet_process"``: truncated stick-breaking, sticks
            v_k ~ Beta(1, gamma), k < K, w_k = v_k prod_{j<k} (1 - v_j).
        weight_concentration: alpha (Dirichlet) or gamma (stick-breaking), > 0. Default 1
            (Dirichlet: uniform on the simplex). EM's MAP step needs alpha >= 1, or
            gamma >= K - 1: below, the posterior density is unbounded as components
            empty, so there is no MAP.
        mean_prior: m0, shape (n_features,); default (data): the data mean.
        mean_precision: kappa > 0, the prior's weight in pseudo-observations. Default 0.01.
        degrees_of_freedom: nu; default (``None``): D + 2 for full/tied (IW mean = Psi),
            3 for diag/spherical (inverse-Gamma mean = Psi's diagonal / its average).
            Must be > D - 1 (full/tied), > 0 (diag/spherical).
        covariance_prior: Psi: scalar, (D,) diagonal or (D, D); default (data): the data
            covariance / K^(2/D) (Fraley and Raftery's choice: the covariance of one of K
            equal-volume pieces of the data), a regularisation scale for MAP / EM.
            ``"within_cluster"`` (data, empirical Bayes): the diagonal of the pooled
            within-cluster covariance of a deterministic k-means partition of the data
            into K clusters (`jaxgmm.priors.empirical`), the scale of one component: the
            posterior default of the experiment runner (see docs/priors.md).
    """

    name: ClassVar[str] = "conjugate"
    covariance_types: ClassVar[tuple] = ALL_COVARIANCE_TYPES

    weight_concentration: float = 1.0
    mean_prior: tuple | None = None
    mean_precision: float = 0.01
    degrees_of_freedom: float | None = None
    covariance_prior: tuple | None = None
    weight_prior_type: str = "dirichlet_distribution"

    def __post_init__(self):
        # Checked before freezing, which would turn a list into floats.
        lookup(
            WEIGHT_PRIOR_TYPES,
            self.weight_prior_type,
            "weight_prior_type",
            f"prior {self.name!r}: weight_prior_type must be one of {{valid}}, got {{name}}",
        )
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, freeze(getattr(self, f.name)))
        self._check_positive("weight_concentration", "mean_precision", "degrees_of_freedom")
        _check_covariance_prior(self.name, self.covariance_prior)

    @property
    def label(self):
        if self.covariance_prior == "within_cluster":
            return f"{self.name}[within-cluster Psi, empirical Bayes]"
        return self.name

    # hyperparameters that ``with_data_defaults`` fills; degrees_of_freedom's default
    # depends only on (D, covariance type) and is resolved at use time.
    _data_defaults: ClassVar[tuple] = ("mean_prior", "covariance_prior")

    def check(self, spec, n_features):
        if spec.covariance_type not in self.covariance_types:
            super().check(spec, n_features)
        # A named data default ("within_cluster") is as unset as None until resolved.
        missing = [
            n
            for n in self._data_defaults
            if getattr(self, n) is None or isinstance(getattr(self, n), str)
        ]
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
        """Fill ``mean_prior`` (data mean) and ``covariance_prior`` (unset: data
        covariance / K^(2/D); ``"within_cluster"``: the diagonal of the pooled
        within-cluster covariance of K k-means clusters), K = ``n_components`` (required
        when covariance_prior is to be filled)."""
        mean, _, cov = data_mean_std_cov(x)
        updates = {}
        if self.mean_prior is None:
            updates["mean_prior"] = freeze(mean)
        if self.covariance_prior is None or isinstance(self.covariance_prior, str):
            if n_components is None:
                raise ValueError(
                    f"prior {self.name!r}: the default covariance_prior needs n_components "
                    "(with_data_defaults(x, n_components))"
                )
            if self.covariance_prior is None:
                psi = cov / n_components ** (2.0 / cov.shape[0])
            else:
                psi = np.diag(np.diagonal(within_cluster_covariance(x, n_components)))
            updates["covariance_prior"] = freeze(psi)
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
        psi = self._sample_covariance_prior(psi, dtype)
        if self.weight_prior_type == "dirichlet_process":
            weights_fn = StickBreakingWeights(jnp.asarray(self.weight_concentration, dtype), k)
        else:
            weights_fn = dist.Dirichlet(jnp.full((k,), self.weight_concentration, dtype))
        weights = numpyro.sample("weights", weights_fn)
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

    def _sample_covariance_prior(self, psi, dtype):
        """Psi as the covariances' prior uses it; a hierarchical subclass draws it here."""
        del dtype
        return psi

    @property
    def exchangeable(self):
        # Stick-breaking favours the first labels; the Dirichlet is symmetric.
        return self.weight_prior_type != "dirichlet_process"

    def site_values(self, params, spec):
        family = get_family(spec.covariance_type)
        cov = family.covariance_from_prec_chol(params.prec_chol)
        site = {"full": "covariances", "tied": "covariance"}.get(spec.covariance_type, "variances")
        return {"weights": params.weights, "means": params.means, site: cov}

    # -- closed-form MAP M-step ---------------------------------------------------------
    def no_map_reason(self, spec):
        """Why the posterior has no maximum (a message), or None when a MAP exists.

        The weight prior's density is unbounded on the simplex for Dirichlet alpha < 1 (as
        a weight goes to 0) and for stick-breaking gamma < K - 1 (as the last components
        empty: see `jaxgmm.priors.stick_breaking`); a mixture likelihood stays bounded
        there, so the posterior is unbounded too."""
        gamma, k = self.weight_concentration, spec.n_components
        if self.weight_prior_type == "dirichlet_process":
            if k > 1 and gamma < k - 1:
                return (
                    f"prior {self.name!r} with weight_prior_type='dirichlet_process' has no MAP "
                    f"for weight_concentration {gamma} < n_components - 1 = {k - 1}: the "
                    "stick-breaking density of the weights is unbounded as the last components "
                    "empty. Fit it with vb, or SVI (auto_normal / auto_multivariate_normal) or "
                    "NUTS; MAP by EM, gradient or auto_delta needs weight_concentration >= "
                    f"{k - 1}"
                )
        elif gamma < 1:
            return (
                f"prior {self.name!r} has no MAP for weight_concentration {gamma} < 1: a MAP "
                "(EM, gradient, auto_delta) needs weight_concentration >= 1, because below 1 "
                "the posterior density is unbounded as a weight goes to 0. Fit it with vb, "
                "or SVI (auto_normal / auto_multivariate_normal) or NUTS instead."
            )
        return None

    def em_m_step(self, stats, spec):
        """argmax of E_q[log p(X, Z | params)] + log_density(params): the exact MAP
        M-step in the site variables (weights, means, covariances / variances), plus
        spec.reg_covar on the covariance diagonal as every M-step adds."""
        reason = self.no_map_reason(spec)
        if reason is not None:
            raise ValueError(reason)
        n_features = stats.means.shape[-1]
        dtype = stats.means.dtype
        self.check(spec, n_features)
        m0, psi, nu, kappa = self._hyper(spec, n_features, dtype)
        cov_type = spec.covariance_type
        nk = stats.nk
        k = nk.shape[0]
        alpha = self.weight_concentration
        tiny = 10 * jnp.finfo(dtype).eps
        if self.weight_prior_type == "dirichlet_process":
            weights = _stick_breaking_map_weights(nk, alpha, tiny)
        else:
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


def _stick_breaking_map_weights(nk, gamma, tiny):
    """argmax_w sum_k nk log w_k + log p(w) under stick-breaking (gamma >= K - 1).

    In the sticks the function separates: sum_k a_k log v_k + b_k log(1 - v_k), with
    a_k = n_k and b_k = n_{>k} + gamma - K + k (the Beta(1, gamma) exponents less the
    Jacobian's: log r_j appears K - 1 - j times), so v_k = a_k / (a_k + b_k); b_k >= 0
    whenever gamma >= K - 1."""
    k = nk.shape[0]
    if k == 1:
        return jnp.ones_like(nk)
    index = jnp.arange(1, k, dtype=nk.dtype)
    n_after = jnp.cumsum(nk[::-1])[::-1][1:]  # n_{>k}, k = 1..K-1
    a = nk[:-1] + tiny
    b = n_after + (gamma - k) + index + tiny
    return weights_from_sticks(a / (a + b))


#: Named data defaults of ``covariance_prior`` (filled by ``with_data_defaults``).
COVARIANCE_PRIOR_DEFAULTS = {
    "within_cluster": "diagonal of the pooled within-cluster covariance of K k-means clusters",
}


def _check_covariance_prior(name, value):
    """ValueError unless ``value`` (None, a name of `COVARIANCE_PRIOR_DEFAULTS`, scalar,
    (D,) or (D, D)) is positive definite: a singular Psi makes the inverse-Wishart /
    inverse-Gamma prior improper."""
    if value is None:
        return
    if isinstance(value, str):
        if value not in COVARIANCE_PRIOR_DEFAULTS:
            raise ValueError(
                f"prior {name!r}: covariance_prior given as a name must be one of "
                f"{sorted(COVARIANCE_PRIOR_DEFAULTS)}, got {value!r}"
            )
        return
    psi = np.asarray(value, dtype=np.float64)
    if not np.all(np.isfinite(psi)):
        raise ValueError(f"prior {name!r}: covariance_prior must be finite, got {value!r}")
    if psi.ndim <= 1:
        if not np.all(psi > 0):
            raise ValueError(
                f"prior {name!r}: covariance_prior given as a scalar or a diagonal must be "
                f"> 0, got {value!r}"
            )
        return
    if psi.ndim != 2 or psi.shape[0] != psi.shape[1] or not np.allclose(psi, psi.T):
        raise ValueError(
            f"prior {name!r}: covariance_prior given as a matrix must be square and "
            f"symmetric, got shape {psi.shape}"
        )
    smallest = float(np.linalg.eigvalsh(psi)[0])
    if not smallest > 0:
        raise ValueError(
            f"prior {name!r}: covariance_prior must be positive definite, its smallest "
            f"eigenvalue is {smallest:.6g}"
        )
