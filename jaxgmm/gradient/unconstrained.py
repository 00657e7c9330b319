"""The unconstrained parameterisation used by gradient fitting: every `GMMParams`
maps to an `UnconstrainedParams` of real arrays, and back.

* Weights: ``weights = softmax(logits)`` with all K logits free. The map has one
  redundant degree of freedom (adding a constant to every logit changes nothing), so the
  encoder returns centred logits (``log w - mean(log w)``) and the objective's gradient
  always sums to zero over the logits: full-batch SGD and L-BFGS never move their mean,
  Adam may let it drift, which changes neither the weights nor the objective. Keeping
  all K free (rather than pinning one logit to 0) treats the components symmetrically.
* Means: as they are.
* Covariances: ``Sigma = regularize_covariance(L @ L.T, reg_covar)``, with ``L`` a
  lower-triangular Cholesky factor whose diagonal is ``exp`` of the stored values (the
  log-Cholesky parameterisation, Pinheiro and Bates 1996, "Unconstrained
  parametrizations for variance-covariance matrices"). ``exp`` rather than softplus
  because (a) its inverse (``log``) is exact, so the round trip holds to float precision;
  (b) a step in the stored value is a *relative* change of a standard deviation, which
  keeps the gradient well scaled whatever the units of the data (softplus is linear
  above ~1, so steps become absolute and depend on the data's scale); (c) the Gaussian
  log-likelihood is close to quadratic in log-scales, which helps L-BFGS. The price is
  that a huge step overflows ``exp``: the driver then stops at the first non-finite
  value and keeps the last finite parameters. Diagonal and spherical families store
  ``log`` of the standard deviations (their Cholesky factor is diagonal). Entries
  above the diagonal of the full/tied raw matrix are ignored (their gradient is 0).

``reg_covar`` and the round trip: ``u`` encodes ``Sigma - reg_covar * I``; the decoder
adds ``reg_covar`` back through `jaxgmm.model.covariance.regularize_covariance` (the single
function EM uses; the encoder removes it through the same function with
``-reg_covar``) and builds ``prec_chol`` with the family's ``prec_chol_from_covariance``.
So every decoded model has ``Sigma >= reg_covar * I`` exactly as EM's M-step guarantees,
and ``from_unconstrained(to_unconstrained(p))`` returns ``p`` to float tolerance whenever
``Sigma - reg_covar * I`` is numerically positive definite. When it is not (a component
collapsed onto one point, as after a ``"k-means++"`` initialisation, where
``Sigma == reg_covar * I``), the excess is floored at ``sqrt(eps) * max(reg_covar,
max_d Sigma_dd)`` per component: the decoded covariance then differs from the input by
at most that floor.

Shapes of ``UnconstrainedParams.cov_factor`` per family: full (K, D, D), tied (D, D),
diag (K, D), spherical (K,) -- the same as ``prec_chol``.

Each family's encoder and decoder are its ``encode_unconstrained`` and
``decode_unconstrained`` (`jaxgmm.model.covariance`); this module adds the weights and
means and is the public entry point.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxgmm.model.covariance import get_family
from jaxgmm.model.params import GMMParams


class UnconstrainedParams(NamedTuple):
    """Real-valued parameters that `from_unconstrained` maps to valid `GMMParams`.

    Attributes:
        logits: (n_components,) weights = softmax(logits).
        means: (n_components, n_features).
        cov_factor: raw Cholesky factor of ``Sigma - reg_covar I`` with log diagonal;
            shape of the family's ``prec_chol`` (see the module docstring).
    """

    logits: jax.Array
    means: jax.Array
    cov_factor: jax.Array


def to_unconstrained(params, spec):
    """Encode `GMMParams` as `UnconstrainedParams` (see the module docstring).

    Args:
        params: `GMMParams` with weights > 0 and covariances >= ``spec.reg_covar * I``.
        spec: `GMMSpec` (``covariance_type`` and ``reg_covar`` are used).
    """
    weights = jnp.asarray(params.weights)
    log_w = jnp.log(jnp.maximum(weights, jnp.finfo(weights.dtype).tiny))
    family = get_family(spec.covariance_type)
    cov_factor = family.encode_unconstrained(params.prec_chol, spec.reg_covar)
    return UnconstrainedParams(
        logits=log_w - jnp.mean(log_w, axis=-1, keepdims=True),
        means=params.means,
        cov_factor=cov_factor,
    )


def from_unconstrained(u, spec):
    """Decode `UnconstrainedParams` into valid `GMMParams` (covariances >= reg_covar I).

    Differentiable; this is the map the gradient fitter optimises through.
    """
    family = get_family(spec.covariance_type)
    prec_chol = family.decode_unconstrained(u.cov_factor, spec.reg_covar)
    return GMMParams(weights=jax.nn.softmax(u.logits, axis=-1), means=u.means, prec_chol=prec_chol)


class MAPVariables(NamedTuple):
    """What gradient MAP optimises under a hierarchical prior (one with hyper-sites,
    `jaxgmm.priors.Prior.hyper_sites`): the parameters' `UnconstrainedParams` and each
    hyper-site's unconstrained value.

    Attributes:
        params: `UnconstrainedParams`.
        hyper: {hyper-site name: array}, mapped onto the site's support by
            ``numpyro.distributions.transforms.biject_to(support)``; the MAP objective
            adds no Jacobian, as for the component sites (a function is maximised).
    """

    params: UnconstrainedParams
    hyper: dict


def hyper_transforms(spec, n_features, dtype):
    """{hyper-site: the bijection from the reals onto its support} for ``spec.prior``
    (empty without a prior or hyper-sites)."""
    from numpyro.distributions.transforms import biject_to

    from jaxgmm.priors import hyper_sites

    names = hyper_sites(spec.prior)
    if not names:
        return {}
    supports = spec.prior.hyper_site_supports(spec, n_features, dtype)
    return {name: biject_to(supports[name]) for name in names}


def to_map_variables(params, spec):
    """What gradient fitting optimises from `GMMParams`: `UnconstrainedParams`, or
    `MAPVariables` with the hyper-sites at the prior's ``initial_hyper_values``."""
    u = to_unconstrained(params, spec)
    transforms = hyper_transforms(spec, params.means.shape[-1], params.means.dtype)
    if not transforms:
        return u
    start = spec.prior.initial_hyper_values(params, spec)
    hyper = {
        name: t.inv(jnp.asarray(start[name], params.means.dtype)) for name, t in transforms.items()
    }
    return MAPVariables(params=u, hyper=hyper)


def params_of(v):
    """The `UnconstrainedParams` of `UnconstrainedParams` or `MAPVariables`."""
    return v.params if isinstance(v, MAPVariables) else v


def hyper_values(v, spec):
    """{hyper-site: constrained value} of `MAPVariables` (empty for
    `UnconstrainedParams`)."""
    if not isinstance(v, MAPVariables):
        return {}
    dtype = v.params.means.dtype
    transforms = hyper_transforms(spec, v.params.means.shape[-1], dtype)
    return {name: transforms[name](value) for name, value in v.hyper.items()}
