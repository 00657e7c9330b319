"""``hierarchical_conjugate``: the conjugate prior with its covariance scale learnt, a
Gamma hyperprior on the inverse-Wishart (inverse-Gamma) scale shared by the components
(Richardson and Green 1997, JRSS B 59:731, sec. 2.1: sigma_k^-2 ~ Gamma(alpha, beta),
beta ~ Gamma(g, h); Stephens 2000, Ann. Statist. 28:40, for the multivariate form).

Sites: those of ``conjugate`` (``weights``, ``means``, ``covariances`` / ``covariance`` /
``variances``) with Psi = ``covariance_scale`` x Psi0, and the hyper-site
``covariance_scale`` () ~ Gamma(scale_shape, scale_shape): prior mean 1 (Psi centred on
Psi0, the ``covariance_prior`` hyperparameter), coefficient of variation
1 / sqrt(scale_shape) (Richardson and Green's g = 0.2 by default: vague). The scale is
not a parameter of the mixture, so `GMMParams` does not hold it: gradient MAP optimises
it beside the parameters, SVI and NUTS infer it; EM and VB have no closed form for it
and refuse the prior.

A MAP exists for any scale_shape > 0: the components' inverse-Wishart densities grow as
scale^(K nu D / 2) near 0 and the Gamma's scale^(scale_shape - 1) cannot outweigh them.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist

from jaxgmm.priors.conjugate import ConjugatePrior


@dataclasses.dataclass(frozen=True)
class HierarchicalConjugatePrior(ConjugatePrior):
    """`ConjugatePrior` whose Psi is ``covariance_scale * covariance_prior``, with
    ``covariance_scale ~ Gamma(scale_shape, scale_shape)`` a hyper-site.

    Attributes (beyond `ConjugatePrior`'s):
        scale_shape: the Gamma hyperprior's shape and rate (> 0; mean 1, variance
            1 / scale_shape). Default 0.2 (Richardson and Green's g).
    """

    name: ClassVar[str] = "hierarchical_conjugate"
    hyper_sites: ClassVar[tuple] = ("covariance_scale",)
    #: No closed-form EM step for the scale: EM refuses the prior (`jaxgmm.em`).
    em_m_step: ClassVar[None] = None

    scale_shape: float = 0.2

    def __post_init__(self):
        super().__post_init__()
        self._check_positive("scale_shape")

    @property
    def label(self):
        return self.name

    def _sample_covariance_prior(self, psi, dtype):
        shape = jnp.asarray(self.scale_shape, dtype)
        scale = numpyro.sample("covariance_scale", dist.Gamma(shape, shape))
        return scale * psi

    def initial_hyper_values(self, params, spec):
        """The conditional mode of the scale given ``params``: in the scale b, the Gamma
        hyperprior times the covariances' densities is Gamma-shaped, b^(a - 1) e^(-r b)
        with a = g + (number of covariance factors) nu d / 2, r = g + sum tr(Psi0 P) / 2
        over the precisions P (d = D for full / tied, 1 per variance for diag /
        spherical), so the mode is (a - 1) / r."""
        n_features, dtype = params.means.shape[-1], params.means.dtype
        _, psi, nu, _ = self._hyper(spec, n_features, dtype)
        g = jnp.asarray(self.scale_shape, dtype)
        pc = params.prec_chol
        cov_type = spec.covariance_type
        if cov_type in ("full", "tied"):
            precision = pc @ jnp.swapaxes(pc, -1, -2)
            count = precision.size // (n_features * n_features) * n_features
            rate = jnp.sum(psi * precision)  # sum_k tr(Psi0 P_k), both symmetric
        elif cov_type == "diag":
            count = pc.size
            rate = jnp.sum(jnp.diagonal(psi) * pc**2)
        else:
            count = pc.size
            rate = jnp.sum(jnp.trace(psi) / n_features * pc**2)
        shape = g + count * nu / 2
        return {"covariance_scale": (shape - 1) / (g + rate / 2)}
