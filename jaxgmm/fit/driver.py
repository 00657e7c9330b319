"""The one driver: runs any `Fitter` under jit + chunked `lax.scan`, vmapped over
restarts, and returns a uniform `FitResult` with a per-iteration `Trace`.

Iterations run in jitted chunks;
the host times each chunk and checks whether every restart is done, so wall time per
iteration is the chunk's time divided evenly among its iterations. Compile time is
measured apart (ahead-of-time compilation) and is 0 when the executable is cached.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxgmm._cache import BoundedCache
from jaxgmm.fit.fitter import step_data
from jaxgmm.fit.results import (
    FitResult,
    RestartSummary,
    Trace,
    component_diagnostics,
    find_degeneracies,
)
from jaxgmm.model.density import mean_log_likelihood


class _Carry(NamedTuple):
    state: object
    done: jax.Array  # bool
    n_iter: jax.Array  # int32
    nonfinite_at: jax.Array  # int32, -1 if never


def all_finite(tree):
    leaves = [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree_util.tree_leaves(tree)]
    return jnp.all(jnp.stack(leaves))


def _chunk_function(fitter, spec, chunk_size, sequential):
    def one_restart(key, carry, x, max_iter):
        def body(c, _):
            new_state, info = fitter.step(jax.random.fold_in(key, c.n_iter), c.state, x)
            new_params = fitter.get_params(new_state)
            finite = (
                all_finite(new_params)
                & jnp.isfinite(info.log_likelihood)
                & jnp.isfinite(info.bound)
            )
            active = ~c.done
            accept = active & finite
            state = jax.tree_util.tree_map(lambda a, b: jnp.where(accept, a, b), new_state, c.state)
            n_iter = c.n_iter + accept.astype(jnp.int32)
            nonfinite_at = jnp.where(active & ~finite, c.n_iter + 1, c.nonfinite_at)
            done = c.done | (active & (info.converged | ~finite)) | (n_iter >= max_iter)
            diagnostics = component_diagnostics(fitter.get_params(state), spec)
            return _Carry(state, done, n_iter, nonfinite_at), (info, diagnostics, accept)

        return lax.scan(body, carry, None, length=chunk_size)

    return jax.jit(_over_restarts(one_restart, sequential))


# Above this many (sample, component, feature + 1) elements, restarts run one after the
# other (`lax.map`) instead of vmapped: their per-restart work is already large, memory
# stays that of one restart, and a `lax.cond` inside the step (EM's choice of the
# expanded or direct Mahalanobis form) stays a branch; under vmap it would run both.
_SEQUENTIAL_RESTARTS_ELEMENTS = 2**22


def restarts_run_sequentially(n_samples, n_features, spec):
    return n_samples * spec.n_components * (n_features + 1) > _SEQUENTIAL_RESTARTS_ELEMENTS


def _over_restarts(one_restart, sequential):
    """``one_restart(key, carry, data, max_iter)`` over the leading restart axis of
    ``key`` and ``carry``: called directly for one restart, with `lax.map` when
    ``sequential``, otherwise with `jax.vmap`."""

    def batched(keys, carry, data, max_iter):
        if keys.shape[0] == 1:
            out = one_restart(keys[0], jax.tree_util.tree_map(lambda a: a[0], carry), data, max_iter)
            return jax.tree_util.tree_map(lambda a: a[None], out)
        if sequential:
            return lax.map(lambda kc: one_restart(kc[0], kc[1], data, max_iter), (keys, carry))
        return jax.vmap(one_restart, in_axes=(0, 0, None, None))(keys, carry, data, max_iter)

    return batched


# Compiled start/chunk/finish functions by (fitter, spec, chunk size, shapes), most
# recent last; bounded, because every executable holds memory mappings of its own.
_COMPILED = BoundedCache(64)


def _start_function(fitter):
    def start(init_params, x):
        n_restarts = init_params.means.shape[0]
        carry = _Carry(
            state=jax.vmap(fitter.init, in_axes=(0, None))(init_params, x),
            done=jnp.zeros((n_restarts,), bool),
            n_iter=jnp.zeros((n_restarts,), jnp.int32),
            nonfinite_at=jnp.full((n_restarts,), -1, jnp.int32),
        )
        # What the steps take (the fitter's `prepare`), made once here.
        return carry, step_data(fitter, x)

    return jax.jit(start)


def _finish_function(fitter, spec):
    def finish(x, data, state):
        # Final parameters of every restart, scored by the shared density (on the
        # fitter's prepared data when it can: EM's blocks, one compiled block body).
        params = jax.vmap(fitter.get_params)(state)
        if fitter.score_prepared is not None:
            score = partial(fitter.score_prepared, data)
        else:
            score = partial(mean_log_likelihood, x, spec=spec)
        return params, jax.vmap(lambda p: score(params=p))(params)

    return jax.jit(finish)


# Start and finish run once per fit. XLA:CPU compiles them 1.6-5x faster with its
# classic emitters than with its fusion emitters, at about the same run time (measured
# within 5% at (1e6, 16, 16)).
_ONCE_PER_FIT_OPTIONS = (("xla_cpu_use_fusion_emitters", False),)


def _compile(lowered, options):
    """``lowered.compile`` with XLA ``options`` ((name, value) pairs), or without them
    when this jaxlib does not know one of them (they only change speed)."""
    if not options:
        return lowered.compile()
    try:
        return lowered.compile(dict(options))
    except Exception as error:  # noqa: BLE001 - the type differs across jaxlib versions
        if "compile option" not in str(error):
            raise
        return lowered.compile()


def _on_several_devices(x):
    sharding = getattr(x, "sharding", None)
    return sharding is not None and len(sharding.device_set) > 1


def _compiled(fitter, spec, chunk_size, keys, init_params, x, max_iter):
    """Start (with the fitter's data preparation), chunk and finish functions compiled
    ahead of time (once per fitter, shapes and dtypes), with the seconds it took (0 when
    cached), so nothing compiles while the run is timed."""
    signature = jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), (keys, init_params, x))
    cache_key = (fitter, spec, chunk_size, str(signature), str(getattr(x, "sharding", None)))
    if cache_key in _COMPILED:
        return _COMPILED[cache_key], 0.0
    begin = time.perf_counter()
    start_fn = _start_function(fitter)
    start = _compile(start_fn.lower(init_params, x), _ONCE_PER_FIT_OPTIONS)
    # The chunk and finish take what start returns, placed as start places it (on a mesh
    # XLA may replicate the carry over devices; lowered without that, they expect one).
    carry, data = jax.tree_util.tree_map(
        lambda s, sharding: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
        jax.eval_shape(start_fn, init_params, x),
        start.output_shardings,
    )
    # On several devices, one restart at a time too: vmapped restarts would batch the
    # per-matrix linear algebra again (see `jaxgmm.model.covariance._one_matrix_per_call`).
    sequential = restarts_run_sequentially(x.shape[0], x.shape[1], spec) or _on_several_devices(x)
    chunk_lowered = _chunk_function(fitter, spec, chunk_size, sequential).lower(
        keys, carry, data, max_iter
    )
    finish_lowered = _finish_function(fitter, spec).lower(x, data, carry.state)
    # XLA compiles with the GIL released, so the finish compiles beside the chunk (on 2
    # cores, 0.05-0.1 s less for diag at (1e6, 16, 16) on 2 devices).
    with ThreadPoolExecutor(max_workers=1) as pool:
        finish_future = pool.submit(_compile, finish_lowered, _ONCE_PER_FIT_OPTIONS)
        chunk = _compile(chunk_lowered, fitter.compile_options)
        finish = finish_future.result()
    _COMPILED[cache_key] = (start, chunk, finish)
    return _COMPILED[cache_key], time.perf_counter() - begin


def default_chunk_size(n_samples, n_features, spec, max_iter):
    """Iterations per jitted chunk: large for small problems (dispatch overhead
    dominates), down to 1 when one iteration is already expensive."""
    work = n_samples * spec.n_components * (n_features + 1) ** 2
    return int(max(1, min(max_iter, 100, 2e7 // max(work, 1))))


def run_fitter(
    fitter,
    key,
    x,
    init_params,
    spec,
    *,
    max_iter: int,
    chunk_size: int | None = None,
    callback: Callable[[int, object], None] | None = None,
) -> FitResult:
    """Run ``fitter`` from one or several initial parameters.

    Args:
        fitter: a `Fitter`.
        key: PRNG key (split per restart and folded per iteration).
        x: array of shape (n_samples, n_features).
        init_params: `GMMParams`, or a batch of them with a leading restart axis
            (n_init, ...) to run restarts vectorised.
        spec: `GMMSpec`.
        max_iter: maximum iterations per restart (>= 0).
        chunk_size: iterations per jitted chunk (default: `default_chunk_size`).
        callback: called on the host after each chunk as ``callback(iterations_done,
            infos)`` with iterations_done the largest n_iter over restarts; for progress.

    Returns:
        `FitResult` of the restart with the highest final log-likelihood.
    """
    if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) or max_iter < 0:
        raise ValueError(f"max_iter must be an int >= 0, got {max_iter!r}")
    batched = init_params.means.ndim == 3
    if not batched:
        init_params = jax.tree_util.tree_map(lambda a: a[None], init_params)
    n_restarts = init_params.means.shape[0]
    n_samples, n_features = x.shape
    chunk_size = chunk_size or default_chunk_size(n_samples, n_features, spec, max(max_iter, 1))

    keys = jax.random.split(key, n_restarts)
    max_iter_arr = jnp.asarray(max_iter, jnp.int32)
    (start_fn, chunk_fn, finish_fn), compile_s = _compiled(
        fitter, spec, chunk_size, keys, init_params, x, max_iter_arr
    )

    outputs, chunk_times = [], []
    start = time.perf_counter()
    # Once per fit (with the data layout); counted in run_s and the first chunk's time.
    carry, data = jax.block_until_ready(start_fn(init_params, x))
    carry = carry._replace(done=carry.done | (max_iter == 0))
    prepare_s = time.perf_counter() - start
    while not bool(np.all(np.asarray(carry.done))):
        chunk_start = time.perf_counter()
        carry, out = chunk_fn(keys, carry, data, max_iter_arr)
        jax.block_until_ready(carry)
        chunk_times.append(time.perf_counter() - chunk_start)
        outputs.append(jax.device_get(out))
        if callback is not None:
            callback(int(np.max(np.asarray(carry.n_iter))), out[0])
    if chunk_times:
        chunk_times[0] += prepare_s
    final_params, final_ll = finish_fn(x, data, carry.state)
    final_ll = np.asarray(final_ll)
    run_s = time.perf_counter() - start

    n_iter = np.asarray(carry.n_iter)
    converged = _converged_at_last(outputs, n_iter)
    # A NaN final log-likelihood can only come from non-finite data; never pick it.
    best = int(np.argmax(np.where(np.isfinite(final_ll), final_ll, -np.inf)))
    trace = _trace_of(outputs, chunk_times, chunk_size, best)
    nonfinite_at = int(np.asarray(carry.nonfinite_at)[best])
    return FitResult(
        params=jax.tree_util.tree_map(lambda a: a[best], final_params),
        converged=bool(converged[best]),
        n_iter=int(n_iter[best]),
        log_likelihood=float(final_ll[best]),
        trace=trace,
        fitter=fitter.name,
        bound_name=fitter.bound_name,
        compile_s=compile_s,
        run_s=run_s,
        restarts=RestartSummary(log_likelihood=final_ll, converged=converged, n_iter=n_iter),
        best_restart=best,
        degeneracies=find_degeneracies(trace, spec, n_samples),
        nonfinite_iteration=None if nonfinite_at < 0 else nonfinite_at,
        state=jax.tree_util.tree_map(lambda a: a[best], carry.state),
    )


def _converged_at_last(outputs, n_iter):
    """Whether the last accepted step of each restart reported convergence."""
    if not outputs:
        return np.zeros_like(n_iter, dtype=bool)
    converged = np.concatenate([np.asarray(o[0].converged) for o in outputs], axis=1)
    accepted = np.concatenate([np.asarray(o[2]) for o in outputs], axis=1)
    result = np.zeros(converged.shape[0], dtype=bool)
    for r in range(converged.shape[0]):
        rows = np.flatnonzero(accepted[r])
        result[r] = bool(rows.size) and bool(converged[r, rows[-1]])
    return result


def _trace_of(outputs, chunk_times, chunk_size, restart):
    if not outputs:
        empty = np.zeros((0,))
        return Trace(empty.astype(int), empty, empty, empty, {})
    # vmapped scan outputs are (restart, chunk, ...): take one restart, join chunks.
    pick = lambda a: np.asarray(a)[restart]  # noqa: E731
    info = {
        name: np.concatenate([pick(getattr(o[0], name)) for o in outputs])
        for name in outputs[0][0]._fields
    }
    min_eig = np.concatenate([pick(o[1][0]) for o in outputs])
    weights = np.concatenate([pick(o[1][1]) for o in outputs])
    accepted = np.concatenate([pick(o[2]) for o in outputs]).astype(bool)
    per_iteration = np.repeat(np.asarray(chunk_times) / chunk_size, chunk_size)
    elapsed = np.cumsum(per_iteration)[accepted]
    extras = {
        name: values[accepted]
        for name, values in info.items()
        if name not in ("log_likelihood", "bound")
    }
    extras["min_covariance_eigenvalue"] = min_eig[accepted]
    extras["weights"] = weights[accepted]
    return Trace(
        iteration=np.arange(1, int(accepted.sum()) + 1),
        log_likelihood=info["log_likelihood"][accepted],
        bound=info["bound"][accepted],
        elapsed_s=elapsed,
        extras=extras,
    )




