"""Covariance families: each owns its shapes, log-density pieces, M-step estimate,
parameter count and conversions. `reg_covar` is added in `regularize_covariance` only.

Convention (scikit-learn's): a family stores the Cholesky factor of the *precision*,
``prec_chol``, upper triangular with ``precision = prec_chol @ prec_chol.T``, so the
Mahalanobis term is a matrix product and log|Sigma|^{-1/2} is a sum of log-diagonals.

=============  ======================  ==================  ===========================
family         prec_chol shape         covariance shape    free covariance parameters
=============  ======================  ==================  ===========================
``full``       (K, D, D) upper-tri.    (K, D, D)           K * D * (D + 1) / 2
``tied``       (D, D) upper-tri.       (D, D)              D * (D + 1) / 2
``diag``       (K, D)                  (K, D)              K * D
``spherical``  (K,)                    (K,)                K
=============  ======================  ==================  ===========================
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax


def _upper_inverse_transpose(chol_lower):
    """inv(L).T for lower-triangular L (batched): the precision Cholesky of L @ L.T."""
    eye = jnp.broadcast_to(jnp.eye(chol_lower.shape[-1], dtype=chol_lower.dtype), chol_lower.shape)
    inv_lower = lax.linalg.triangular_solve(chol_lower, eye, left_side=True, lower=True)
    return jnp.swapaxes(inv_lower, -1, -2)


def _sq_norm_rows(diff_times_prec):
    return jnp.sum(jnp.square(diff_times_prec), axis=-1)


class Full:
    name = "full"

    @staticmethod
    def prec_chol_shape(n_components, n_features):
        return (n_components, n_features, n_features)

    @staticmethod
    def log_det_prec_chol(prec_chol, n_features):
        """(K,): log|prec_chol_k| = -1/2 log|Sigma_k|."""
        return jnp.sum(jnp.log(jnp.diagonal(prec_chol, axis1=-2, axis2=-1)), axis=-1)

    @staticmethod
    def mahalanobis(x, means, prec_chol):
        """(N, K): (x_n - mu_k)^T Sigma_k^{-1} (x_n - mu_k).

        One (N, D) @ (D, K*D) matrix product on data shifted by the mean of the means,
        so float32 keeps its digits when the data sit far from the origin."""
        n_components, n_features = means.shape
        center = jnp.mean(means, axis=0)
        stacked = jnp.transpose(prec_chol, (1, 0, 2)).reshape(n_features, -1)
        y = ((x - center) @ stacked).reshape(x.shape[:-1] + (n_components, n_features))
        return _sq_norm_rows(y - jnp.einsum("kd,kde->ke", means - center, prec_chol))

    @staticmethod
    def paired_mahalanobis(points, means, prec_chol):
        """(K,): (p_k - mu_k)^T Sigma_k^{-1} (p_k - mu_k), one point per component."""
        return _sq_norm_rows(jnp.einsum("kd,kde->ke", points - means, prec_chol))

    @staticmethod
    def scatter(x, resp, centers):
        """(K, D, D): sum_n r_nk (x_n - c_k)(x_n - c_k)^T."""
        diff = x[:, None, :] - centers[None, :, :]
        return jnp.einsum("nk,nkd,nke->kde", resp, diff, diff)

    @staticmethod
    def covariance_from_scatter(scatter, nk):
        return scatter / nk[:, None, None]

    @staticmethod
    def trace_term(scatter, prec_chol):
        """sum_k tr(Sigma_k^{-1} S_k) with S_k the scatter."""
        return jnp.sum(jnp.einsum("kde,kef->kdf", scatter, prec_chol) * prec_chol)

    @staticmethod
    def add_to_diagonal(cov, value):
        return cov + value * jnp.eye(cov.shape[-1], dtype=cov.dtype)

    @staticmethod
    def prec_chol_from_covariance(cov):
        return _upper_inverse_transpose(jnp.linalg.cholesky(cov))

    @staticmethod
    def covariance_from_prec_chol(prec_chol):
        eye = jnp.broadcast_to(jnp.eye(prec_chol.shape[-1], dtype=prec_chol.dtype), prec_chol.shape)
        inv_upper = lax.linalg.triangular_solve(prec_chol, eye, left_side=True, lower=False)
        # precision = P P^T  =>  Sigma = P^{-T} P^{-1}.
        return jnp.swapaxes(inv_upper, -1, -2) @ inv_upper

    @staticmethod
    def precision_from_prec_chol(prec_chol):
        return prec_chol @ jnp.swapaxes(prec_chol, -1, -2)

    @staticmethod
    def prec_chol_from_precision(precision):
        # precision = U U^T with U upper: U = flip(chol(flip(precision))) (sklearn's trick).
        flipped = jnp.flip(precision, axis=(-2, -1))
        return jnp.flip(jnp.linalg.cholesky(flipped), axis=(-2, -1))

    @staticmethod
    def min_eigenvalue(prec_chol, n_components):
        """(K,): smallest covariance eigenvalue = 1 / largest precision eigenvalue."""
        precision = Full.precision_from_prec_chol(prec_chol)
        return 1.0 / jnp.linalg.eigvalsh(precision)[..., -1]

    @staticmethod
    def n_parameters(n_components, n_features):
        return n_components * n_features * (n_features + 1) // 2


class Tied(Full):
    name = "tied"

    @staticmethod
    def prec_chol_shape(n_components, n_features):
        return (n_features, n_features)

    @staticmethod
    def mahalanobis(x, means, prec_chol):
        center = jnp.mean(means, axis=0)
        y = ((x - center) @ prec_chol)[..., None, :] - (means - center) @ prec_chol
        return _sq_norm_rows(y)

    @staticmethod
    def paired_mahalanobis(points, means, prec_chol):
        return _sq_norm_rows((points - means) @ prec_chol)

    @staticmethod
    def scatter(x, resp, centers):
        return jnp.sum(Full.scatter(x, resp, centers), axis=0)

    @staticmethod
    def covariance_from_scatter(scatter, nk):
        return scatter / jnp.sum(nk)

    @staticmethod
    def trace_term(scatter, prec_chol):
        return jnp.sum((scatter @ prec_chol) * prec_chol)

    @staticmethod
    def min_eigenvalue(prec_chol, n_components):
        return jnp.broadcast_to(Full.min_eigenvalue(prec_chol, n_components), (n_components,))

    @staticmethod
    def n_parameters(n_components, n_features):
        return n_features * (n_features + 1) // 2


class Diag:
    name = "diag"

    @staticmethod
    def prec_chol_shape(n_components, n_features):
        return (n_components, n_features)

    @staticmethod
    def log_det_prec_chol(prec_chol, n_features):
        return jnp.sum(jnp.log(prec_chol), axis=-1)

    @staticmethod
    def mahalanobis(x, means, prec_chol):
        # Direct differences, not scikit-learn's expansion into matrix products: the
        # expansion cancels catastrophically for a collapsing (tiny-variance) component.
        y = (x[..., None, :] - means) * prec_chol
        return _sq_norm_rows(y)

    @staticmethod
    def paired_mahalanobis(points, means, prec_chol):
        return _sq_norm_rows((points - means) * prec_chol)

    @staticmethod
    def scatter(x, resp, centers):
        """(K, D): sum_n r_nk (x_nd - c_kd)^2 (centred: stable in float32)."""
        diff = x[:, None, :] - centers[None, :, :]
        return jnp.einsum("nk,nkd->kd", resp, jnp.square(diff))

    @staticmethod
    def covariance_from_scatter(scatter, nk):
        return scatter / nk[:, None]

    @staticmethod
    def trace_term(scatter, prec_chol):
        return jnp.sum(scatter * jnp.square(prec_chol))

    @staticmethod
    def add_to_diagonal(cov, value):
        return cov + value

    @staticmethod
    def prec_chol_from_covariance(cov):
        return lax.rsqrt(cov)

    @staticmethod
    def covariance_from_prec_chol(prec_chol):
        return 1.0 / jnp.square(prec_chol)

    @staticmethod
    def precision_from_prec_chol(prec_chol):
        return jnp.square(prec_chol)

    @staticmethod
    def prec_chol_from_precision(precision):
        return jnp.sqrt(precision)

    @staticmethod
    def min_eigenvalue(prec_chol, n_components):
        return jnp.min(Diag.covariance_from_prec_chol(prec_chol), axis=-1)

    @staticmethod
    def n_parameters(n_components, n_features):
        return n_components * n_features


class Spherical(Diag):
    name = "spherical"

    @staticmethod
    def prec_chol_shape(n_components, n_features):
        return (n_components,)

    @staticmethod
    def log_det_prec_chol(prec_chol, n_features):
        return n_features * jnp.log(prec_chol)

    @staticmethod
    def mahalanobis(x, means, prec_chol):
        return Diag.mahalanobis(x, means, prec_chol[:, None])

    @staticmethod
    def paired_mahalanobis(points, means, prec_chol):
        return _sq_norm_rows((points - means) * prec_chol[:, None])

    # The scatter stays per feature (K, D) so the bound's trace term is exact.
    @staticmethod
    def covariance_from_scatter(scatter, nk):
        return jnp.mean(scatter, axis=-1) / nk

    @staticmethod
    def trace_term(scatter, prec_chol):
        return jnp.sum(jnp.sum(scatter, axis=-1) * jnp.square(prec_chol))

    @staticmethod
    def min_eigenvalue(prec_chol, n_components):
        return Diag.covariance_from_prec_chol(prec_chol)

    @staticmethod
    def n_parameters(n_components, n_features):
        return n_components


COVARIANCE_FAMILIES = {cls.name: cls for cls in (Full, Tied, Diag, Spherical)}


def get_family(covariance_type):
    try:
        return COVARIANCE_FAMILIES[covariance_type]
    except KeyError:
        raise ValueError(
            f"covariance_type must be one of {sorted(COVARIANCE_FAMILIES)}, got {covariance_type!r}"
        ) from None


def regularize_covariance(cov, reg_covar, covariance_type):
    """The one place `reg_covar` is added: to the diagonal of a covariance estimate."""
    return get_family(covariance_type).add_to_diagonal(cov, jnp.asarray(reg_covar, cov.dtype))
