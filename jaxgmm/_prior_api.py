"""How fitters reach a prior's density. The prior registry (``jaxgmm.priors``)
defines the priors; this module is the one door the fitters use."""

from __future__ import annotations

import jax.numpy as jnp


def log_prior(params, spec):
    """log p(params) under ``spec.prior`` (0 for maximum likelihood), a scalar total.

    A prior object provides ``log_density(params, spec)``, computed from its NumPyro
    sample statements so that MAP by gradient, SVI and NUTS share one density.
    """
    if spec.prior is None:
        return jnp.zeros((), params.means.dtype)
    return spec.prior.log_density(params, spec)
