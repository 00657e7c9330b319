"""Exact EM for data that do not fit in device memory: the samples stay on the host
(a NumPy array or a memmapped ``.npy`` file) and are fed to the device block by block;
per-block `Moments` are summed on the device, so each iteration is the same EM step as
in memory (to rounding), with device memory O(block * K * D + K * D^2)."""

from __future__ import annotations

import functools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxgmm.em.fitter import EMInfo
from jaxgmm.em.steps import em_bound_from_stats, params_from_stats
from jaxgmm.fit.results import component_diagnostics, single_run_result, step_is_finite
from jaxgmm.fit.validation import (
    check_fits_dtype,
    check_init_params,
    check_int,
    check_positive,
    compute_dtype,
    no_finite_state_error,
)
from jaxgmm.model.blocked import add_moments, block_moments, spec_block_size, stats_from_moments
from jaxgmm.model.init import resolve_init
from jaxgmm.model.params import GMMParams
from jaxgmm.scale.host_loop import params_are_finite, run_host_loop


def open_data(x, dtype=None):
    """``x`` as a host array without reading it: a path to a ``.npy`` file is opened
    with ``np.load(mmap_mode='r')``; arrays (and memmaps) are returned as they are."""
    if isinstance(x, (str, os.PathLike)):
        if not os.path.exists(x):
            raise ValueError(f"x: no such file {os.fspath(x)!r} (expected a .npy file)")
        x = np.load(x, mmap_mode="r")
    if not hasattr(x, "shape") or len(x.shape) != 2:
        raise ValueError(
            f"x must be a 2D array or a path to a 2D .npy file of shape (n_samples, n_features), "
            f"got {getattr(x, 'shape', type(x).__name__)}"
        )
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"x must hold floats (float32 or float64), got dtype {x.dtype}")
    if dtype is not None and not np.issubdtype(np.dtype(dtype), np.floating):
        raise ValueError(f"dtype must be a floating dtype, got {dtype!r}")
    return x


@functools.partial(jax.jit, static_argnums=(4,), donate_argnums=(0,))
def _add_block(total, x_block, weight, params, spec):
    return add_moments(total, block_moments(x_block, params, spec, sample_weight=weight))


@functools.partial(jax.jit, static_argnums=(3,))
def _first_block(x_block, weight, params, spec):
    return block_moments(x_block, params, spec, sample_weight=weight)


def host_blocks(x, block_size, dtype):
    """Yield ``(block, weight)`` pairs of fixed shape (block_size, D) read from ``x``;
    the last block is zero-padded with weight 0 so one compiled function serves all."""
    n_samples = x.shape[0]
    for start in range(0, n_samples, block_size):
        block = np.asarray(x[start : start + block_size])
        n = block.shape[0]
        if not np.all(np.isfinite(block)):
            bad = start + int(np.argwhere(~np.isfinite(block))[0, 0])
            raise ValueError(f"x contains NaN or infinity (first at row {bad})")
        block = check_fits_dtype(block, dtype, "x", rows=np.arange(start, start + n))
        weight = np.ones((block_size,), dtype)
        if n < block_size:
            block = np.concatenate([block, np.zeros((block_size - n, block.shape[1]), dtype)])
            weight[n:] = 0
        yield block, weight


def moments_from_host(x, params, spec, block_size: int | None = None, dtype=None):
    """`Moments` of host data ``x`` (array or memmap, (n_samples, n_features)) under
    ``params``, streamed to the device in blocks. The next block is read from disk while
    the device works on the current one (JAX dispatch is asynchronous)."""
    dtype = np.dtype(dtype or x.dtype)
    block_size = spec_block_size(*x.shape, spec, block_size)
    block_size = int(min(block_size, x.shape[0]))
    total = None
    for block, weight in host_blocks(x, block_size, dtype):
        if total is None:
            total = _first_block(block, weight, params, spec)
        else:
            total = _add_block(total, block, weight, params, spec)
    return total


def fit_em_out_of_core(
    key,
    x: np.ndarray | str | os.PathLike,
    spec,
    *,
    init: str | GMMParams = "kmeans",
    init_subsample: int = 100_000,
    max_iter: int = 100,
    tol: float = 1e-3,
    block_size: int | None = None,
    dtype=None,
):
    """Exact EM on data held on the host or on disk.

    Args:
        key: PRNG key (for the initialiser's subsample and the initialiser).
        x: array of shape (n_samples, n_features), a ``np.memmap``, or a path to a
            ``.npy`` file (opened memory-mapped; never loaded whole).
        spec: `GMMSpec`.
        init: an initialiser name (run on ``init_subsample`` random rows) or `GMMParams`.
        init_subsample: rows read for a named initialiser.
        max_iter, tol: as in `fit_em`.
        block_size: rows per block sent to the device (default from N, K, D).
        dtype: float dtype for the computation (default: the data's).

    Returns:
        `FitResult` (one restart) with the per-iteration trace.
    """
    x = open_data(x, dtype)
    dtype = compute_dtype(x.dtype, dtype)
    tol = check_positive(tol, "tol", allow_zero=True)
    max_iter = check_int(max_iter, "max_iter", 0)
    if block_size is not None:
        block_size = check_int(block_size, "block_size", 1)
    if x.shape[0] < spec.n_components:
        raise ValueError(
            f"x has n_samples={x.shape[0]}, fewer than n_components={spec.n_components}"
        )
    key_rows, key_init = jax.random.split(key)
    if isinstance(init, str):
        n_sub = check_int(init_subsample, "init_subsample", spec.n_components)
        rows = np.sort(np.asarray(jax.random.choice(
            key_rows, x.shape[0], (min(n_sub, x.shape[0]),), replace=False
        )))
        subset = np.asarray(x[rows])
        if not np.all(np.isfinite(subset)):
            bad = int(rows[np.argwhere(~np.isfinite(subset))[0, 0]])
            raise ValueError(f"x contains NaN or infinity (first at row {bad})")
        subset = jnp.asarray(check_fits_dtype(subset, dtype, "x", rows=rows))
        params = jax.tree_util.tree_map(lambda a: a[0], resolve_init(key_init, subset, spec, init))
        if not params_are_finite(params):
            raise no_finite_state_error(
                f"fit_em_out_of_core: the initial parameters from init={init!r}", dtype
            )
    else:
        check_init_params(init, spec, x.shape[1], name="init", dtype=dtype)
        params = resolve_init(key_init, x, spec, init, dtype=dtype)
    return run_em_out_of_core(
        x, params, spec, max_iter=max_iter, tol=tol, block_size=block_size, dtype=dtype
    )


def _em_update(moments, params, spec):
    log_likelihood, stats = stats_from_moments(moments, params, spec)
    new_params = params_from_stats(stats, spec)
    info = EMInfo(log_likelihood=log_likelihood, bound=em_bound_from_stats(stats, new_params, spec))
    diagnostics = component_diagnostics(new_params, spec)
    return new_params, info, diagnostics, step_is_finite(new_params, info)


_em_update_jit = jax.jit(_em_update, static_argnums=2)


def run_em_out_of_core(x, params, spec, *, max_iter, tol, block_size=None, dtype=None):
    """EM over host data ``x`` (array or memmap) streamed in blocks; see
    `jaxgmm.fit_em_out_of_core`. Returns a `FitResult` (one restart).
    ``compile_s`` is the wall time of the first iteration minus the median of the others
    (the block function compiles lazily on its first call)."""

    def step(params, _):
        moments = moments_from_host(x, params, spec, block_size, dtype)
        return _em_update_jit(moments, params, spec)

    start = time.perf_counter()
    if not params_are_finite(params):
        raise no_finite_state_error("fit_em_out_of_core: the initial parameters", dtype)
    loop = run_host_loop(
        step, params, range(max_iter), spec.n_components, tol=tol, tol_on="log_likelihood"
    )
    moments = moments_from_host(x, loop.state, spec, block_size, dtype)
    final_ll = float(moments.log_likelihood / moments.n_samples)
    if not np.isfinite(final_ll):
        what = (
            "fit_em_out_of_core: the log-likelihood of the initial parameters and of every "
            "EM step"
            if loop.trace.iteration.size == 0
            else "fit_em_out_of_core: the final log-likelihood"
        )
        raise no_finite_state_error(what, dtype)
    run_s = time.perf_counter() - start
    steps = np.diff(np.concatenate([[0.0], loop.trace.elapsed_s]))
    compile_s = float(max(steps[0] - np.median(steps[1:]), 0.0)) if steps.size > 1 else 0.0
    return single_run_result(
        loop.state, loop.trace, spec, fitter="em_out_of_core", bound_name="em_bound",
        converged=loop.converged, log_likelihood=final_ll, n_samples=x.shape[0],
        compile_s=compile_s, run_s=run_s, nonfinite_iteration=loop.nonfinite_iteration,
    )
