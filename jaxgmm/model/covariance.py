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

Mahalanobis terms are computed *feature-major*: on ``xt`` of shape (n_features,
n_samples), returning (n_components, n_samples). In that layout the per-component work
is contiguous along samples, which XLA:CPU vectorises; the sample-major form was ~1.6x
slower (its reductions and transposes land inside the (n, K, D) loop fusions).

Diag, spherical and tied also have an *expanded* form, (x - mu)^T P (x - mu) =
x^T P x - 2 mu^T P x + mu^T P mu, which is a few matrix products and no (K, D, n) work
at all. It cancels when a component's mean lies many standard deviations from the
centre the data are shifted to, so it is used only when `expansion_risk` says the
rounding is negligible (`use_expansion`); otherwise the direct differences are used.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxgmm.model.linalg import (
    cholesky,
    eigvalsh,
    solve_upper_transposed,
    triangular_solve,
    upper_inverse_transpose,
)

# The expanded Mahalanobis form is used while (risk + n_features) * eps stays below
# this: its absolute rounding error, a few eps * (risk + n_features), is then < ~1e-4
# (float32: risk up to ~800 standard deviations squared; float64: ~4e11).
EXPANSION_ERROR_LIMIT = 1e-4
# Up to this many features the sum of squares over features is written as explicit
# adds: XLA:CPU fuses them into one vectorised pass, where a reduce over the middle
# axis of (K, D, n) becomes a library reduction 3-5x slower. Above it, a plain reduce.
_UNROLL_FEATURES = 32


def _sq_norm_rows(diff_times_prec):
    return jnp.sum(jnp.square(diff_times_prec), axis=-1)


def sum_squares_over_features(y):
    """(K, D, n) -> (K, n): sum_d y[:, d, :]^2."""
    if y.shape[1] > _UNROLL_FEATURES:
        return jnp.sum(jnp.square(y), axis=1)
    total = jnp.square(y[:, 0])
    for d in range(1, y.shape[1]):
        total = total + jnp.square(y[:, d])
    return total


def data_center(means):
    """The point the data are shifted to before any matrix product: the mean of the
    means, so float32 keeps its digits when the data sit far from the origin."""
    return jnp.mean(means, axis=0)


def _with_ones_row(xt):
    """(D, n) -> (D + 1, n) with a last row of ones, so a matrix product can add a
    per-output offset (saves a separate broadcast subtract over (K, D, n))."""
    return jnp.concatenate([xt, jnp.ones((1, xt.shape[1]), xt.dtype)], axis=0)


class Full:
    name = "full"

    @staticmethod
    def dense(covariances, n_components, n_features):
        """Covariances in the family's shape -> (K, D, D) (NumPy or JAX, as given)."""
        return covariances

    @staticmethod
    def prec_chol_shape(n_components, n_features):
        return (n_components, n_features, n_features)

    @staticmethod
    def log_det_prec_chol(prec_chol, n_features):
        """(K,): log|prec_chol_k| = -1/2 log|Sigma_k|."""
        return jnp.sum(jnp.log(jnp.diagonal(prec_chol, axis1=-2, axis2=-1)), axis=-1)

    has_expansion = False

    @staticmethod
    def expansion_risk(means, prec_chol):
        return None

    @staticmethod
    def whiten_fm(xt, means, prec_chol):
        """(K, D, n): y_k = prec_chol_k^T (x - mu_k) for every component, from ``xt`` (D, n).

        One (K*D, D+1) @ (D+1, n) matrix product on the shifted data with a row of ones
        (the -prec_chol_k^T mu_k offsets ride in the last column)."""
        return Full.apply_whitening(*Full.whitening_operands(xt, means, prec_chol))

    @staticmethod
    def apply_whitening(operator, xs1):
        """(K, D, n): y_k = A_k @ xs1 for the operands of `whitening_operands`."""
        n_components, n_features, _ = operator.shape
        y = operator.reshape(n_components * n_features, -1) @ xs1
        return y.reshape(n_components, n_features, -1)

    @staticmethod
    def whitening_operands(xt, means, prec_chol):
        """``(A, xs1)`` with y_k = A_k @ xs1: A (K, D, D+1) = [prec_chol_k^T | -prec_chol_k^T
        (mu_k - c)] and xs1 (D+1, n) the data shifted by c with a row of ones."""
        center = data_center(means)
        offsets = jnp.einsum("kd,kde->ke", means - center, prec_chol)
        operator = jnp.concatenate([jnp.swapaxes(prec_chol, -1, -2), -offsets[:, :, None]], axis=-1)
        return operator, _with_ones_row(xt - center[:, None])

    @staticmethod
    def mahalanobis_fm(xt, means, prec_chol, expanded=False):
        """(K, n): (x_n - mu_k)^T Sigma_k^{-1} (x_n - mu_k) = |y_k|^2 (`whiten_fm`), from
        ``xt`` (D, n). Always the direct form: the expanded one is no faster for full
        covariances on CPU."""
        return sum_squares_over_features(Full.whiten_fm(xt, means, prec_chol))

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
        """sum_k tr(Sigma_k^{-1} S_k) with S_k the scatter. A dot, not sum(a * b): fused
        into the bound's scalar loop, that reduce was fully unrolled by LLVM at K = 4
        (2.2 s to compile EM's step at (2e5, 16, 4), 0.73 s with the dot)."""
        return jnp.vdot(jnp.einsum("kde,kef->kdf", scatter, prec_chol), prec_chol)

    @staticmethod
    def add_to_diagonal(cov, value):
        return cov + value * jnp.eye(cov.shape[-1], dtype=cov.dtype)

    @staticmethod
    def prec_chol_from_covariance(cov):
        return upper_inverse_transpose(cholesky(cov))

    @staticmethod
    def prec_chol_from_whitened_covariance(cov_w, frame):
        """prec_chol of Sigma = frame^{-T} cov_w frame^{-1}, for a covariance ``cov_w``
        given in the frame whitened by ``frame`` (a prec_chol): frame @ C^{-T} with
        C = chol(cov_w). Upper triangular with a positive diagonal, so it is the same
        factor as `prec_chol_from_covariance` of Sigma, but never forms Sigma: in float32
        an elementwise Sigma loses a relative ~eps * (largest eigenvalue / smallest) of
        its narrow directions, while cov_w is close to the identity near convergence."""
        return frame @ upper_inverse_transpose(cholesky(cov_w))

    @staticmethod
    def from_frame(scatter_w, frame):
        """A (K, D, D) matrix given in the frame whitened by ``frame`` back in data
        coordinates: frame^{-T} scatter_w frame^{-1} (two triangular solves)."""
        half = jnp.swapaxes(solve_upper_transposed(frame, scatter_w), -1, -2)
        out = solve_upper_transposed(frame, half)
        return 0.5 * (out + jnp.swapaxes(out, -1, -2))

    @staticmethod
    def relative_prec_chol(frame, prec_chol):
        """frame^{-1} @ prec_chol: ``prec_chol`` acting on frame-whitened coordinates, so
        tr(prec_chol^T S prec_chol) = tr(A^T S_w A) with S_w = frame^T S frame."""
        return triangular_solve(frame, prec_chol, left_side=True, lower=False)

    @staticmethod
    def covariance_from_prec_chol(prec_chol):
        eye = jnp.broadcast_to(jnp.eye(prec_chol.shape[-1], dtype=prec_chol.dtype), prec_chol.shape)
        inv_upper = triangular_solve(prec_chol, eye, left_side=True, lower=False)
        # precision = P P^T  =>  Sigma = P^{-T} P^{-1}.
        return jnp.swapaxes(inv_upper, -1, -2) @ inv_upper

    @staticmethod
    def precision_from_prec_chol(prec_chol):
        return prec_chol @ jnp.swapaxes(prec_chol, -1, -2)

    @staticmethod
    def prec_chol_from_precision(precision):
        # precision = U U^T with U upper: U = flip(chol(flip(precision))) (sklearn's trick).
        flipped = jnp.flip(precision, axis=(-2, -1))
        return jnp.flip(cholesky(flipped), axis=(-2, -1))

    @staticmethod
    def min_eigenvalue(prec_chol, n_components):
        """(K,): smallest covariance eigenvalue = 1 / largest precision eigenvalue."""
        precision = Full.precision_from_prec_chol(prec_chol)
        return 1.0 / eigvalsh(precision)[..., -1]

    @staticmethod
    def n_parameters(n_components, n_features):
        return n_components * n_features * (n_features + 1) // 2


class Tied(Full):
    name = "tied"

    @staticmethod
    def dense(covariances, n_components, n_features):
        return covariances[None] * np.ones((n_components, 1, 1), covariances.dtype)

    @staticmethod
    def prec_chol_shape(n_components, n_features):
        return (n_features, n_features)

    has_expansion = True

    @staticmethod
    def expansion_risk(means, prec_chol):
        """(K,): squared Mahalanobis distance of each mean from the data's centre."""
        return _sq_norm_rows((means - data_center(means)) @ prec_chol)

    @staticmethod
    def mahalanobis_fm(xt, means, prec_chol, expanded=False):
        center = data_center(means)
        y0 = prec_chol.T @ (xt - center[:, None])  # (D, n)
        offsets = (means - center) @ prec_chol  # (K, D): prec_chol^T (mu_k - c)
        if expanded:
            # |y0 - o_k|^2 = |y0|^2 - 2 o_k . y0 + |o_k|^2
            return (
                jnp.sum(jnp.square(y0), axis=0)
                - 2.0 * (offsets @ y0)
                + jnp.sum(jnp.square(offsets), axis=1)[:, None]
            )
        return sum_squares_over_features(y0[None] - offsets[:, :, None])

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
    def dense(covariances, n_components, n_features):
        """Covariances in the family's shape -> (K, D, D) (NumPy or JAX, as given)."""
        return covariances[:, :, None] * np.eye(n_features, dtype=covariances.dtype)

    @staticmethod
    def prec_chol_shape(n_components, n_features):
        return (n_components, n_features)

    @staticmethod
    def log_det_prec_chol(prec_chol, n_features):
        return jnp.sum(jnp.log(prec_chol), axis=-1)

    has_expansion = True

    @staticmethod
    def expansion_risk(means, prec_chol):
        return _sq_norm_rows((means - data_center(means)) * prec_chol)

    @staticmethod
    def mahalanobis_fm(xt, means, prec_chol, expanded=False):
        if expanded:
            center = data_center(means)
            xs, ms = xt - center[:, None], means - center
            precision = jnp.square(prec_chol)
            return (
                precision @ jnp.square(xs)
                - 2.0 * ((precision * ms) @ xs)
                + jnp.sum(precision * jnp.square(ms), axis=1)[:, None]
            )
        # Direct differences: exact for a collapsing (tiny-variance) component.
        return sum_squares_over_features((xt[None] - means[:, :, None]) * prec_chol[:, :, None])

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
    def dense(covariances, n_components, n_features):
        eye = np.eye(n_features, dtype=covariances.dtype)
        return covariances[:, None, None] * eye

    @staticmethod
    def prec_chol_shape(n_components, n_features):
        return (n_components,)

    @staticmethod
    def log_det_prec_chol(prec_chol, n_features):
        return n_features * jnp.log(prec_chol)

    @staticmethod
    def expansion_risk(means, prec_chol):
        return Diag.expansion_risk(means, prec_chol[:, None])

    @staticmethod
    def mahalanobis_fm(xt, means, prec_chol, expanded=False):
        return Diag.mahalanobis_fm(xt, means, jnp.broadcast_to(prec_chol[:, None], means.shape), expanded)

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


def use_expansion(family, means, prec_chol):
    """Whether ``family``'s expanded Mahalanobis form is accurate for these parameters
    (a traced bool; always False for families without one)."""
    if not family.has_expansion:
        return jnp.asarray(False)
    eps = jnp.finfo(means.dtype).eps
    risk = jnp.max(family.expansion_risk(means, prec_chol)) + means.shape[-1]
    # NaN compares False, so a NaN risk takes the direct path.
    return risk * eps <= EXPANSION_ERROR_LIMIT


def mahalanobis_fm(family, xt, means, prec_chol):
    """(K, n) Mahalanobis terms from ``xt`` (D, n): the expanded form when
    `use_expansion` allows, else the direct one (one `lax.cond`, evaluated once)."""
    if not family.has_expansion:
        return family.mahalanobis_fm(xt, means, prec_chol)
    return lax.cond(
        use_expansion(family, means, prec_chol),
        lambda: family.mahalanobis_fm(xt, means, prec_chol, expanded=True),
        lambda: family.mahalanobis_fm(xt, means, prec_chol, expanded=False),
    )


def regularize_covariance(cov, reg_covar, covariance_type, frame=None):
    """The one place `reg_covar` is added: to the diagonal of a covariance estimate.

    ``frame``: None when ``cov`` is in data coordinates. For a full covariance given in
    the frame whitened by a prec_chol P (cov_w = P^T Sigma P), reg_covar * I in data
    coordinates is reg_covar * P^T P there."""
    reg = jnp.asarray(reg_covar, cov.dtype)
    if frame is None:
        return get_family(covariance_type).add_to_diagonal(cov, reg)
    return cov + reg * (jnp.swapaxes(frame, -1, -2) @ frame)
