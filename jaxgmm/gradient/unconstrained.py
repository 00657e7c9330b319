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
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxgmm.model.covariance import get_family, regularize_covariance
from jaxgmm.model.linalg import cholesky, eigh
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


def _excess_floor(cov, reg_covar, axis):
    """sqrt(eps) * max(reg_covar, largest variance), per matrix / per component."""
    eps = jnp.finfo(cov.dtype).eps
    scale = jnp.max(cov, axis=axis) if axis is not None else cov
    return jnp.sqrt(eps) * jnp.maximum(scale, jnp.asarray(reg_covar, cov.dtype))


class _CholeskyFamily:
    """full and tied: a lower-triangular factor per covariance matrix."""

    @staticmethod
    def decode(cov_factor, reg_covar, covariance_type):
        log_diag = jnp.diagonal(cov_factor, axis1=-2, axis2=-1)
        lower = jnp.tril(cov_factor, k=-1) + _diag_embed(jnp.exp(log_diag))
        cov = regularize_covariance(lower @ jnp.swapaxes(lower, -1, -2), reg_covar, covariance_type)
        return get_family(covariance_type).prec_chol_from_covariance(cov)

    @staticmethod
    def encode(prec_chol, reg_covar, covariance_type):
        family = get_family(covariance_type)
        cov = family.covariance_from_prec_chol(prec_chol)
        cov = 0.5 * (cov + jnp.swapaxes(cov, -1, -2))
        excess = regularize_covariance(cov, -reg_covar, covariance_type)
        floor = _excess_floor(jnp.diagonal(cov, axis1=-2, axis2=-1), reg_covar, axis=-1)
        lower = cholesky(excess)
        diag = jnp.diagonal(lower, axis1=-2, axis2=-1)
        healthy = jnp.all(jnp.isfinite(lower), axis=(-2, -1)) & jnp.all(
            jnp.square(diag) >= floor[..., None], axis=-1
        )
        # Degenerate excess: clip its eigenvalues at the floor (encoder only, off the
        # gradient path), then factor.
        eigval, eigvec = eigh(excess)
        clipped = (eigvec * jnp.maximum(eigval, floor[..., None])[..., None, :]) @ jnp.swapaxes(
            eigvec, -1, -2
        )
        clipped = 0.5 * (clipped + jnp.swapaxes(clipped, -1, -2))
        lower = jnp.where(healthy[..., None, None], lower, cholesky(clipped))
        diag = jnp.diagonal(lower, axis1=-2, axis2=-1)
        return jnp.tril(lower, k=-1) + _diag_embed(jnp.log(diag))


class _ScaleFamily:
    """diag and spherical: log standard deviations of the excess variance."""

    @staticmethod
    def decode(cov_factor, reg_covar, covariance_type):
        cov = regularize_covariance(jnp.exp(2.0 * cov_factor), reg_covar, covariance_type)
        return get_family(covariance_type).prec_chol_from_covariance(cov)

    @staticmethod
    def encode(prec_chol, reg_covar, covariance_type):
        cov = get_family(covariance_type).covariance_from_prec_chol(prec_chol)
        excess = regularize_covariance(cov, -reg_covar, covariance_type)
        excess = jnp.maximum(excess, _excess_floor(cov, reg_covar, axis=None))
        return 0.5 * jnp.log(excess)


def _diag_embed(values):
    return values[..., :, None] * jnp.eye(values.shape[-1], dtype=values.dtype)


UNCONSTRAINED_COVARIANCES = {
    "full": _CholeskyFamily,
    "tied": _CholeskyFamily,
    "diag": _ScaleFamily,
    "spherical": _ScaleFamily,
}


def _transform(covariance_type):
    try:
        return UNCONSTRAINED_COVARIANCES[covariance_type]
    except KeyError:
        raise ValueError(
            f"covariance_type must be one of {sorted(UNCONSTRAINED_COVARIANCES)}, "
            f"got {covariance_type!r}"
        ) from None


def to_unconstrained(params, spec):
    """Encode `GMMParams` as `UnconstrainedParams` (see the module docstring).

    Args:
        params: `GMMParams` with weights > 0 and covariances >= ``spec.reg_covar * I``.
        spec: `GMMSpec` (``covariance_type`` and ``reg_covar`` are used).
    """
    weights = jnp.asarray(params.weights)
    log_w = jnp.log(jnp.maximum(weights, jnp.finfo(weights.dtype).tiny))
    cov_factor = _transform(spec.covariance_type).encode(
        params.prec_chol, spec.reg_covar, spec.covariance_type
    )
    return UnconstrainedParams(
        logits=log_w - jnp.mean(log_w, axis=-1, keepdims=True),
        means=params.means,
        cov_factor=cov_factor,
    )


def from_unconstrained(u, spec):
    """Decode `UnconstrainedParams` into valid `GMMParams` (covariances >= reg_covar I).

    Differentiable; this is the map the gradient fitter optimises through.
    """
    prec_chol = _transform(spec.covariance_type).decode(
        u.cov_factor, spec.reg_covar, spec.covariance_type
    )
    return GMMParams(weights=jax.nn.softmax(u.logits, axis=-1), means=u.means, prec_chol=prec_chol)
