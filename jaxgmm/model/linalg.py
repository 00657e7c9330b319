"""Linear-algebra wrappers that factorise or solve one matrix per call.

Every batched Cholesky, triangular solve and eigendecomposition in jaxgmm goes through
here (see `_one_matrix_per_call` for why).
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
from jax import lax


def _one_matrix_per_call(fn, *operands):
    """``fn(*operands)`` on operands batched over the leading dims of the first, one
    matrix per call (`lax.map`).

    Why: on CPU, jaxlib 0.10's LAPACK kernels (potrf, trsm, syevd) split a batch of
    matrices over XLA's intra-op thread pool and block until it is done. With several
    CPU devices (one per core, for data-parallel EM) every device factorises the
    replicated parameters at once; each occupies a pool thread, none is left to do the
    work, and the process hangs (measured: sharded EM at K = 16, D = 16 on 2 devices).
    A single matrix is never split. The loop costs microseconds per EM step."""
    batch = operands[0].shape[:-2]
    if not batch:
        return fn(*operands)
    n = math.prod(batch)
    flat = tuple(
        jnp.broadcast_to(op, batch + op.shape[-2:]).reshape((n,) + op.shape[-2:]) for op in operands
    )
    out = lax.map(lambda ops: fn(*ops), flat)
    return jax.tree_util.tree_map(lambda a: a.reshape(batch + a.shape[1:]), out)


def cholesky(a):
    """Lower Cholesky factor of (batched) ``a`` (see `_one_matrix_per_call`)."""
    return _one_matrix_per_call(jnp.linalg.cholesky, a)


def triangular_solve(a, b, **options):
    """`lax.linalg.triangular_solve` for (batched) ``a`` and ``b`` (..., D, M)
    (see `_one_matrix_per_call`)."""
    return _one_matrix_per_call(partial(lax.linalg.triangular_solve, **options), a, b)


def eigvalsh(a):
    """Ascending eigenvalues of (batched) symmetric ``a`` (see `_one_matrix_per_call`)."""
    return _one_matrix_per_call(jnp.linalg.eigvalsh, a)


def eigh(a):
    """(eigenvalues, eigenvectors) of (batched) symmetric ``a`` (see `_one_matrix_per_call`)."""
    return _one_matrix_per_call(jnp.linalg.eigh, a)


def solve_upper_transposed(upper, b):
    """upper^{-T} b for (batched) upper-triangular ``upper`` (..., D, D): b is (..., D, M),
    or (..., D) for vectors."""
    if b.ndim == upper.ndim - 1:
        return solve_upper_transposed(upper, b[..., None])[..., 0]
    return triangular_solve(upper, b, left_side=True, lower=False, transpose_a=True)


def upper_inverse_transpose(chol_lower):
    """inv(L).T for lower-triangular L (batched): the precision Cholesky of L @ L.T."""
    eye = jnp.broadcast_to(jnp.eye(chol_lower.shape[-1], dtype=chol_lower.dtype), chol_lower.shape)
    inv_lower = triangular_solve(chol_lower, eye, left_side=True, lower=True)
    return jnp.swapaxes(inv_lower, -1, -2)
