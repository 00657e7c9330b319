"""Covariance families: the one home of everything that depends on the covariance type.
Each family owns its shapes, log-density pieces, statistics (in-memory, blocked and
online scatters), M-step estimate, unconstrained encoding, sampling noise, relabelling,
precision check, parameter count and conversions (the interface is `CovarianceFamily`);
`COVARIANCE_FAMILIES` maps each ``covariance_type`` to its class, so a new family is one
class plus one registry entry. `reg_covar` is added in `regularize_covariance` only.

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

import contextlib
import contextvars

import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxgmm._registry import lookup
from jaxgmm.model.linalg import (
    cholesky,
    eigh,
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


def _excess_floor(cov, reg_covar, axis):
    """sqrt(eps) * max(reg_covar, largest variance), per matrix / per component: the
    smallest excess over reg_covar the unconstrained encoders keep."""
    eps = jnp.finfo(cov.dtype).eps
    scale = jnp.max(cov, axis=axis) if axis is not None else cov
    return jnp.sqrt(eps) * jnp.maximum(scale, jnp.asarray(reg_covar, cov.dtype))


def _diag_embed(values):
    return values[..., :, None] * jnp.eye(values.shape[-1], dtype=values.dtype)


def _with_ones_row(xt):
    """(D, n) -> (D + 1, n) with a last row of ones, so a matrix product can add a
    per-output offset (saves a separate broadcast subtract over (K, D, n))."""
    return jnp.concatenate([xt, jnp.ones((1, xt.shape[1]), xt.dtype)], axis=0)


class CovarianceFamily:
    """What every covariance family provides, and the defaults a family may keep.

    A family is a class of static (or class) methods, never instantiated, registered in
    `COVARIANCE_FAMILIES` under its ``name``; `jaxgmm.GMMSpec` accepts exactly those keys.
    Nothing outside this module branches on the covariance type: a new family is one
    subclass plus one registry entry. Shapes: K components, D features, n samples; the
    "scatter" is the family's sum_n r_nk (x_n - c_k)(x_n - c_k)^T (its shape is
    `scatter_shape`, which need not be the covariance's: spherical keeps (K, D)).

    A family must provide:

    * shapes and counts: ``prec_chol_shape(K, D)``, ``scatter_shape(K, D)``,
      ``n_parameters(K, D)`` (free covariance parameters), ``dense(covariances, K, D)``
      -> (K, D, D);
    * conversions: ``covariance_from_prec_chol``, ``precision_from_prec_chol``,
      ``prec_chol_from_covariance``, ``prec_chol_from_precision``,
      ``add_to_diagonal(cov, value)`` (only `regularize_covariance` calls it),
      ``min_eigenvalue(prec_chol, K)`` -> (K,);
    * the density: ``log_det_prec_chol(prec_chol, D)`` -> (K,) (or broadcastable to it),
      ``mahalanobis_fm(xt, means, prec_chol, expanded=False)`` -> (K, n) from ``xt``
      (D, n), ``paired_mahalanobis(points, means, prec_chol)`` -> (K,);
    * statistics: ``scatter(x, resp, centers)`` (in memory),
      ``second_moments_fm(resp, xt, means, expanded=False)`` -> (first (K, D), scatter
      about ``means``) for one feature-major block (blocked EM), ``recentre_scatter``,
      ``point_mass_scatter(counts, deltas)`` (online EM), ``covariance_from_scatter``,
      ``trace_term(scatter, prec_chol)`` (the bound);
    * the gradient fitter's parameterisation: ``encode_unconstrained(prec_chol,
      reg_covar)`` and ``decode_unconstrained(cov_factor, reg_covar)`` (see
      `jaxgmm.gradient.unconstrained`);
    * ``sample_noise(z, prec_chol, labels)`` (sampling) and
      ``check_precisions(precisions, name)`` (user-supplied precisions).

    Optionally, with ``uses_data_scatter``: ``first_moments_fm(resp, xt, means)`` (K, D)
    and ``scatter_from_data_scatter(data_scatter, first, nk, means)``, the scatter
    about ``means`` from the samples' own (`jaxgmm.model.blocked`).

    Defaults below: no expanded Mahalanobis form, no whitened frame, per-component
    parameters (relabelling permutes them) and scatters that need no symmetrising.
    """

    name: str = ""
    # Whether `mahalanobis_fm` / `second_moments_fm` have an ``expanded=True`` form
    # (then ``expansion_risk`` says when it is accurate, see `use_expansion`).
    has_expansion = False
    # Whether blocked EM may take the moments in each component's whitened frame
    # (``whitened_moments_fm``, ``from_frame``, ``relative_prec_chol``,
    # ``prec_chol_from_whitened_covariance``; see `jaxgmm.model.blocked`).
    has_whitened_frame = False
    # A cap on the work-array elements of `jaxgmm.model.default_block_size`'s small
    # blocks, or None (measured for full covariances, see there).
    small_block_elements = None
    # XLA compile options for EM's step executable ((name, value) pairs; speed only).
    em_step_compile_options = ()
    # Whether blocked EM may build the scatter from the samples' own scatter, taken once
    # per fit (``first_moments_fm``, ``scatter_from_data_scatter``; tied).
    uses_data_scatter = False

    @staticmethod
    def expansion_risk(means, prec_chol):
        return None

    @staticmethod
    def symmetrize_scatter(scatter):
        """The scatter with rounding asymmetries removed (identity unless matrices)."""
        return scatter

    @staticmethod
    def permute_components(prec_chol, perms):
        """NumPy ``prec_chol`` of draws with lead axes (...) relabelled by ``perms``
        (..., K): component j of the result is component perms[..., j] of the input."""
        prec_chol = np.asarray(prec_chol)
        index = perms.reshape(perms.shape + (1,) * (prec_chol.ndim - perms.ndim))
        return np.take_along_axis(prec_chol, index, axis=perms.ndim - 1)


class Full(CovarianceFamily):
    name = "full"
    # The EM step is matrix products: XLA:CPU compiles it 1.7x faster with its classic
    # emitters than with its fusion emitters, at the same measured time per iteration.
    # (Diagonal families are elementwise work that the fusion emitters make 20-40%
    # faster, so they keep the default.)
    em_step_compile_options = (("xla_cpu_use_fusion_emitters", False),)

    @staticmethod
    def dense(covariances, n_components, n_features):
        """Covariances in the family's shape -> (K, D, D) (NumPy or JAX, as given)."""
        return covariances

    @staticmethod
    def prec_chol_shape(n_components, n_features):
        return (n_components, n_features, n_features)

    @staticmethod
    def scatter_shape(n_components, n_features):
        return (n_components, n_features, n_features)

    @staticmethod
    def log_det_prec_chol(prec_chol, n_features):
        """(K,): log|prec_chol_k| = -1/2 log|Sigma_k|."""
        return jnp.sum(jnp.log(jnp.diagonal(prec_chol, axis1=-2, axis2=-1)), axis=-1)

    has_whitened_frame = True
    # At (1e5, 8, 8), 512 samples per block ran 17-20% faster than 1024 (see
    # `jaxgmm.model.default_block_size`).
    small_block_elements = 2**16

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
    def second_moments_fm(resp, xt, means, expanded=False):
        """(first (K, D), scatter (K, D, D)) of one block about ``means``: sum_n r_kn
        (x_n - mu_k) and sum_n r_kn (x_n - mu_k)(x_n - mu_k)^T, from ``resp`` (K, n) and
        ``xt`` (D, n). The products run on data shifted by c = `data_center`; the shift
        is undone exactly: scatter = Z^T (x - c) - first (mu - c)^T, Z_nk = r_nk (x_n - mu_k)."""
        center = data_center(means)
        xs, ms = xt - center[:, None], means - center
        first = resp @ xs.T - jnp.sum(resp, axis=1)[:, None] * ms
        # Z (K, D, n) = r_kn (x_n - mu_k), contiguous along samples, so the scatter is one
        # (K*D, n) @ (n, D) product.
        z = resp[:, None, :] * (xs[None] - ms[:, :, None])
        cross = (z.reshape(-1, xt.shape[1]) @ xs.T).reshape(means.shape + means.shape[-1:])
        return first, cross - first[:, :, None] * ms[:, None, :]

    @staticmethod
    def whitened_moments_fm(resp, xt, means, prec_chol):
        """(first, second) in each component's whitened frame: sum_n r_kn y_kn (K, D) and
        sum_n r_kn y_kn y_kn^T (K, D, D) with y_k = prec_chol_k^T (x - mu_k), the same y
        the density uses. Near convergence the second is close to nk I whatever the
        covariance's condition number, so float32 keeps the narrow directions that an
        elementwise data-coordinate scatter loses (see `SufficientStats.frame`).

        With y_k = A_k xs1 (`whitening_operands`), sum_n r y xs1^T is one
        (K*D, n) @ (n, D+1) product (a batched (K, D, n) x (K, n, D) one is 2x slower on
        XLA:CPU); its last column is the first moment, and times A_k^T it is the second."""
        operator, xs1 = Full.whitening_operands(xt, means, prec_chol)
        return Full.whitened_moments_of(resp, operator, xs1, Full.apply_whitening(operator, xs1))

    @staticmethod
    def whitened_moments_of(resp, operator, xs1, y):
        """`whitened_moments_fm` from its operands and y already formed (blocked EM's
        E-step forms y for the density: one (K*D, D+1) @ (D+1, n) product instead of two)."""
        n_components, n_features = operator.shape[:2]
        weighted = (resp[:, None, :] * y).reshape(n_components * n_features, -1)
        cross = (weighted @ xs1.T).reshape(n_components, n_features, n_features + 1)
        return cross[:, :, -1], jnp.einsum("kdf,kef->kde", cross, operator)

    @staticmethod
    def symmetrize_scatter(scatter):
        return 0.5 * (scatter + jnp.swapaxes(scatter, -1, -2))

    @staticmethod
    def _shift_correction(first, nk, delta):
        """(K, D, D): S1 d^T + d S1^T - nk d d^T, so that
        sum r (x - m)(x - m)^T = S2 - correction with d = m - mu."""
        cross = first[:, :, None] * delta[:, None, :]
        outer = nk[:, None, None] * delta[:, :, None] * delta[:, None, :]
        return cross + jnp.swapaxes(cross, -1, -2) - outer

    @staticmethod
    def recentre_scatter(second, first, nk, delta):
        """The scatter about new centres m = mu + delta from the scatter ``second`` and
        first moment ``first`` (K, D) about mu, and the counts ``nk`` (K,)."""
        return Full.symmetrize_scatter(second) - Full._shift_correction(first, nk, delta)

    @staticmethod
    def point_mass_scatter(counts, deltas):
        """sum_k c_k d_k d_k^T in the scatter shape, from ``counts`` (K,) and
        ``deltas`` (K, D): the scatter of point masses c_k at distance d_k."""
        return counts[:, None, None] * deltas[:, :, None] * deltas[:, None, :]

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

    @classmethod
    def decode_unconstrained(cls, cov_factor, reg_covar):
        """prec_chol of Sigma = L L^T + reg_covar I, with L the lower triangle of
        ``cov_factor`` and exp of its diagonal (the upper triangle is ignored)."""
        log_diag = jnp.diagonal(cov_factor, axis1=-2, axis2=-1)
        lower = jnp.tril(cov_factor, k=-1) + _diag_embed(jnp.exp(log_diag))
        cov = regularize_covariance(lower @ jnp.swapaxes(lower, -1, -2), reg_covar, cls.name)
        return cls.prec_chol_from_covariance(cov)

    @classmethod
    def encode_unconstrained(cls, prec_chol, reg_covar):
        """The ``cov_factor`` that `decode_unconstrained` maps back to ``prec_chol``
        (a degenerate excess over reg_covar I is floored, see `_excess_floor`)."""
        cov = cls.covariance_from_prec_chol(prec_chol)
        cov = 0.5 * (cov + jnp.swapaxes(cov, -1, -2))
        excess = regularize_covariance(cov, -reg_covar, cls.name)
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

    @staticmethod
    def sample_noise(z, prec_chol, labels):
        """(n, D) noise with covariance Sigma_{labels_n} from standard normal ``z`` (n, D)."""
        # precision = P P^T, so P^{-T} z has covariance P^{-T} P^{-1} = Sigma.
        return solve_upper_transposed(prec_chol[labels], z)

    @classmethod
    def check_precisions(cls, precisions, name):
        """Raise ValueError unless every (NumPy) precision matrix is symmetric positive
        definite (``precisions`` already has the shape `prec_chol_shape`)."""
        for k, mat in enumerate(precisions):
            cls._check_precision_matrix(mat, f"{name} (component {k})")

    @staticmethod
    def _check_precision_matrix(mat, where):
        if not np.allclose(mat, mat.T):
            raise ValueError(f"{where} must be symmetric")
        if np.any(np.linalg.eigvalsh(mat) <= 0):
            raise ValueError(f"{where} must be positive-definite")


class Tied(Full):
    name = "tied"
    em_step_compile_options = ()  # measured for full only; tied keeps the default

    @staticmethod
    def dense(covariances, n_components, n_features):
        return covariances[None] * np.ones((n_components, 1, 1), covariances.dtype)

    @staticmethod
    def prec_chol_shape(n_components, n_features):
        return (n_features, n_features)

    @staticmethod
    def scatter_shape(n_components, n_features):
        return (n_features, n_features)

    has_expansion = True
    has_whitened_frame = False
    small_block_elements = None
    uses_data_scatter = True

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
    def first_moments_fm(resp, xt, means):
        """(K, D) sum_n r_kn (x_n - mu_k) of one feature-major block (about the data's
        centre, so float32 keeps its digits)."""
        center = data_center(means)
        return resp @ (xt - center[:, None]).T - jnp.sum(resp, axis=1)[:, None] * (means - center)

    @staticmethod
    def second_moments_fm(resp, xt, means, expanded=False):
        center = data_center(means)
        xs, ms = xt - center[:, None], means - center
        first = Tied.first_moments_fm(resp, xt, means)
        z = xs * jnp.sum(resp, axis=0) - ms.T @ resp  # (D, n): sum_k r_kn (x_n - mu_k)
        return first, z @ xs.T - first.T @ ms

    @staticmethod
    def scatter_from_data_scatter(data_scatter, first, nk, means):
        """sum_k sum_n r_nk (x_n - mu_k)(x_n - mu_k)^T from the samples' own scatter
        (``data_scatter``, a `jaxgmm.model.blocked.DataScatter`, fixed for a fit) and
        this iteration's ``first`` (K, D) and ``nk``: with x~ = x - c, mu~ = mu - c and
        sum_k r_nk = w_n,

            sum_n w_n x~_n x~_n^T - sum_k (first_k mu~_k^T + mu~_k first_k^T + nk mu~_k mu~_k^T),

        an O(K D^2) combination, so the per-sample products are the first moments only.
        The subtraction loses ~eps * (risk + D) of the scatter, the expanded
        Mahalanobis form's error, so it is used where `use_expansion` allows."""
        center = data_center(means)
        ms = means - center
        cross = first.T @ ms
        return data_scatter.about(center) - cross - cross.T - (ms.T * nk) @ ms

    @staticmethod
    def recentre_scatter(second, first, nk, delta):
        correction = jnp.sum(Full._shift_correction(first, nk, delta), axis=0)
        return Full.symmetrize_scatter(second) - correction

    @staticmethod
    def point_mass_scatter(counts, deltas):
        return jnp.einsum("k,kd,ke->de", counts, deltas, deltas)

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

    @staticmethod
    def sample_noise(z, prec_chol, labels):
        shared = jnp.broadcast_to(prec_chol, labels.shape + prec_chol.shape)
        return solve_upper_transposed(shared, z)

    @staticmethod
    def permute_components(prec_chol, perms):
        return prec_chol  # shared by all components

    @classmethod
    def check_precisions(cls, precisions, name):
        cls._check_precision_matrix(precisions, name)


class Diag(CovarianceFamily):
    name = "diag"

    @staticmethod
    def dense(covariances, n_components, n_features):
        """Covariances in the family's shape -> (K, D, D) (NumPy or JAX, as given)."""
        return covariances[:, :, None] * np.eye(n_features, dtype=covariances.dtype)

    @staticmethod
    def prec_chol_shape(n_components, n_features):
        return (n_components, n_features)

    @staticmethod
    def scatter_shape(n_components, n_features):
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
    def second_moments_fm(resp, xt, means, expanded=False):
        """(first, scatter), both (K, D): sum_n r_kn (x_n - mu_k) and sum_n r_kn
        (x_n - mu_k)^2 per feature, from ``resp`` (K, n) and ``xt`` (D, n)."""
        if expanded:
            # Raw moments about c by matrix products, re-centred on mu:
            # sum r (x - mu)^2 = S2 - 2 m S1 + nk m^2 (m = mu - c); see `use_expansion`.
            center = data_center(means)
            xs, ms = xt - center[:, None], means - center
            nk = jnp.sum(resp, axis=1)[:, None]
            s1 = resp @ xs.T
            s2 = resp @ jnp.square(xs).T
            return s1 - nk * ms, s2 - 2.0 * ms * s1 + nk * jnp.square(ms)
        # Direct differences: exact for tiny variances.
        diff = xt[None] - means[:, :, None]  # (K, D, n)
        weighted = resp[:, None, :] * diff
        return jnp.sum(weighted, axis=2), jnp.sum(weighted * diff, axis=2)

    @staticmethod
    def recentre_scatter(second, first, nk, delta):
        scatter = second - 2.0 * first * delta + nk[:, None] * jnp.square(delta)
        return jnp.maximum(scatter, 0.0)  # rounding only; it is a sum of squares

    @staticmethod
    def point_mass_scatter(counts, deltas):
        return counts[:, None] * jnp.square(deltas)

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

    @classmethod
    def decode_unconstrained(cls, cov_factor, reg_covar):
        """prec_chol of variances exp(2 cov_factor) + reg_covar (log standard deviations
        of the excess variance)."""
        cov = regularize_covariance(jnp.exp(2.0 * cov_factor), reg_covar, cls.name)
        return cls.prec_chol_from_covariance(cov)

    @classmethod
    def encode_unconstrained(cls, prec_chol, reg_covar):
        cov = cls.covariance_from_prec_chol(prec_chol)
        excess = regularize_covariance(cov, -reg_covar, cls.name)
        excess = jnp.maximum(excess, _excess_floor(cov, reg_covar, axis=None))
        return 0.5 * jnp.log(excess)

    @staticmethod
    def sample_noise(z, prec_chol, labels):
        return z * (Diag.covariance_from_prec_chol(prec_chol) ** 0.5)[labels]

    @classmethod
    def check_precisions(cls, precisions, name):
        if np.any(precisions <= 0):
            raise ValueError(f"{name} must be positive for covariance_type={cls.name!r}")


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

    @staticmethod
    def sample_noise(z, prec_chol, labels):
        return z * (Diag.covariance_from_prec_chol(prec_chol) ** 0.5)[labels][:, None]


COVARIANCE_FAMILIES = {cls.name: cls for cls in (Full, Tied, Diag, Spherical)}


def get_family(covariance_type):
    return lookup(COVARIANCE_FAMILIES, covariance_type, "covariance_type")


def use_expansion(family, means, prec_chol):
    """Whether ``family``'s expanded Mahalanobis form is accurate for these parameters
    (a traced bool; always False for families without one)."""
    if not family.has_expansion:
        return jnp.asarray(False)
    eps = jnp.finfo(means.dtype).eps
    risk = jnp.max(family.expansion_risk(means, prec_chol)) + means.shape[-1]
    # NaN compares False, so a NaN risk takes the direct path.
    return risk * eps <= EXPANSION_ERROR_LIMIT


# True while code is traced under `expansion_assumed`.
_EXPANSION_ASSUMED = contextvars.ContextVar("expansion_assumed", default=False)


@contextlib.contextmanager
def expansion_assumed():
    """Code traced in this context takes the expanded form at every `expansion_cond`,
    with no `lax.cond` and no direct branch to compile (a shorter compile, measured in
    docs/performance.md). Only for a caller that checks `use_expansion` on the same
    parameters itself and falls back where it is False: the driver does, before every
    step of a fitter with ``DriverHooks.expansion_holds``."""
    token = _EXPANSION_ASSUMED.set(True)
    try:
        yield
    finally:
        _EXPANSION_ASSUMED.reset(token)


def expansion_cond(family, means, prec_chol, expanded, direct):
    """``expanded()`` where `use_expansion` allows, else ``direct()``: one `lax.cond`
    (``expanded()`` alone under `expansion_assumed`; ``direct()`` alone for families
    without an expanded form)."""
    if not family.has_expansion:
        return direct()
    if _EXPANSION_ASSUMED.get():
        return expanded()
    return lax.cond(use_expansion(family, means, prec_chol), expanded, direct)


def mahalanobis_fm(family, xt, means, prec_chol):
    """(K, n) Mahalanobis terms from ``xt`` (D, n): the expanded form when
    `use_expansion` allows, else the direct one (`expansion_cond`, evaluated once)."""
    return expansion_cond(
        family,
        means,
        prec_chol,
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
